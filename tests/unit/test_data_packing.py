"""Packing fills rows without letting loss cross examples; collate pads batches correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.packing import pack_examples
from orchestrator.data.pipeline import collate, prepare_dataset
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec.models import DataSourceSpec, DataSpec


@pytest.fixture(autouse=True)
def ftctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))


def example(length: int, first: int) -> tuple[list[int], list[int]]:
    ids = list(range(first, first + length))
    return ids, list(ids)


def test_rows_are_full_except_a_shorter_last_one_and_no_token_is_lost():
    examples = [example(n, 100 * i) for i, n in enumerate([5, 7, 3, 9, 4])]
    rows = list(pack_examples(examples, max_seq_len=8))
    assert [len(row["input_ids"]) for row in rows] == [8, 8, 8, 4]
    assert [t for row in rows for t in row["input_ids"]] == [t for ids, _ in examples for t in ids]


def test_no_example_is_trained_to_follow_the_previous_one():
    examples = [example(n, 100 * i) for i, n in enumerate([5, 7, 3, 9, 4])]
    rows = list(pack_examples(examples, max_seq_len=8))
    starts = {ids[0] for ids, _ in examples}
    for row in rows:
        for token, label, position in zip(row["input_ids"], row["labels"], row["position_ids"]):
            if token in starts:
                assert label == -100 and position == 0
            elif position != 0:  # position 0 is also a row start, whose label is never used
                assert label == token
    # Masked labels inside an example survive packing.
    masked = list(pack_examples([([1, 2, 3, 4], [-100, -100, 3, 4])], max_seq_len=8))
    assert masked[0]["labels"] == [-100, -100, 3, 4]


def test_position_ids_restart_at_every_example(tmp_path):
    rows = list(pack_examples([example(3, 0), example(4, 10)], max_seq_len=16))
    assert rows[0]["position_ids"] == [0, 1, 2, 0, 1, 2, 3]


def test_packed_dataset_keeps_tokens_and_loss_masks(tmp_path):
    tokenizer = build_tokenizer()
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "response": str(2 * i)}) + "\n"
                            for i in range(40)))
    spec = DataSourceSpec(path=str(path), format="instruction")
    plain = prepare_dataset(spec, DataSpec(train=spec, max_seq_len=32), tokenizer)
    packed = prepare_dataset(spec, DataSpec(train=spec, max_seq_len=32, packing=True), tokenizer)
    assert packed.stats.tokens == plain.stats.tokens
    assert packed.stats.loss_tokens == plain.stats.loss_tokens
    assert packed.stats.packed_rows == len(packed.dataset) == -(-plain.stats.tokens // 32)
    assert all(len(ids) == 32 for ids in packed.dataset["input_ids"][:-1])
    trained = tokenizer.decode([t for row in packed.dataset["labels"] for t in row if t != -100])
    assert trained == "".join(f"{2 * i}</s>" for i in range(40))


def test_packing_classification_is_refused(tmp_path):
    spec = DataSourceSpec(path=str(tmp_path / "c.jsonl"), format="classification")
    with pytest.raises(DataError, match="set data.packing: false"):
        prepare_dataset(spec, DataSpec(train=spec, packing=True), build_tokenizer())


def test_collate_pads_inputs_labels_and_mask():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                     {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_passes_position_ids_and_class_labels_through():
    packed = collate([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "position_ids": [0, 0, 1]},
                      {"input_ids": [4], "labels": [4], "position_ids": [0]}], pad_id=9)
    assert packed["position_ids"].tolist() == [[0, 0, 1], [0, 0, 1]]
    classified = collate([{"input_ids": [1, 2], "label": 3}, {"input_ids": [1], "label": 0}], pad_id=0)
    assert classified["label"].tolist() == [3, 0]
    assert "labels" not in classified
