"""Preference pairs: each side encodes like the instruction or chat row it stands for, bad
pairs name their key, and a batch of B pairs is 2B rows, chosen first, averaged per pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.collate import collate
from orchestrator.data.errors import DataError
from orchestrator.data.formats import Example, RowProblem, encode_rows
from orchestrator.data.pipeline import prepare_dataset
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec.models import ColumnsSpec, DataSourceSpec, DataSpec

PAIRS = [{"prompt": "shift abc=", "chosen": "bcd", "rejected": "cde"},
         {"prompt": "shift xyz=", "chosen": "yza", "rejected": "a much longer wrong answer"}]


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


def prepare(path: Path, tokenizer, fmt: str = "preference", max_seq_len: int = 128, packing: bool = False,
            **source: object):
    spec = DataSourceSpec(path=str(path), format=fmt, **source)
    return prepare_dataset(spec, DataSpec(train=spec, max_seq_len=max_seq_len, packing=packing), tokenizer)


def trained_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    assert [t for t, label in zip(ids, labels) if label != -100] == [t for t in labels if t != -100]
    return tokenizer.decode([t for t in labels if t != -100])


def encode_one(row: dict, tokenizer, max_seq_len: int = 128, **columns: object) -> Example | RowProblem:
    return encode_rows([row], "preference", ColumnsSpec(**columns), tokenizer, max_seq_len)[0]


# ------------------------------------------------------------------------ string pairs


def test_string_pairs_encode_each_side_like_the_instruction_row(tmp_path, tokenizer):
    pairs = [{**pair, "sys": "be right"} for pair in PAIRS]
    dataset = prepare(write_jsonl(tmp_path / "pairs.jsonl", pairs), tokenizer, columns={"system": "sys"}).dataset
    for side, prefix in (("chosen", ""), ("rejected", "rejected_")):
        rows = [{"sys": p["sys"], "prompt": p["prompt"], "response": p[side]} for p in pairs]
        instruction = prepare(write_jsonl(tmp_path / f"{side}.jsonl", rows), tokenizer, "instruction",
                              columns={"system": "sys"}).dataset
        assert [row[f"{prefix}input_ids"] for row in dataset] == [row["input_ids"] for row in instruction]
        assert [row[f"{prefix}labels"] for row in dataset] == [row["labels"] for row in instruction]
    first = dataset[0]
    assert tokenizer.decode(first["input_ids"]) == "<s>be right\n\nshift abc=bcd</s>"
    assert trained_text(tokenizer, first["rejected_input_ids"], first["rejected_labels"]) == "cde</s>"


def test_renamed_columns_and_each_side_truncated_on_its_own(tmp_path, tokenizer):
    rows = [{"q": "shift abc=", "good": "bcd", "bad": "x" * 200}]
    prepared = prepare(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer, max_seq_len=32,
                       columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    row = prepared.dataset[0]
    assert trained_text(tokenizer, row["input_ids"], row["labels"]) == "bcd</s>"
    assert len(row["rejected_input_ids"]) == 32 > len(row["input_ids"])
    assert prepared.stats.truncated == 1


# ------------------------------------------------------------------ conversational pairs

PROMPT = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "earlier answer"}, {"role": "user", "content": "bye"}]


def test_conversational_pairs_train_only_on_the_completions_assistant_turns(tmp_path, tokenizer):
    row = {"prompt": PROMPT, "chosen": "ciao",
           "rejected": [{"role": "assistant", "content": "go"}, {"role": "user", "content": "?"},
                        {"role": "assistant", "content": "away"}]}
    example = prepare(write_jsonl(tmp_path / "pairs.jsonl", [row]), tokenizer).dataset[0]
    assert trained_text(tokenizer, example["input_ids"], example["labels"]) == "ciao</s>\n"
    assert trained_text(tokenizer, example["rejected_input_ids"], example["rejected_labels"]) == "go</s>\naway</s>\n"
    # The tokens are exactly those of the chat row prompt + completion (whose labels would
    # also cover the prompt's own assistant turn, "earlier answer").
    chat = [{"messages": PROMPT + [{"role": "assistant", "content": "ciao"}]}, {"messages": PROMPT + row["rejected"]}]
    chat_rows = prepare(write_jsonl(tmp_path / "chat.jsonl", chat), tokenizer, "chat").dataset
    assert example["input_ids"] == chat_rows[0]["input_ids"]
    assert example["rejected_input_ids"] == chat_rows[1]["input_ids"]
    assert trained_text(tokenizer, chat_rows[0]["input_ids"], chat_rows[0]["labels"]) == "earlier answer</s>\nciao</s>\n"


def test_a_system_column_leads_a_conversational_prompt(tokenizer):
    example = encode_one({"s": "be kind", "prompt": PROMPT[1:2], "chosen": "hello", "rejected": "no"}, tokenizer,
                         system="s")
    assert tokenizer.decode(example.input_ids) == "<s><|system|>\nbe kind\n<|user|>\nhi\n<|assistant|>\nhello</s>\n"


# ------------------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(("row", "problem"), [
    ({"prompt": "p", "chosen": "a"}, "missing column 'rejected' (columns: prompt, chosen)"),
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, "column 'chosen' is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "column 'rejected' is the same as column 'chosen'"),
    ({"prompt": PROMPT, "chosen": "a", "rejected": [{"role": "assistant", "content": "a"}]},
     "column 'rejected' is the same as column 'chosen'"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "column 'chosen' must be a string, got int 3"),
    ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "column 'rejected' must be a string, got list ['b']"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "column 'prompt' must be a string or a list of messages, got int 7"),
    ({"prompt": PROMPT, "chosen": {"a": 1}, "rejected": "b"}, "column 'chosen' must be a string or a list of messages"),
    ({"prompt": PROMPT, "chosen": "a", "rejected": [{"role": "user", "content": "b"}]},
     "column 'rejected' has no assistant message"),
    ({"prompt": PROMPT, "chosen": "a", "rejected": []}, "column 'rejected' must be a list of {role, content} objects"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "column 'prompt' must be a list of {role, content} objects"),
])
def test_bad_pairs_name_the_key(tokenizer, row, problem):
    outcome = encode_one(row, tokenizer)
    assert isinstance(outcome, RowProblem) and problem in str(outcome), str(outcome)


def test_a_side_with_no_label_left_after_truncation_names_its_key(tokenizer):
    long_turn = [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "b"}]
    outcome = encode_one({"prompt": PROMPT[1:2], "chosen": "a", "rejected": long_turn}, tokenizer, max_seq_len=40)
    assert isinstance(outcome, RowProblem)
    assert str(outcome).startswith("column 'rejected': every assistant turn is cut off by truncation")
    outcome = encode_one({"prompt": "x" * 100, "chosen": "a", "rejected": "b"}, tokenizer, max_seq_len=40)
    assert str(outcome).startswith("column 'chosen': the response is cut off entirely")


def test_bad_pair_in_a_file_names_file_row_and_key(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [PAIRS[0], {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"train.jsonl row 2: missing column 'rejected'"):
        prepare(path, tokenizer)


# ------------------------------------------------------------ prepared rows and batches


def test_prepared_pairs_have_exactly_the_four_columns_and_count_both_sides(tmp_path, tokenizer):
    prepared = prepare(write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tokenizer)
    dataset = prepared.dataset
    assert sorted(dataset.column_names) == ["input_ids", "labels", "rejected_input_ids", "rejected_labels"]
    sides = [(row[ids], row[labels]) for row in dataset
             for ids, labels in (("input_ids", "labels"), ("rejected_input_ids", "rejected_labels"))]
    assert prepared.stats.tokens == sum(len(ids) for ids, _ in sides)
    assert prepared.stats.loss_tokens == sum(t != -100 for _, labels in sides for t in labels)


def test_collate_gives_2b_rows_chosen_first_and_one_loss_unit_per_pair(tmp_path, tokenizer):
    from orchestrator.training.feed import loss_units

    rows = list(prepare(write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tokenizer).dataset)
    batch = collate(rows, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pairs"}
    assert batch["pairs"].dim() == 0 and int(batch["pairs"]) == 2 and loss_units(batch) == 2
    width = max(len(row[key]) for row in rows for key in ("input_ids", "rejected_input_ids"))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, width)
    sides = [(r["input_ids"], r["labels"]) for r in rows] + [(r["rejected_input_ids"], r["rejected_labels"]) for r in rows]
    for i, (ids, labels) in enumerate(sides):
        assert batch["input_ids"][i, :len(ids)].tolist() == ids and batch["labels"][i, :len(ids)].tolist() == labels
        assert batch["attention_mask"][i].tolist() == [1] * len(ids) + [0] * (width - len(ids))
        assert batch["labels"][i, len(ids):].tolist() == [-100] * (width - len(ids))


def test_packing_preference_data_is_refused(tmp_path, tokenizer):
    with pytest.raises(DataError, match="packing does not apply to preference data.*set data.packing: false"):
        prepare(write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tokenizer, packing=True)


# ---------------------------------------------------------------------------- demo data


def test_demo_pairs_load_and_never_prefer_an_answer_to_itself(tmp_path, tokenizer):
    from orchestrator.builtin.demo_data import wrong_shift, write_demo_data

    written = write_demo_data(tmp_path / "demo", n_train=40, n_eval=20)
    for name in ("preference_train", "preference_eval"):
        rows = [json.loads(line) for line in written[name].read_text().splitlines()]
        assert all(row["rejected"] == wrong_shift(row["chosen"]) != row["chosen"] for row in rows)
        prepared = prepare(written[name], tokenizer)  # on_bad_row: error, so no pair is refused
        assert prepared.stats.rows_used == len(rows) == {"preference_train": 40, "preference_eval": 20}[name]
    letters = "abcdefghijklmnopqrstuvwxyz"
    assert all(a != b for a, b in zip(letters, wrong_shift(letters)))
