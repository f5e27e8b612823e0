"""prepare_dataset end to end: truncation, max_examples, fingerprint, cache, hub and demo sources."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.pipeline import load_prepared, prepare_dataset
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


def write_rows(path: Path, count: int = 6) -> Path:
    path.write_text("".join(
        json.dumps({"prompt": f"rev {'ab' * i}=", "response": "ba" * i, "text": f"t{i}"}) + "\n"
        for i in range(1, count + 1)))
    return path


def prepare(path: Path | str, tokenizer, fmt: str = "instruction", **data: object):
    spec = DataSourceSpec(path=str(path), format=fmt,
                          **{k: data.pop(k) for k in ("max_examples", "split") if k in data})
    return prepare_dataset(spec, DataSpec(train=spec, **data), tokenizer)


def test_long_examples_are_truncated_and_counted(tmp_path, tokenizer):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": "x" * n}) + "\n" for n in (5, 14, 15, 40)))
    prepared = prepare(path, tokenizer, "text", max_seq_len=16)
    # bos + text + eos: 7, 16, 17 and 42 tokens, so the last two are cut to 16.
    assert [len(ids) for ids in prepared.dataset["input_ids"]] == [7, 16, 16, 16]
    assert prepared.stats.truncated == 2


def test_truncated_instruction_keeps_the_start_of_the_response(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "p" * 9, "response": "abcdefghij"}) + "\n")
    prepared = prepare(path, tokenizer, max_seq_len=16)
    row = prepared.dataset[0]
    assert tokenizer.decode([t for t in row["labels"] if t != -100]) == "abcdef"
    assert prepared.stats.truncated == 1


def test_max_examples_takes_the_first_good_rows(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text("oops\n" + write_rows(tmp_path / "rows.jsonl").read_text())
    prepared = prepare(path, tokenizer, max_examples=2, on_bad_row="skip")
    assert len(prepared.dataset) == 2
    assert prepared.stats.rows_skipped == 1 and prepared.stats.rows_read == 3
    assert tokenizer.decode(prepared.dataset[0]["input_ids"]) == "<s>rev ab=ba</s>"


def test_fingerprint_is_stable_and_follows_every_input(tmp_path, tokenizer):
    path = write_rows(tmp_path / "train.jsonl")
    first = prepare(path, tokenizer, max_seq_len=64).fingerprint
    assert prepare(path, tokenizer, max_seq_len=64).fingerprint == first
    assert prepare(path, tokenizer, max_seq_len=32).fingerprint != first
    assert prepare(path, tokenizer, "text", max_seq_len=64).fingerprint != first
    assert prepare(path, tokenizer, max_seq_len=64, packing=True).fingerprint != first
    path.write_text(path.read_text().replace("rev", "REV"))
    assert prepare(path, tokenizer, max_seq_len=64).fingerprint != first


def test_fingerprint_is_the_same_in_another_process(tmp_path, tokenizer):
    path = write_rows(tmp_path / "train.jsonl")
    here = prepare(path, tokenizer).fingerprint
    script = (
        "from orchestrator.data.fingerprint import data_fingerprint\n"
        "from orchestrator.data.sources import open_source\n"
        "from orchestrator.models.tiny.tokenizer import build_tokenizer\n"
        "from orchestrator.spec.models import DataSourceSpec, DataSpec\n"
        f"spec = DataSourceSpec(path={str(path)!r})\n"
        "print(data_fingerprint(open_source(spec).content_id, spec, DataSpec(train=spec), "
        "build_tokenizer()))\n"
    )
    there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert there == here


def test_second_prepare_reuses_the_cache(tmp_path, tokenizer, ftctl_home, monkeypatch):
    path = write_rows(tmp_path / "train.jsonl")
    first = prepare(path, tokenizer)
    assert not first.from_cache
    assert first.cache_dir == ftctl_home / "data-cache" / first.fingerprint

    import orchestrator.data.pipeline as pipeline

    def no_encoding(*args, **kwargs):
        raise AssertionError("rows were encoded again instead of loaded from the cache")

    monkeypatch.setattr(pipeline, "encode_rows", no_encoding)
    second = prepare(path, tokenizer)
    assert second.from_cache and second.cache_dir == first.cache_dir
    assert second.dataset["input_ids"] == first.dataset["input_ids"]
    assert second.stats == first.stats
    assert load_prepared(first.cache_dir)["labels"] == first.dataset["labels"]
    # Only the finished entry is left behind: no staging directories.
    assert [p.name for p in (ftctl_home / "data-cache").iterdir()] == [first.fingerprint]


def test_load_prepared_without_a_cache_says_to_prepare_first(tmp_path):
    with pytest.raises(DataError, match="run prepare_dataset first"):
        load_prepared(tmp_path / "nothing")


def test_hub_id_offline_names_the_id_and_the_fix(tokenizer, monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads these at import time, so set its constants too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"'someorg/no-such-data' \(split 'train'\).*download"):
        prepare("someorg/no-such-data", tokenizer)


@pytest.fixture
def fake_demo_writer(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stand-in for the tiny model's demo data writer that records its calls."""
    calls: list[Path] = []

    def write_demo_data(out_dir: Path) -> dict[str, Path]:
        calls.append(Path(out_dir))
        out = Path(out_dir) / "target_train.jsonl"
        out.write_text(json.dumps({"prompt": "shift ab=", "response": "bc"}) + "\n")
        return {"target_train": out}

    module = types.ModuleType("orchestrator.builtin.demo_data")
    module.write_demo_data = write_demo_data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orchestrator.builtin.demo_data", module)
    return calls


def test_builtin_demo_data_is_generated_once_when_missing(tokenizer, ftctl_home, fake_demo_writer):
    prepared = prepare("builtin:demo/target_train.jsonl", tokenizer)
    assert tokenizer.decode(prepared.dataset[0]["input_ids"]) == "<s>shift ab=bc</s>"
    assert (ftctl_home / "demo-data" / "target_train.jsonl").is_file()
    prepare("builtin:demo/target_train.jsonl", tokenizer)
    assert len(fake_demo_writer) == 1
    with pytest.raises(DataError, match=r"builtin:demo/nope\.jsonl is not a demo file.*target_train"):
        prepare("builtin:demo/nope.jsonl", tokenizer)


def test_concurrent_demo_requests_generate_once(ftctl_home, fake_demo_writer):
    from orchestrator.data.demo import ensure_demo_file

    target = ftctl_home / "demo-data" / "target_train.jsonl"
    threads = [threading.Thread(target=ensure_demo_file, args=(target,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_demo_writer) == 1 and target.is_file()


def test_importing_the_data_package_stays_light():
    script = ("import sys, orchestrator.data.pipeline\n"
              "print([m for m in ('torch', 'datasets', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
