"""Each data format turns rows into the token ids and loss labels a user expects."""

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


def prepare(path: Path, tokenizer, fmt: str, max_seq_len: int = 128, **source: object):
    spec = DataSourceSpec(path=str(path), format=fmt, **source)
    return prepare_dataset(spec, DataSpec(train=spec, max_seq_len=max_seq_len), tokenizer)


def trained_text(tokenizer, row: dict) -> str:
    """The text the loss is computed on: every token whose label is not -100."""
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_text_rows_are_bos_text_eos_and_every_token_is_a_target(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello world"}])
    row = prepare(path, tokenizer, "text").dataset[0]
    assert tokenizer.decode(row["input_ids"]) == "<s>hello world</s>"
    assert row["labels"] == row["input_ids"]


def test_instruction_loss_is_exactly_on_response_and_eos(tmp_path, tokenizer):
    rows = [{"prompt": "rev abc=", "response": "cba"}, {"prompt": "2+2=", "response": "4"}]
    prepared = prepare(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer, "instruction")
    for source_row, row in zip(rows, prepared.dataset):
        assert trained_text(tokenizer, row) == source_row["response"] + "</s>"
        masked = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
        assert tokenizer.decode(masked) == "<s>" + source_row["prompt"]
    assert prepared.stats.loss_tokens == (3 + 1) + (1 + 1)  # response bytes + eos, per row


def test_instruction_system_column_is_prepended_to_the_prompt_and_masked(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl",
                       [{"sys": "be brief", "prompt": "hi", "response": "yo"}])
    row = prepare(path, tokenizer, "instruction", columns={"system": "sys"}).dataset[0]
    assert tokenizer.decode(row["input_ids"]) == "<s>be brief\n\nhiyo</s>"
    assert trained_text(tokenizer, row) == "yo</s>"


def test_special_token_text_in_data_stays_text(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "say </s>", "response": "</s>!"}])
    row = prepare(path, tokenizer, "instruction").dataset[0]
    # Only the final token is the real eos: the literal "</s>" in the data is byte tokens.
    assert row["input_ids"].count(tokenizer.eos_token_id) == 1
    assert row["input_ids"][-1] == tokenizer.eos_token_id


CONVERSATION = [
    {"role": "system", "content": "be kind"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]


def test_chat_loss_is_only_on_assistant_turns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    row = prepare(path, tokenizer, "chat").dataset[0]
    assert tokenizer.decode(row["input_ids"]) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False)
    trained = trained_text(tokenizer, row)
    # Each assistant turn up to its end-of-turn tokens; role headers and other turns are context.
    assert trained == "hello</s>\nciao</s>\n"
    assert "<|assistant|>" not in trained


def test_chat_without_tokenizer_template_uses_the_default(tmp_path, tokenizer):
    plain = build_tokenizer()
    plain.chat_template = None
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    row = prepare(path, plain, "chat").dataset[0]
    assert tokenizer.decode(row["input_ids"]).startswith("<s><|system|>\nbe kind\n")
    assert trained_text(plain, row) == "hello</s>\nciao</s>\n"


def test_chat_with_unknown_role_is_a_bad_row(tmp_path, tokenizer):
    messages = [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    with pytest.raises(DataError, match=r"chat\.jsonl row 1: the chat template rejected .*robot"):
        prepare(path, tokenizer, "chat")


def test_classification_gives_bos_text_and_integer_label(tmp_path, tokenizer):
    path = tmp_path / "classify.csv"
    path.write_text("text,label\n1379,1\n9311,0\n123,2\n")
    prepared = prepare(path, tokenizer, "classification")
    assert set(prepared.dataset.column_names) == {"input_ids", "label"}
    assert prepared.dataset["label"] == [1, 0, 2]
    assert tokenizer.decode(prepared.dataset[0]["input_ids"]) == "<s>1379"
    assert prepared.stats.max_label == 2


def test_json_array_and_parquet_sources_read_like_jsonl(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "2+2=", "answer": "4"}, {"question": "1+1=", "answer": "2"}]
    json_path = tmp_path / "train.json"
    json_path.write_text(json.dumps(rows, indent=2))
    parquet_path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    columns = {"prompt": "question", "response": "answer"}
    for path in (json_path, parquet_path):
        dataset = prepare(path, tokenizer, "instruction", columns=columns).dataset
        assert [trained_text(tokenizer, row) for row in dataset] == ["4</s>", "2</s>"]


def test_parquet_chat_messages_as_nested_structs(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION[1:3]}]), path)
    row = prepare(path, tokenizer, "chat").dataset[0]
    assert trained_text(tokenizer, row) == "hello</s>\n"
