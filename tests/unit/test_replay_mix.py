"""mix_replay: how many replay rows join the training set, which ones, and its cache."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.pipeline import DataStats, PreparedData, mix_replay, prepare_dataset
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec.models import DataSourceSpec, DataSpec


@pytest.fixture(autouse=True)
def ftctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FTCTL_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def prepared(path: Path, rows: list[dict], tokenizer) -> PreparedData:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = DataSourceSpec(path=str(path), format="instruction")
    return prepare_dataset(source, DataSpec(train=source, max_seq_len=64), tokenizer)


@pytest.fixture
def train(tmp_path, tokenizer) -> PreparedData:
    return prepared(tmp_path / "train.jsonl",
                    [{"prompt": f"rev {'ab' * i}=", "response": "ba" * i} for i in range(1, 9)], tokenizer)


@pytest.fixture
def replay(tmp_path, tokenizer) -> list[PreparedData]:
    # Two replay sources, pooled: 6 + 4 distinct rows, none of them in train.
    one = prepared(tmp_path / "sort.jsonl", [{"prompt": f"sort {'cba' * i}=", "response": "abc" * i}
                                             for i in range(1, 7)], tokenizer)
    two = prepared(tmp_path / "add.jsonl", [{"prompt": f"{i}+{i}=", "response": str(2 * i)}
                                            for i in range(1, 5)], tokenizer)
    return [one, two]


def rows(data: PreparedData) -> list[tuple[int, ...]]:
    return [tuple(ids) for ids in data.dataset["input_ids"]]


@pytest.mark.parametrize("ratio, extra", [(0.2, 2), (0.5, 8), (0.25, 3), (0.6, 12)])
def test_ratio_gives_the_rounded_number_of_extra_rows(train, replay, ratio, extra):
    # round(r / (1 - r) * 8): 0.2 -> 2, 0.5 -> 8, 0.25 -> 2.67 -> 3, 0.6 -> 12
    mixed = mix_replay(train, replay, ratio, seed=1)
    assert len(mixed.dataset) == len(train.dataset) + extra
    assert mixed.stats.rows_used == len(mixed.dataset)
    assert mixed.stats.tokens == sum(len(ids) for ids in mixed.dataset["input_ids"])


def test_training_rows_come_first_and_extra_rows_come_from_the_replay_pool(train, replay):
    mixed = mix_replay(train, replay, 0.5, seed=3)
    train_rows = rows(train)
    pool = set(rows(replay[0])) | set(rows(replay[1]))
    assert len(pool) == 10 and not pool & set(train_rows)  # the rows can be told apart
    assert rows(mixed)[:len(train_rows)] == train_rows
    extra = rows(mixed)[len(train_rows):]
    assert extra and set(extra) <= pool
    assert len(set(extra)) == len(extra)  # 8 of a pool of 10: no repeats while the pool lasts
    assert set(mixed.dataset.column_names) == set(train.dataset.column_names)


def test_same_seed_gives_the_same_rows_and_another_seed_others(train, replay, ftctl_home):
    first = rows(mix_replay(train, replay, 0.5, seed=11))
    # Forget the cache so the second mix is drawn again, not read back.
    for entry in (ftctl_home / "data-cache").iterdir():
        if entry.name not in {train.fingerprint, replay[0].fingerprint, replay[1].fingerprint}:
            shutil.rmtree(entry)
    again = mix_replay(train, replay, 0.5, seed=11)
    assert again.from_cache is False
    assert rows(again) == first
    assert rows(mix_replay(train, replay, 0.5, seed=12)) != first


def test_rows_repeat_when_the_pool_is_smaller_than_needed(train, replay):
    mixed = mix_replay(train, replay[1:], 0.75, seed=5)  # 24 rows wanted from a pool of 4
    extra = rows(mixed)[len(train.dataset):]
    assert len(extra) == 24
    counts = Counter(extra)
    assert set(counts) == set(rows(replay[1]))  # every pooled row is used
    assert set(counts.values()) == {6}  # and each the same number of times: whole passes over the pool


def test_a_second_call_returns_the_cached_mix(train, replay):
    first = mix_replay(train, replay, 0.2, seed=2)
    assert first.from_cache is False
    second = mix_replay(train, replay, 0.2, seed=2)
    assert second.from_cache is True
    assert (second.fingerprint, second.cache_dir) == (first.fingerprint, first.cache_dir)
    assert rows(second) == rows(first)
    assert second.stats == first.stats
    assert mix_replay(train, replay, 0.3, seed=2).fingerprint != first.fingerprint  # ratio is part of the key


def test_an_empty_replay_pool_is_a_data_error(train, tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    nothing = PreparedData(empty, "empty-replay", tmp_path / "empty", DataStats())
    with pytest.raises(DataError, match="replay.sources hold no usable rows"):
        mix_replay(train, [nothing], 0.2, seed=1)
