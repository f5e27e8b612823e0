"""One row -> token ids and loss labels, for each `DataSourceSpec.format`.

Labels follow the Hugging Face convention: ``labels[t]`` is the target the model predicts from
the tokens before ``t`` (the model shifts internally); -100 means "no loss here".

- text: ``bos + text + eos``; every token is a target.
- instruction: ``bos + [system + SYSTEM_SEPARATOR] + prompt + response + eos``; loss on
  ``response + eos`` only. Prompt and response are tokenised separately and the ids joined,
  so the mask boundary is exact (no token straddles prompt and response).
- alpaca: instruction with the prompt ``instruction [+ ALPACA_INPUT_SEPARATOR + input]`` and
  the response ``output`` (see `alpaca_pair`); encoded, masked and truncated like instruction.
- chat: messages rendered by the tokenizer's chat template (`DEFAULT_CHAT_TEMPLATE` when it
  has none); loss on assistant turns only. See `_assistant_char_spans` for how turns are found.
  Each message's role and text are read from ``columns.role``/``columns.content`` (default
  ``role``/``content``); ``columns.role_map`` renames roles.
- sharegpt: ``{conversations: [{from, value}, ...]}``; roles mapped by `SHAREGPT_ROLES` and
  ``columns.role_map`` to system/user/assistant, then encoded exactly like chat.
- classification: ``bos + text`` and an integer ``label`` (no LM labels).
- preference: ``{prompt, chosen, rejected}``; two examples per row, one per completion, in
  one `Example` (the rejected side in ``rejected_input_ids``/``rejected_labels``). A string
  prompt takes string completions and each side is encoded exactly like the instruction row
  ``{prompt, response: completion}`` (system column included). A list-of-messages prompt takes
  completions that are lists of messages or strings (a string is one assistant message), and
  each side is encoded like the chat row ``prompt + completion``, loss on the completion's
  assistant turns only (never on assistant turns inside the prompt). Each side is truncated
  on its own.
- multiple_choice (forgetting tasks only, not encoded here): ``{prompt, choices, answer}``
  rows are checked by `multiple_choice_row`; the evaluator tokenises them itself.

User text is tokenised with ``split_special_tokens=True`` in the text, instruction and
classification formats, so a literal ``</s>`` in the data stays text and cannot end an example
early. In chat, special tokens come from the template itself, so they are parsed as specials.

A row that cannot be used comes back as a `RowProblem` (the caller stops or skips);
a problem with the tokenizer or template, which would hit every row, raises `DataError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

from orchestrator.data.errors import DataError

if TYPE_CHECKING:
    from orchestrator.spec.models import ColumnsSpec

IGNORE_INDEX = -100
SYSTEM_SEPARATOR = "\n\n"
"""Joins the system column and the prompt in the instruction and alpaca formats."""
ALPACA_INPUT_SEPARATOR = "\n\n"
"""Joins an alpaca row's instruction and its (non-blank) input into the prompt."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
"""ShareGPT role names ("from") the sharegpt format knows; columns.role_map adds or overrides."""

DEFAULT_CHAT_TEMPLATE = (
    # Used when a tokenizer has no chat template of its own. One role marker per turn, each
    # turn on its own lines; assistant turns end with eos so the model learns where to stop.
    # bos/eos are guarded because Jinja would print a missing token as the word "None".
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class RowProblem(Exception):
    """A row cannot be used; the message says what is wrong with it (without the row number)."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int] | None = None
    """Per-token targets (text, instruction, chat); None for classification."""
    label: int | None = None
    """Class index (classification only)."""
    truncated: bool = False
    """True when the example (either side of a preference pair) was cut to max_seq_len."""
    rejected_input_ids: list[int] | None = None
    """The rejected side of a preference pair (input_ids/labels hold the chosen side)."""
    rejected_labels: list[int] | None = None
    """Per-token targets of the rejected side (preference only)."""


Outcome = Example | RowProblem
T = TypeVar("T")


def encode_rows(
    rows: Sequence[dict[str, Any]],
    fmt: str,
    columns: ColumnsSpec,
    tokenizer: Any,
    max_seq_len: int,
) -> list[Outcome]:
    """Encode `rows` in `fmt`; the result has one `Example` or `RowProblem` per row, in order."""
    encoders: dict[str, Callable[..., list[Outcome]]] = {
        "text": _encode_text,
        "instruction": _encode_instruction,
        "alpaca": _encode_alpaca,
        "chat": _encode_chat,
        "sharegpt": _encode_sharegpt,
        "classification": _encode_classification,
        "preference": _encode_preference,
    }
    if fmt not in encoders:
        raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(encoders)}")
    return encoders[fmt](rows, columns, tokenizer, max_seq_len)


# ------------------------------------------------------------------------ row checks


def _column(row: dict[str, Any], name: str) -> Any:
    if name not in row:
        raise RowProblem(f"missing column {name!r} (columns: {', '.join(map(str, row))})")
    return row[name]


def _kind(value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _string(row: dict[str, Any], name: str) -> str:
    value = _column(row, name)
    if not isinstance(value, str):
        raise RowProblem(f"column {name!r} must be a string, got {_kind(value)}")
    if not value.strip():
        raise RowProblem(f"column {name!r} is empty")
    return value


def _optional_string(row: dict[str, Any], name: str | None, may_be_missing: bool = False) -> str | None:
    if name is None or (may_be_missing and name not in row):
        return None
    value = _column(row, name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowProblem(f"column {name!r} must be a string, got {_kind(value)}")
    return value


def _class_label(row: dict[str, Any], name: str) -> int:
    value = _column(row, name)
    # CSV cells are strings, so a string of digits is accepted as the integer it spells.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RowProblem(f"column {name!r} must be an integer class >= 0, got {_kind(value)}")
    return value


def _messages(row: dict[str, Any], name: str, role_key: str, content_key: str,
              roles: dict[str, str], known_roles_only: bool, need_assistant: bool = True) -> list[dict[str, Any]]:
    """The row's conversation as the {role, content} messages chat templates take.

    `roles` renames the file's role names; a name it lacks passes through unchanged, or with
    `known_roles_only` is a problem. Other keys of a message are kept (templates may use them).
    With `need_assistant` a conversation without an assistant message is a problem.
    """
    value = _column(row, name)
    shape = f"column {name!r} must be a list of {{{role_key}, {content_key}}} objects"
    if not isinstance(value, list) or not value:
        raise RowProblem(f"{shape}, got {_kind(value)}")
    messages = []
    for position, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowProblem(f"{shape}; message {position} is {_kind(message)}")
        for key in (role_key, content_key):
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else _kind(message[key])
                raise RowProblem(f"{shape}; message {position} {key!r} must be a string, got {got}")
        role = message[role_key]
        if role not in roles and known_roles_only:
            raise RowProblem(
                f"column {name!r} message {position} {role_key!r} is {role!r}, which is not a role this "
                f"format knows ({', '.join(roles)}); map it to system, user or assistant with "
                f"columns.role_map, e.g. role_map: {{{role}: assistant}}")
        rest = {key: item for key, item in message.items() if key not in (role_key, content_key)}
        messages.append({**rest, "role": roles.get(role, role), "content": message[content_key]})
    if need_assistant and not any(message["role"] == "assistant" for message in messages):
        raise RowProblem(f"column {name!r} has no assistant message, so there is nothing to learn")
    return messages


def alpaca_pair(row: dict[str, Any], columns: ColumnsSpec) -> tuple[str, str]:
    """(prompt, response) of an alpaca row: the prompt is the instruction, followed by
    ALPACA_INPUT_SEPARATOR and the input when the input is not blank, with the system text
    (when not blank) and SYSTEM_SEPARATOR in front; the response is the output."""
    instruction = _string(row, columns.instruction)
    extra = _optional_string(row, columns.input, may_be_missing=True)
    output = _string(row, columns.output)
    system = _optional_string(row, columns.system or "system", may_be_missing=True)
    prompt = instruction + ALPACA_INPUT_SEPARATOR + extra if extra and extra.strip() else instruction
    return (system + SYSTEM_SEPARATOR + prompt if system and system.strip() else prompt), output


def chat_pair(row: dict[str, Any], columns: ColumnsSpec, tokenizer: Any) -> tuple[str, str]:
    """(prompt, response) of a chat row for exact-match evaluation: the conversation before
    its last assistant message, rendered as training renders it with the assistant's turn
    opened (the generation prompt); the response is that message's content."""
    messages = _messages(row, columns.messages, columns.role or "role", columns.content or "content",
                         dict(columns.role_map), known_roles_only=False)
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    if last == 0:
        raise RowProblem(f"column {columns.messages!r} opens with the assistant's answer; there is no prompt")
    return _render(tokenizer, chat_template_of(tokenizer), messages[:last], generation=True), messages[last]["content"]


def multiple_choice_row(row: dict[str, Any]) -> tuple[str, tuple[str, ...], int]:
    """(prompt, choices, answer) of a ``{prompt, choices: [...], answer: index}`` row. In CSV,
    where cells are strings, choices is a JSON array and answer a string of digits."""
    prompt = _string(row, "prompt")
    choices = _column(row, "choices")
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except ValueError:
            pass
    if (not isinstance(choices, (list, tuple)) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise RowProblem(f"column 'choices' must be a list of at least 2 non-empty strings, got {_kind(choices)}")
    answer = _column(row, "answer")
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise RowProblem(f"column 'answer' must be the index of the right choice, 0 to {len(choices) - 1}, "
                         f"got {_kind(answer)}")
    return prompt, tuple(choices), answer


def _extract(rows: Sequence[dict[str, Any]], read: Callable[[dict[str, Any]], T]) -> list[T | RowProblem]:
    outcomes: list[T | RowProblem] = []
    for row in rows:
        try:
            outcomes.append(read(row))
        except RowProblem as problem:
            outcomes.append(problem)
    return outcomes


# ------------------------------------------------------------------------ tokenising


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no specials added; one batched call (fast tokenizers run it in Rust)."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _special(tokenizer: Any, attribute: str) -> list[int]:
    token_id = getattr(tokenizer, attribute, None)
    return [] if token_id is None else [int(token_id)]


def _truncate(example: Example, max_seq_len: int) -> Example:
    if len(example.input_ids) <= max_seq_len:
        return example
    labels = None if example.labels is None else example.labels[:max_seq_len]
    return Example(example.input_ids[:max_seq_len], labels, example.label, truncated=True)


def _has_target(example: Example) -> bool:
    return example.labels is not None and any(t != IGNORE_INDEX for t in example.labels)


# -------------------------------------------------------------------------- formats


def _encode_text(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    texts = _extract(rows, lambda row: _string(row, columns.text))
    ids = iter(_token_ids(tokenizer, [t for t in texts if isinstance(t, str)]))
    bos, eos = _special(tokenizer, "bos_token_id"), _special(tokenizer, "eos_token_id")
    outcomes: list[Outcome] = []
    for text in texts:
        if isinstance(text, RowProblem):
            outcomes.append(text)
            continue
        tokens = bos + next(ids) + eos
        outcomes.append(_truncate(Example(tokens, list(tokens)), max_seq_len))
    return outcomes


def _with_system(row: dict[str, Any], columns: ColumnsSpec, prompt: str) -> str:
    """The instruction format's prompt: [system + SYSTEM_SEPARATOR] + prompt."""
    system = _optional_string(row, columns.system)
    return prompt if system is None else system + SYSTEM_SEPARATOR + prompt


def _encode_instruction(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    def read(row: dict[str, Any]) -> tuple[str, str]:
        prompt = _string(row, columns.prompt)
        response = _string(row, columns.response)
        return _with_system(row, columns, prompt), response

    return _encode_prompt_response(_extract(rows, read), "instruction", tokenizer, max_seq_len)


def _encode_alpaca(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    pairs = _extract(rows, lambda row: alpaca_pair(row, columns))
    return _encode_prompt_response(pairs, "alpaca", tokenizer, max_seq_len)


def _encode_prompt_response(pairs: list[tuple[str, str] | RowProblem], fmt: str, tokenizer: Any,
                            max_seq_len: int) -> list[Outcome]:
    """bos + prompt + response + eos per (prompt, response) pair, loss on response + eos."""
    eos = _special(tokenizer, "eos_token_id")
    if not eos:
        raise DataError("the tokenizer has no eos token, so a model could not learn where a "
                        f"response ends; use a tokenizer with an eos token for {fmt} data")
    bos = _special(tokenizer, "bos_token_id")
    valid = [p for p in pairs if not isinstance(p, RowProblem)]
    prompt_ids = iter(_token_ids(tokenizer, [prompt for prompt, _ in valid]))
    response_ids = iter(_token_ids(tokenizer, [response for _, response in valid]))
    outcomes: list[Outcome] = []
    for pair in pairs:
        if isinstance(pair, RowProblem):
            outcomes.append(pair)
            continue
        context, answer = bos + next(prompt_ids), next(response_ids) + eos
        example = _truncate(
            Example(context + answer, [IGNORE_INDEX] * len(context) + answer), max_seq_len)
        if not _has_target(example):
            outcomes.append(RowProblem(
                f"the response is cut off entirely: bos + prompt take {len(context)} tokens of "
                f"max_seq_len={max_seq_len}; raise data.max_seq_len or shorten the prompt"))
        else:
            outcomes.append(example)
    return outcomes


def _encode_classification(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    def read(row: dict[str, Any]) -> tuple[str, int]:
        return _string(row, columns.text), _class_label(row, columns.label)

    pairs = _extract(rows, read)
    ids = iter(_token_ids(tokenizer, [p[0] for p in pairs if not isinstance(p, RowProblem)]))
    bos = _special(tokenizer, "bos_token_id")
    outcomes: list[Outcome] = []
    for pair in pairs:
        if isinstance(pair, RowProblem):
            outcomes.append(pair)
            continue
        outcomes.append(_truncate(Example(bos + next(ids), label=pair[1]), max_seq_len))
    return outcomes


# ------------------------------------------------------------------------------ chat


def chat_template_of(tokenizer: Any) -> str:
    """The template chat rows are rendered with: the tokenizer's own, else the default."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the "default" one renders chats
        template = template.get("default")
    return template or DEFAULT_CHAT_TEMPLATE


def _render(tokenizer: Any, template: str, messages: list[dict[str, Any]], generation: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation)
    except Exception as exc:  # Jinja raises many types; to the user it is one problem
        raise RowProblem(f"the chat template rejected the messages: {exc}") from exc


def _assistant_char_spans(tokenizer: Any, template: str, messages: list[dict[str, Any]],
                          first: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and find the character range of each assistant turn from
    ``messages[first]`` on (earlier turns are context, as in a preference prompt).

    Templates are opaque Jinja, so turns are found by rendering prefixes: the assistant turn
    ``i`` starts where ``messages[:i]`` rendered with the generation prompt ends (so the
    "assistant:" header stays unmasked context) and ends where ``messages[:i+1]`` rendered
    ends (so it includes the template's end-of-turn tokens, e.g. eos, which the model must
    learn to emit). Both renders must be prefixes of the full render; a template that
    rewrites earlier turns (some drop past reasoning) cannot be masked this way.
    """
    full = _render(tokenizer, template, messages, generation=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < first:
            continue
        before = _render(tokenizer, template, messages[:index], generation=True)
        through = _render(tokenizer, template, messages[: index + 1], generation=False)
        if not (full.startswith(before) and full.startswith(through)):
            raise DataError(
                "the chat template renders a conversation differently from its own prefixes, "
                "so assistant turns cannot be located for loss masking; use a tokenizer whose "
                "chat template renders turns incrementally, or convert the data to instruction "
                "format")
        spans.append((len(before), len(through)))
    return full, spans


def _encode_chat(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    def read(row: dict[str, Any]) -> list[dict[str, Any]]:
        return _messages(row, columns.messages, columns.role or "role", columns.content or "content",
                         dict(columns.role_map), known_roles_only=False)

    return _encode_conversations(rows, read, "chat", tokenizer, max_seq_len)


def _encode_sharegpt(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    def read(row: dict[str, Any]) -> list[dict[str, Any]]:
        return _messages(row, columns.conversations, columns.role or "from", columns.content or "value",
                         {**SHAREGPT_ROLES, **columns.role_map}, known_roles_only=True)

    return _encode_conversations(rows, read, "sharegpt", tokenizer, max_seq_len)


def _conversation_template(tokenizer: Any, fmt: str) -> str:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{fmt} data needs a fast (Rust-backed) tokenizer to map assistant turns "
                        "to tokens; load the tokenizer with use_fast=True")
    return chat_template_of(tokenizer)


def _encode_conversations(rows, read: Callable[[dict[str, Any]], list[dict[str, Any]]], fmt: str,
                          tokenizer: Any, max_seq_len: int) -> list[Outcome]:
    """Each row's messages (from `read`) through the chat template, loss on assistant turns."""
    template = _conversation_template(tokenizer, fmt)
    outcomes: list[Outcome] = []
    for row in rows:
        try:
            outcomes.append(_encode_conversation(read(row), 0, tokenizer, template, max_seq_len))
        except RowProblem as problem:
            outcomes.append(problem)
    return outcomes


def _encode_conversation(messages: list[dict[str, Any]], first: int, tokenizer: Any, template: str,
                         max_seq_len: int) -> Example:
    """One conversation through the chat template, loss on its assistant turns from
    ``messages[first]`` on; raises RowProblem when truncation leaves none of them."""
    text, spans = _assistant_char_spans(tokenizer, template, messages, first)
    # The template already wrote bos and the other specials as text: parse them as specials.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(encoded["input_ids"])
    # A token belongs to the turn its first character belongs to.
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"])
    ]
    example = _truncate(Example(ids, labels), max_seq_len)
    if not _has_target(example):
        raise RowProblem(f"every assistant turn is cut off by truncation at max_seq_len={max_seq_len}; "
                         "raise data.max_seq_len or shorten the conversation")
    return example


# ------------------------------------------------------------------------ preference


def _completion(row: dict[str, Any], name: str, columns: ColumnsSpec) -> list[dict[str, Any]]:
    """A conversational pair's completion as messages: a string is one assistant message."""
    value = _column(row, name)
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(f"column {name!r} is empty")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        return _messages(row, name, columns.role or "role", columns.content or "content",
                         dict(columns.role_map), known_roles_only=False)
    raise RowProblem(f"column {name!r} must be a string or a list of messages, got {_kind(value)}")


def _preference_row(row: dict[str, Any], columns: ColumnsSpec) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected): three strings (the prompt with its system text), or three
    message lists (a system column becomes a leading system message)."""
    prompt = _column(row, columns.prompt)
    if isinstance(prompt, str):
        prompt = _with_system(row, columns, _string(row, columns.prompt))
        chosen, rejected = _string(row, columns.chosen), _string(row, columns.rejected)
    elif isinstance(prompt, list):
        prompt = _messages(row, columns.prompt, columns.role or "role", columns.content or "content",
                           dict(columns.role_map), known_roles_only=False, need_assistant=False)
        system = _optional_string(row, columns.system)
        if system is not None:
            prompt = [{"role": "system", "content": system}, *prompt]
        chosen, rejected = _completion(row, columns.chosen, columns), _completion(row, columns.rejected, columns)
    else:
        raise RowProblem(f"column {columns.prompt!r} must be a string or a list of messages, got {_kind(prompt)}")
    if chosen == rejected:
        raise RowProblem(f"column {columns.rejected!r} is the same as column {columns.chosen!r}, so the pair "
                         "prefers nothing; fix the rejected answer or drop the row")
    return prompt, chosen, rejected


def _encode_preference(rows, columns, tokenizer, max_seq_len) -> list[Outcome]:
    triples = _extract(rows, lambda row: _preference_row(row, columns))
    usable = [t for t in triples if not isinstance(t, RowProblem)]
    strings = [t for t in usable if isinstance(t[0], str)]
    # String pairs: each side is exactly the instruction row {prompt, response: completion}.
    chosen_strings: Iterator[Outcome] = iter(())
    rejected_strings: Iterator[Outcome] = iter(())
    if strings:
        chosen_strings = iter(_encode_prompt_response(
            [(prompt, chosen) for prompt, chosen, _ in strings], "preference", tokenizer, max_seq_len))
        rejected_strings = iter(_encode_prompt_response(
            [(prompt, rejected) for prompt, _, rejected in strings], "preference", tokenizer, max_seq_len))
    template = _conversation_template(tokenizer, "preference") if len(strings) < len(usable) else ""

    def conversation(prompt: list[dict[str, Any]], completion: list[dict[str, Any]]) -> Outcome:
        # Loss on the completion's assistant turns only, never on those inside the prompt.
        try:
            return _encode_conversation([*prompt, *completion], len(prompt), tokenizer, template, max_seq_len)
        except RowProblem as problem:
            return problem

    outcomes: list[Outcome] = []
    for triple in triples:
        if isinstance(triple, RowProblem):
            outcomes.append(triple)
            continue
        prompt, chosen, rejected = triple
        if isinstance(prompt, str):
            good, bad = next(chosen_strings), next(rejected_strings)
        else:
            good, bad = conversation(prompt, chosen), conversation(prompt, rejected)
        if isinstance(good, RowProblem) or isinstance(bad, RowProblem):
            key, problem = (columns.chosen, good) if isinstance(good, RowProblem) else (columns.rejected, bad)
            outcomes.append(RowProblem(f"column {key!r}: {problem}"))
            continue
        outcomes.append(Example(good.input_ids, good.labels, truncated=good.truncated or bad.truncated,
                                rejected_input_ids=bad.input_ids, rejected_labels=bad.labels))
    return outcomes
