"""Alpaca and ShareGPT rows train on exactly the output / assistant tokens; renamed keys load;
rows that do not fit name their file, row and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.pipeline import prepare_dataset
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec.models import DataSourceSpec, DataSpec


@pytest.fixture(autouse=True)
def ftctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prepare(path: Path, tokenizer, fmt: str, **source: object):
    spec = DataSourceSpec(path=str(path), format=fmt, **source)
    return prepare_dataset(spec, DataSpec(train=spec, max_seq_len=128), tokenizer)


def trained_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def masked_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == -100])


# ---------------------------------------------------------------------------- alpaca


def test_alpaca_trains_on_the_output_and_joins_a_non_blank_input_with_a_blank_line(tmp_path, tokenizer):
    rows = [{"instruction": "rev", "input": "abc", "output": "cba"},
            {"instruction": "2+2=", "input": "", "output": "4"},
            {"instruction": "1+1=", "output": "2"},
            {"instruction": "3+3=", "input": None, "output": "6"},
            {"instruction": "4+4=", "input": "  ", "output": "8"}]
    dataset = prepare(write_jsonl(tmp_path / "alpaca.jsonl", rows), tokenizer, "alpaca").dataset
    assert [trained_text(tokenizer, row) for row in dataset] == ["cba</s>", "4</s>", "2</s>", "6</s>", "8</s>"]
    assert [masked_text(tokenizer, row) for row in dataset] == [
        "<s>rev\n\nabc", "<s>2+2=", "<s>1+1=", "<s>3+3=", "<s>4+4="]


def test_alpaca_rows_encode_like_the_instruction_rows_they_stand_for(tmp_path, tokenizer):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "sys? hi", "input": "x", "output": "yo",
                                                      "system": "be brief"}])
    instruction = write_jsonl(tmp_path / "instruction.jsonl", [{"s": "be brief", "prompt": "sys? hi\n\nx",
                                                                "response": "yo"}])
    row = prepare(alpaca, tokenizer, "alpaca").dataset[0]
    assert tokenizer.decode(row["input_ids"]) == "<s>be brief\n\nsys? hi\n\nxyo</s>"
    assert trained_text(tokenizer, row) == "yo</s>"
    assert row == prepare(instruction, tokenizer, "instruction", columns={"system": "s"}).dataset[0]


def test_alpaca_renamed_columns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"task": "rev", "data": "ab", "answer": "ba", "sys": "s"}])
    columns = {"instruction": "task", "input": "data", "output": "answer", "system": "sys"}
    row = prepare(path, tokenizer, "alpaca", columns=columns).dataset[0]
    assert masked_text(tokenizer, row) == "<s>s\n\nrev\n\nab"
    assert trained_text(tokenizer, row) == "ba</s>"


def test_alpaca_exact_match_rows_use_the_trained_prompt(tmp_path):
    from orchestrator.forgetting.tasks import answer_rows

    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "rev", "input": "ab", "output": "ba"},
                                                   {"instruction": "no output"},
                                                   {"instruction": "1+1=", "output": "2", "system": "s"}])
    assert answer_rows(DataSourceSpec(path=str(path), format="alpaca"), 10) == (("rev\n\nab", "ba"),
                                                                                 ("s\n\n1+1=", "2"))


# -------------------------------------------------------------------------- sharegpt

CONVERSATION = [{"from": "system", "value": "be kind"}, {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"}, {"from": "user", "value": "bye"},
                {"from": "assistant", "value": "ciao"}]
AS_CHAT = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
           {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
           {"role": "assistant", "content": "ciao"}]


def test_sharegpt_is_encoded_exactly_like_the_chat_it_maps_to(tmp_path, tokenizer):
    sharegpt = prepare(write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": CONVERSATION}]),
                       tokenizer, "sharegpt").dataset[0]
    chat = prepare(write_jsonl(tmp_path / "chat.jsonl", [{"messages": AS_CHAT}]), tokenizer, "chat").dataset[0]
    assert sharegpt == chat
    assert tokenizer.decode(sharegpt["input_ids"]) == tokenizer.apply_chat_template(AS_CHAT, tokenize=False)
    assert trained_text(tokenizer, sharegpt) == "hello</s>\nciao</s>\n"


def test_sharegpt_renamed_keys_and_mapped_roles(tmp_path, tokenizer):
    turns = [{"speaker": "customer", "text": "hi"}, {"speaker": "bot", "text": "hello"}]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"dialog": turns}])
    columns = {"conversations": "dialog", "role": "speaker", "content": "text",
               "role_map": {"customer": "user", "bot": "assistant"}}
    row = prepare(path, tokenizer, "sharegpt", columns=columns).dataset[0]
    assert tokenizer.decode(row["input_ids"]) == "<s><|user|>\nhi\n<|assistant|>\nhello</s>\n"
    assert trained_text(tokenizer, row) == "hello</s>\n"


def test_chat_role_and_content_keys_can_be_renamed(tmp_path, tokenizer):
    messages = [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "hello"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    row = prepare(path, tokenizer, "chat", columns={"role": "speaker", "content": "text"}).dataset[0]
    assert trained_text(tokenizer, row) == "hello</s>\n"
    assert masked_text(tokenizer, row) == "<s><|user|>\nhi\n<|assistant|>\n"


def test_demo_files_in_both_formats_train_on_the_target_responses(tokenizer):
    from orchestrator.builtin import tasks
    from orchestrator.builtin.demo_data import TRAIN_SEED

    first = tasks.generate(tasks.TARGET_TASK, 1, seed=TRAIN_SEED)[0]
    for name, fmt, end in (("alpaca_train", "alpaca", "</s>"), ("sharegpt_train", "sharegpt", "</s>\n")):
        spec = DataSourceSpec(path=f"builtin:demo/{name}.jsonl", format=fmt, max_examples=1)
        row = prepare_dataset(spec, DataSpec(train=spec), tokenizer).dataset[0]
        assert trained_text(tokenizer, row) == first["response"] + end


# -------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("fmt", "row", "problem"),
    [
        ("alpaca", {"instruction": "rev", "input": "ab"},
         "missing column 'output' (columns: instruction, input)"),
        ("alpaca", {"instruction": "rev", "input": 3, "output": "x"}, "column 'input' must be a string, got int 3"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
         "column 'conversations' message 2 'from' is 'bot', which is not a role this format knows"),
        ("sharegpt", {"conversations": "hi"},
         "column 'conversations' must be a list of {from, value} objects, got str 'hi'"),
        ("sharegpt", {"conversations": [{"from": "gpt", "text": "hi"}]},
         "column 'conversations' must be a list of {from, value} objects; message 1 'value' must be a string, "
         "got missing"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}]},
         "column 'conversations' has no assistant message"),
        ("chat", {"messages": [{"speaker": "assistant"}]},
         "column 'messages' must be a list of {speaker, text} objects; message 1 'text' must be a string, got missing"),
    ],
)
def test_bad_rows_name_file_row_and_key(tmp_path, tokenizer, fmt, row, problem):
    good = {"alpaca": {"instruction": "a", "output": "b"},
            "sharegpt": {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            "chat": {"messages": [{"speaker": "user", "text": "a"}, {"speaker": "assistant", "text": "b"}]}}[fmt]
    path = write_jsonl(tmp_path / "train.jsonl", [good, row])
    columns = {"role": "speaker", "content": "text"} if fmt == "chat" else {}
    with pytest.raises(DataError) as caught:
        prepare(path, tokenizer, fmt, columns=columns)
    assert f"train.jsonl row 2: {problem}" in str(caught.value)


def test_unknown_sharegpt_role_says_how_to_map_it(tmp_path, tokenizer):
    row = {"conversations": [{"from": "bot", "value": "yo"}]}
    with pytest.raises(DataError) as caught:
        prepare(write_jsonl(tmp_path / "train.jsonl", [row]), tokenizer, "sharegpt")
    assert "map it to system, user or assistant with columns.role_map, e.g. role_map: {bot: assistant}" \
        in str(caught.value)


def test_role_map_takes_only_the_three_roles():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="role_map"):
        DataSourceSpec(path="x.jsonl", format="sharegpt", columns={"role_map": {"bot": "robot"}})


# -------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name, fmt", [("alpaca_train", "alpaca"), ("sharegpt_train", "sharegpt")])
def test_an_alpaca_and_a_sharegpt_file_train_the_tiny_base(name, fmt):
    """A few optimizer steps on the demo file, through the loss training uses, lower the loss
    on the rows trained (only their output / assistant tokens carry it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.data.collate import collate
    from orchestrator.models.build import load_tokenizer
    from orchestrator.models.loss import token_loss_sum
    from orchestrator.models.tiny.build import ensure_tiny_base
    from orchestrator.spec.models import ModelSpec

    base = str(ensure_tiny_base())
    tok = load_tokenizer(base, ModelSpec(path=base))
    spec = DataSourceSpec(path=f"builtin:demo/{name}.jsonl", format=fmt, max_examples=16)
    rows = prepare_dataset(spec, DataSpec(train=spec, max_seq_len=64), tok).dataset
    batch = collate([rows[i] for i in range(len(rows))], tok.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    units = int((batch["labels"][:, 1:] != -100).sum())
    losses = []
    for _ in range(8):
        loss = token_loss_sum(model, batch) / units
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
