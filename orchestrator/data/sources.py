"""Where rows come from, each with the row number a user would look up.

Row numbers are 1-based and follow the file: the line number for JSON Lines, the line number
counting the header for CSV, the item index + 1 for a JSON array, parquet file or hub split.
A row that cannot even be read (bad JSON, not an object, bad UTF-8) still comes out, carrying
its problem, so the caller decides between stopping and skipping.
"""

from __future__ import annotations

import csv
import glob as globmod
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from orchestrator.data.demo import ensure_demo_file
from orchestrator.data.errors import DataError
from orchestrator.digest import sha256_file
from orchestrator.spec.paths import DATA_SUFFIXES, is_glob, locate_data

if TYPE_CHECKING:
    from orchestrator.spec.models import DataSourceSpec


@dataclass(frozen=True)
class SourceRow:
    number: int
    """1-based row number as found in the file (see the module docstring)."""

    values: dict[str, Any] | None
    """Column -> value; None when the row could not be read."""

    problem: str | None = None
    """Why the row could not be read (only when `values` is None)."""


@dataclass(frozen=True)
class OpenedSource:
    name: str
    """How messages name the source: the path as written in the job file, or the hub id."""

    content_id: str
    """Identifies the exact data: a sha256 of the file, or hub id + split + dataset revision."""

    read_rows: Callable[[], Iterator[SourceRow]]
    """Yields the rows in file order; can be called again to read them again."""


def open_source(source: DataSourceSpec) -> OpenedSource:
    """Resolve `source.path` (local file, glob of local files, `builtin:demo/...` or hub id)
    into readable rows."""
    if source.files is not None or is_glob(source.path):
        return _open_files(source.path, snapshot_files(source))
    location = locate_data(source.path)
    if location.kind == "hub":
        return _open_hub(source.path, source.split)
    path = Path(location.value)
    if location.kind == "demo":
        path = ensure_demo_file(path)
    return _open_file(source.path, path)


def snapshot_files(source: DataSourceSpec) -> list[str]:
    """The files `source` reads: its fixed `files`, else what its glob matches now (name order)."""
    if source.files is not None:
        if not source.files:
            raise DataError(f"{source.path}: the list of files is empty; nothing to read")
        return list(source.files)
    pattern = os.path.expanduser(source.path)
    matches = sorted(m for m in globmod.glob(pattern, recursive=True) if Path(m).is_file())
    if not matches:
        raise DataError(f"no data file matches {source.path} (looked from {Path.cwd()}); add data or fix the "
                        "glob in the job file")
    suffixes = sorted({Path(m).suffix.lower() for m in matches})
    if len(suffixes) > 1:
        raise DataError(f"{source.path} matches files of several formats ({', '.join(suffixes)}); narrow the glob "
                        "to one format")
    return [str(Path(m).resolve()) for m in matches]


def _open_files(name: str, files: list[str]) -> OpenedSource:
    """Several files read one after the other; row numbers follow each file, named in messages."""
    opened = [_open_file(f, Path(f)) for f in files]
    # The contents in order, not where the files lie (the fingerprint leaves paths out too).
    content = hashlib.sha256("\n".join(o.content_id for o in opened).encode()).hexdigest()

    def rows() -> Iterator[SourceRow]:
        for part in opened:
            yield from part.read_rows()

    return OpenedSource(name=f"{name} ({len(files)} file{'s' if len(files) != 1 else ''})",
                        content_id=f"files:{content}", read_rows=rows)


def _open_file(name: str, path: Path) -> OpenedSource:
    if not path.exists():
        raise DataError(
            f"data file {name} does not exist (looked at {path.resolve()}); fix the path in "
            "the job file (relative paths are taken from the directory ftctl runs in)"
        )
    if not path.is_file():
        raise DataError(f"{name} is a directory, not a data file; point the path at a "
                        f"{', '.join(DATA_SUFFIXES)} file")
    readers: dict[str, Callable[[Path], Iterator[SourceRow]]] = {
        ".jsonl": _jsonl_rows,
        ".json": _json_rows,
        ".csv": _csv_rows,
        ".parquet": _parquet_rows,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{name} has the unsupported suffix {path.suffix or '(none)'!r}; convert it to "
            f"one of {', '.join(DATA_SUFFIXES)}"
        )
    return OpenedSource(name=name, content_id=f"file:{sha256_file(path)}",
                        read_rows=lambda: _with_file_errors(name, reader(path)))


class _UnreadableFile(Exception):
    """The whole file is unusable; the message continues a sentence that starts with its name."""


def _with_file_errors(name: str, rows: Iterator[SourceRow]) -> Iterator[SourceRow]:
    # Whole-file failures (corrupt parquet, broken CSV quoting) cannot be skipped row by row.
    try:
        yield from rows
    except _UnreadableFile as exc:
        raise DataError(f"{name} {exc}") from exc
    except (OSError, ValueError, csv.Error) as exc:
        raise DataError(f"{name} could not be read: {exc}; check that the file is complete "
                        "and in the format its suffix says") from exc


def _parse_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {_json_kind(value)}"
    return value, None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _jsonl_rows(path: Path) -> Iterator[SourceRow]:
    # Read bytes and decode line by line, so one bad line is one bad row, not a crashed read.
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield SourceRow(number, None, "not valid UTF-8")
                continue
            if not text.strip():
                continue  # blank lines (often a trailing newline) are not rows
            values, problem = _parse_object(text)
            yield SourceRow(number, values, problem)


def _json_rows(path: Path) -> Iterator[SourceRow]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several top-level values: the file is JSON Lines with a .json suffix.
            yield from _jsonl_rows(path)
            return
        raise _UnreadableFile(f"is not valid JSON ({exc.msg} at line {exc.lineno} column "
                              f"{exc.colno}); fix the file or save it as JSON Lines") from exc
    if isinstance(document, dict):
        # One object alone is a one-row JSON Lines file.
        yield SourceRow(1, document)
        return
    if not isinstance(document, list):
        raise _UnreadableFile(f"holds {_json_kind(document)}; a .json data file must hold an "
                              "array of row objects (or one object per line)")
    for index, item in enumerate(document):
        if isinstance(item, dict):
            yield SourceRow(index + 1, item)
        else:
            yield SourceRow(index + 1, None, f"expected a JSON object, got {_json_kind(item)}")


def _csv_rows(path: Path) -> Iterator[SourceRow]:
    # The csv module (not pyarrow) because it knows where each record starts even when a
    # quoted cell spans lines, as multi-line responses do; cells stay strings.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents exceed the 128 KiB default
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        record_start = reader.line_num + 1
        for cells in reader:
            number, record_start = record_start, reader.line_num + 1
            if not cells:
                continue  # blank line
            if len(cells) != len(header):
                yield SourceRow(number, None,
                                f"has {len(cells)} cells but the header has {len(header)}")
                continue
            yield SourceRow(number, dict(zip(header, cells)))


def _parquet_rows(path: Path) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for values in batch.to_pylist():
            number += 1
            yield SourceRow(number, values)


def _open_hub(dataset_id: str, split: str) -> OpenedSource:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, missing split, gated: all need the same fix
        raise DataError(
            f"could not load hub dataset {dataset_id!r} (split {split!r}): "
            f"{type(exc).__name__}: {exc}. This machine may be offline or the id may be wrong; "
            f"download the dataset to a local .jsonl or .parquet file and point the path at it"
        ) from exc

    def rows() -> Iterator[SourceRow]:
        for index, values in enumerate(dataset):
            yield SourceRow(index + 1, dict(values))

    # The datasets fingerprint of a downloaded split follows the revision it was built from.
    return OpenedSource(name=dataset_id, content_id=f"hub:{dataset_id}:{split}:{dataset._fingerprint}",
                        read_rows=rows)
