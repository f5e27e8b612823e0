"""Prepare a data source once, cache it, and let every worker load the same rows.

``prepare_dataset`` reads the source, checks and encodes every row (`formats`), optionally
packs (`packing`), and saves the result under ``ftctl_home()/data-cache/<fingerprint>/``. The
directory appears by an atomic rename only when complete (rows and ``stats.json``), so a
crashed or concurrent preparation never leaves a half-written cache that looks usable. When the
fingerprint's directory already exists, it is loaded instead of recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.data.collate import collate
from orchestrator.data.errors import DataError
from orchestrator.data.fingerprint import data_fingerprint
from orchestrator.data.formats import IGNORE_INDEX, Example, RowProblem, encode_rows
from orchestrator.data.packing import pack_examples
from orchestrator.data.sources import OpenedSource, SourceRow, open_source
from orchestrator.spec.paths import ftctl_home

if TYPE_CHECKING:
    import datasets

    from orchestrator.spec.models import DataSourceSpec, DataSpec

__all__ = ["DataStats", "PreparedData", "collate", "data_cache_root", "load_prepared",
           "load_stats", "prepare_dataset"]

log = logging.getLogger(__name__)

MAX_SKIPPED_EXAMPLES = 5
"""How many skipped-row messages the stats keep for the report."""

_CHUNK_ROWS = 1024  # rows tokenised per batched tokenizer call
_STATS_FILE = "stats.json"


@dataclass
class DataStats:
    rows_read: int = 0
    """Rows looked at (blank lines excluded), good or bad, up to the last row used."""
    rows_used: int = 0
    """Rows that became examples (at most max_examples)."""
    rows_skipped: int = 0
    """Malformed rows dropped with on_bad_row: skip."""
    skipped_examples: list[str] = field(default_factory=list)
    """The first few skipped rows, as "<file> row <n>: <what is wrong>"."""
    truncated: int = 0
    """Used examples cut to max_seq_len."""
    packed_rows: int = 0
    """Rows after packing (0 when packing is off)."""
    tokens: int = 0
    """Tokens in the prepared dataset (padding excluded; both sides of preference pairs)."""
    loss_tokens: int = 0
    """Tokens that carry a loss label (LM formats; both sides of preference pairs)."""
    max_label: int | None = None
    """Largest class index (classification); the caller checks it against num_labels."""


@dataclass
class PreparedData:
    dataset: datasets.Dataset
    """Columns: input_ids and labels (LM formats) or label (classification); position_ids when
    packed; preference: input_ids and labels of the chosen side, rejected_input_ids and
    rejected_labels of the rejected one."""
    fingerprint: str
    cache_dir: Path
    stats: DataStats
    from_cache: bool = False
    """True when an earlier preparation with the same fingerprint was reused."""


def data_cache_root() -> Path:
    return ftctl_home() / "data-cache"


def prepare_dataset(source: DataSourceSpec, data: DataSpec, tokenizer: Any) -> PreparedData:
    """Read, check, tokenise (and pack) `source` under the settings of `data`, cached by fingerprint."""
    if source.format == "classification" and data.packing:
        raise DataError("packing does not apply to classification data (one label per example); "
                        "set data.packing: false")
    if source.format == "preference" and data.packing:
        raise DataError("packing does not apply to preference data (each chosen answer is compared "
                        "with its rejected answer as a whole example); set data.packing: false")
    opened = open_source(source)
    fingerprint = data_fingerprint(opened.content_id, source, data, tokenizer)
    cache_dir = data_cache_root() / fingerprint
    if (cache_dir / _STATS_FILE).is_file():
        log.info("data %s: reusing prepared rows in %s", opened.name, cache_dir)
        return PreparedData(load_prepared(cache_dir), fingerprint, cache_dir,
                            load_stats(cache_dir), from_cache=True)

    examples, stats = _read_examples(opened, source, data, tokenizer)
    columns = _to_columns(examples, source.format, data, stats)
    _write_cache(columns, stats, cache_dir)
    log.info("data %s: %d rows used, %d skipped, %d truncated; cached in %s", opened.name,
             stats.rows_used, stats.rows_skipped, stats.truncated, cache_dir)
    return PreparedData(load_prepared(cache_dir), fingerprint, cache_dir, stats)


def load_prepared(cache_dir: Path) -> datasets.Dataset:
    """Open a dataset written by `prepare_dataset` (memory-mapped, so cheap in every worker)."""
    import datasets

    if not (Path(cache_dir) / _STATS_FILE).is_file():
        raise DataError(f"no prepared data in {cache_dir}; run prepare_dataset first (the driver "
                        "does this before starting workers)")
    return datasets.load_from_disk(str(cache_dir))


def load_stats(cache_dir: Path) -> DataStats:
    """The `DataStats` saved next to a prepared dataset."""
    return DataStats(**json.loads((Path(cache_dir) / _STATS_FILE).read_text()))


# --------------------------------------------------------------------------- reading


def _chunks(rows: Iterator[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _read_examples(
    opened: OpenedSource, source: DataSourceSpec, data: DataSpec, tokenizer: Any
) -> tuple[list[Example], DataStats]:
    stats = DataStats()
    examples: list[Example] = []
    limit = source.max_examples
    chunk_size = min(_CHUNK_ROWS, limit) if limit else _CHUNK_ROWS
    for chunk in _chunks(opened.read_rows(), chunk_size):
        readable = [row.values for row in chunk if row.values is not None]
        encoded = iter(encode_rows(readable, source.format, source.columns, tokenizer,
                                   data.max_seq_len))
        # Walk the chunk in file order, so "error" reports the first bad row of the file.
        for row in chunk:
            outcome = RowProblem(row.problem) if row.values is None else next(encoded)
            stats.rows_read += 1
            if isinstance(outcome, RowProblem):
                message = f"{opened.name} row {row.number}: {outcome}"
                if data.on_bad_row == "error":
                    raise DataError(f"{message}; fix the row, or set data.on_bad_row: skip to "
                                    "drop malformed rows")
                stats.rows_skipped += 1
                if len(stats.skipped_examples) < MAX_SKIPPED_EXAMPLES:
                    stats.skipped_examples.append(message)
                continue
            examples.append(outcome)
            stats.rows_used += 1
            stats.truncated += outcome.truncated
            if limit is not None and stats.rows_used >= limit:
                return examples, stats
    if not examples:
        if stats.rows_read == 0:
            raise DataError(f"{opened.name} has no rows; point the path at a file with data")
        raise DataError(
            f"{opened.name}: none of its {stats.rows_read} rows is usable (first problem: "
            f"{stats.skipped_examples[0]}); fix the data, or the column names under columns: "
            "in the job file")
    return examples, stats


def _to_columns(
    examples: list[Example], fmt: str, data: DataSpec, stats: DataStats
) -> dict[str, list[Any]]:
    if fmt == "classification":
        labels = [int(example.label) for example in examples]  # type: ignore[arg-type]
        stats.max_label = max(labels)
        stats.tokens = sum(len(example.input_ids) for example in examples)
        return {"input_ids": [example.input_ids for example in examples], "label": labels}
    if fmt == "preference":
        columns = {"input_ids": [e.input_ids for e in examples], "labels": [e.labels or [] for e in examples],
                   "rejected_input_ids": [e.rejected_input_ids or [] for e in examples],
                   "rejected_labels": [e.rejected_labels or [] for e in examples]}
        stats.tokens = sum(len(ids) for key in ("input_ids", "rejected_input_ids") for ids in columns[key])
        stats.loss_tokens = sum(t != IGNORE_INDEX for key in ("labels", "rejected_labels")
                                for labels in columns[key] for t in labels)
        return columns
    if data.packing:
        rows = list(pack_examples(((e.input_ids, e.labels or []) for e in examples),
                                  data.max_seq_len))
        stats.packed_rows = len(rows)
        columns = {key: [row[key] for row in rows] for key in ("input_ids", "labels", "position_ids")}
    else:
        columns = {"input_ids": [e.input_ids for e in examples],
                   "labels": [e.labels or [] for e in examples]}
    stats.tokens = sum(len(ids) for ids in columns["input_ids"])
    stats.loss_tokens = sum(t != IGNORE_INDEX for labels in columns["labels"] for t in labels)
    return columns


# --------------------------------------------------------------------------- caching


def _write_cache(columns: dict[str, list[Any]], stats: DataStats, cache_dir: Path) -> None:
    import datasets

    tokens = datasets.Sequence(datasets.Value("int32"))  # vocabularies fit int32: half of int64 on disk
    features = datasets.Features({
        name: datasets.Value("int64") if name == "label" else tokens for name in columns})
    dataset = datasets.Dataset.from_dict(columns, features=features)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    try:
        dataset.save_to_disk(str(staging))
        # stats.json goes in last: it is the mark of a complete cache entry.
        (staging / _STATS_FILE).write_text(json.dumps(asdict(stats), indent=2))
        try:
            os.rename(staging, cache_dir)
        except OSError:
            if not (cache_dir / _STATS_FILE).is_file():
                raise
            # Another process prepared the same data first; its copy is identical.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------- replay


def mix_replay(train: PreparedData, replay: list[PreparedData], ratio: float, seed: int) -> PreparedData:
    """The training set with replay rows added so that `ratio` of it comes from `replay`.

    round(ratio / (1 - ratio) x len(train)) rows are drawn from the replay sets pooled
    together, seeded, without repetition while the pool lasts. The mix is cached by a
    fingerprint of its parts, so a resume sees exactly the same rows."""
    import hashlib
    import random

    import datasets

    key = json.dumps({"train": train.fingerprint, "replay": [r.fingerprint for r in replay], "ratio": ratio,
                      "seed": seed}, sort_keys=True)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    cache_dir = data_cache_root() / fingerprint
    if (cache_dir / _STATS_FILE).is_file():
        return PreparedData(load_prepared(cache_dir), fingerprint, cache_dir, load_stats(cache_dir), from_cache=True)
    pool = datasets.concatenate_datasets([r.dataset for r in replay])
    if len(pool) == 0:
        raise DataError("data.replay.sources hold no usable rows")
    wanted = round(ratio / (1 - ratio) * len(train.dataset))
    rng = random.Random(seed * 7_919 + 17)
    picks: list[int] = []
    while len(picks) < wanted:
        order = list(range(len(pool)))
        rng.shuffle(order)
        picks.extend(order[: wanted - len(picks)])
    mixed = datasets.concatenate_datasets([train.dataset, pool.select(picks)])
    columns = {name: mixed[name] for name in mixed.column_names}
    stats = DataStats(**{**asdict(train.stats), "rows_used": len(mixed),
                         "tokens": sum(len(ids) for ids in columns["input_ids"])})
    _write_cache(columns, stats, cache_dir)
    return PreparedData(load_prepared(cache_dir), fingerprint, cache_dir, stats)
