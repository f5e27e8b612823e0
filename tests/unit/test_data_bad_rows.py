"""Malformed rows: `error` names file, row and problem; `skip` drops and counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.pipeline import prepare_dataset
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec.models import DataSourceSpec, DataSpec


@pytest.fixture(autouse=True)
def ftctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def prepare(path: Path, tokenizer, fmt: str = "instruction", on_bad_row: str = "error",
            max_seq_len: int = 64, **source: object):
    spec = DataSourceSpec(path=str(path), format=fmt, **source)
    data = DataSpec(train=spec, max_seq_len=max_seq_len, on_bad_row=on_bad_row)
    return prepare_dataset(spec, data, tokenizer)


GOOD = json.dumps({"prompt": "1+1=", "response": "2"})


def jsonl(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_json_names_file_and_line(tmp_path, tokenizer):
    path = jsonl(tmp_path, GOOD, GOOD, '{"prompt": "x", "response": ')
    with pytest.raises(DataError, match=r"train\.jsonl row 3: invalid JSON") as caught:
        prepare(path, tokenizer)
    assert "on_bad_row: skip" in str(caught.value)


def test_missing_column_lists_the_columns_the_row_has(tmp_path, tokenizer):
    path = jsonl(tmp_path, GOOD, json.dumps({"prompt": "q", "answer": "a"}))
    with pytest.raises(DataError) as caught:
        prepare(path, tokenizer)
    assert "train.jsonl row 2: missing column 'response' (columns: prompt, answer)" in str(caught.value)


def test_blank_lines_are_not_rows_and_line_numbers_still_match_the_file(tmp_path, tokenizer):
    path = jsonl(tmp_path, GOOD, "", "   ", json.dumps({"prompt": "q", "response": 7}))
    with pytest.raises(DataError, match=r"row 4: column 'response' must be a string, got int 7"):
        prepare(path, tokenizer)


@pytest.mark.parametrize(
    ("fmt", "row", "problem"),
    [
        ("text", {"text": "   "}, "column 'text' is empty"),
        ("text", {"text": None}, "column 'text' must be a string"),
        ("chat", {"messages": "hello"}, "column 'messages' must be a list of {role, content}"),
        ("chat", {"messages": [{"role": "user"}]}, "message 1 'content' must be a string, got missing"),
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "has no assistant message"),
        ("classification", {"text": "12", "label": "one"}, "column 'label' must be an integer class >= 0"),
        ("classification", {"text": "12", "label": -1}, "column 'label' must be an integer class >= 0, got int -1"),
        ("classification", {"text": "12", "label": 1.5}, "got float 1.5"),
    ],
)
def test_wrong_types_are_reported_with_row_number(tmp_path, tokenizer, fmt, row, problem):
    path = jsonl(tmp_path, json.dumps(row))
    with pytest.raises(DataError) as caught:
        prepare(path, tokenizer, fmt)
    message = str(caught.value)
    assert "train.jsonl row 1: " in message
    assert problem in message


def test_csv_rows_are_numbered_by_line_counting_the_header(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    # The first record spans three lines (a quoted multi-line response), as real CSVs do.
    path.write_text('prompt,response\nq1,"line one\nline two"\nq2,a2\nq3,\n')
    with pytest.raises(DataError, match=r"train\.csv row 5: column 'response' is empty"):
        prepare(path, tokenizer)


def test_parquet_and_json_array_rows_are_numbered_from_one(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"train\.parquet row 2: column 'response' is empty"):
        prepare(tmp_path / "train.parquet", tokenizer)
    (tmp_path / "train.json").write_text(json.dumps([rows[0], [1, 2]]))
    with pytest.raises(DataError, match=r"train\.json row 2: expected a JSON object, got an array"):
        prepare(tmp_path / "train.json", tokenizer)


def test_response_cut_off_by_truncation_is_a_bad_row(tmp_path, tokenizer):
    long_prompt = json.dumps({"prompt": "x" * 20, "response": "y"})
    with pytest.raises(DataError, match=r"row 1: the response is cut off entirely.*max_seq_len=16"):
        prepare(jsonl(tmp_path, long_prompt), tokenizer, max_seq_len=16)


def test_skip_drops_counts_and_reports_bad_rows(tmp_path, tokenizer):
    bad = ['{"prompt": ', json.dumps({"prompt": "q"}), json.dumps({"prompt": "x" * 70, "response": "y"})]
    path = jsonl(tmp_path, GOOD, *bad, GOOD)
    prepared = prepare(path, tokenizer, on_bad_row="skip")
    stats = prepared.stats
    assert (stats.rows_read, stats.rows_used, stats.rows_skipped) == (5, 2, 3)
    assert len(prepared.dataset) == 2
    assert stats.skipped_examples[0].startswith(f"{path} row 2: invalid JSON")
    assert stats.skipped_examples[1] == f"{path} row 3: missing column 'response' (columns: prompt)"
    assert "row 4: the response is cut off entirely" in stats.skipped_examples[2]


def test_skip_keeps_only_the_first_five_messages(tmp_path, tokenizer):
    path = jsonl(tmp_path, *(["not json"] * 8), GOOD)
    stats = prepare(path, tokenizer, on_bad_row="skip").stats
    assert stats.rows_skipped == 8
    assert len(stats.skipped_examples) == 5


def test_nothing_left_after_skipping_is_an_error(tmp_path, tokenizer):
    path = jsonl(tmp_path, json.dumps({"question": "q", "answer": "a"}))
    with pytest.raises(DataError, match=r"none of its 1 rows is usable .*missing column 'prompt'"):
        prepare(path, tokenizer, on_bad_row="skip")


def test_empty_file_is_an_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"has no rows"):
        prepare(jsonl(tmp_path, ""), tokenizer)


def test_missing_file_and_unknown_suffix_say_what_to_fix(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"does not exist.*fix the path"):
        prepare(tmp_path / "nope.jsonl", tokenizer)
    (tmp_path / "train.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported suffix '\.txt'.*\.jsonl"):
        prepare(tmp_path / "train.txt", tokenizer)


def test_corrupt_parquet_file_is_reported_as_unreadable(tmp_path, tokenizer):
    (tmp_path / "train.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"train\.parquet could not be read.*check that the file"):
        prepare(tmp_path / "train.parquet", tokenizer)
