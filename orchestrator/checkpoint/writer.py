"""Checkpoint saves that block training only for a snapshot.

Each rank hands `save` the files it owns, as functions that write a snapshot taken at
the step boundary. A background thread per rank writes and fsyncs them into the staging
dir and then drops a `.done-rank<N>` marker. Rank 0's thread waits for every rank's
marker, removes the markers, hashes the files into the manifest, renames the dir into
place, applies retention and hands the checkpoint to the remote mirror. A crash at any
moment leaves at worst a staging dir, which nothing ever takes for a checkpoint.

One save is in flight per rank: the next `save` first waits for the previous one. Every
rank makes the same sequence of saves, so each save has a staging dir of its own, named by
the attempt and the save's number in that sequence: no marker of one save can ever land in
another's dir. A save of a step this writer already saved (in flight or committed) is a
no-op, so a step that is both a periodic checkpoint and the final one is written once.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from orchestrator.checkpoint.store import (Best, CheckpointError, commit_checkpoint, fsync_file, restore_replaced,
                                           staging_dir, step_dir_name)


FileWriter = Callable[[Path], None]
DONE = ".done-rank"
SAVE = "-save"
# Fault injection for tests and operators' drills: rank 0 sleeps this long before each commit,
# as it does when it hashes a multi-gigabyte checkpoint.
COMMIT_DELAY_ENV = "FTCTL_FAILPOINT_COMMIT_DELAY_S"


class CheckpointWriter:
    def __init__(self, checkpoints: Path, rank: int, world: int, attempt: str, spec_hash: str, keep_last: int,
                 best: Best | tuple[Best, ...] | None = None, mirror=None, warn=print, timeout_s: float = 1800.0):
        self.checkpoints, self.rank, self.world, self.attempt = checkpoints, rank, world, attempt
        self.spec_hash, self.keep_last, self.best, self.mirror, self.warn = spec_hash, keep_last, best, mirror, warn
        self.timeout_s = timeout_s
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.committed: list[Path] = []
        self._saved_steps: set[int] = set()  # one per save started: its size numbers the next save
        self.mirror_errors: list[str] = []
        self.last_blocking_s = 0.0

    def saved(self, step: int) -> bool:
        """Whether this writer already saved `step` (the save may still be in flight)."""
        return step in self._saved_steps

    def staging(self, step: int) -> Path:
        """The staging dir of the next save, of `step` (created on first use)."""
        path = staging_dir(self.checkpoints, step, f"{self.attempt}{SAVE}{len(self._saved_steps):05d}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_stale_staging(self) -> list[Path]:
        """Rank 0, at start: staging dirs of earlier attempts are leftovers of a crash. A
        checkpoint whose re-save was interrupted between its two renames is put back."""
        if not self.checkpoints.is_dir():
            return []
        restore_replaced(self.checkpoints)
        mine = re.compile(r"^\.tmp-step-\d{8}-" + re.escape(self.attempt) + re.escape(SAVE) + r"\d{5}$")
        stale = [p for p in self.checkpoints.glob(".tmp-*") if not mine.match(p.name)]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def save(self, step: int, files: dict[str, FileWriter], metrics: dict[str, float] | None = None,
             blocking: bool = False) -> None:
        started = time.perf_counter()
        self.wait()
        if self.saved(step):  # e.g. a gate tripped on a checkpoint step: the final save is that one
            self.last_blocking_s = time.perf_counter() - started
            return
        staging = self.staging(step)
        self._saved_steps.add(step)
        self._thread = threading.Thread(target=self._run, args=(step, staging, files, dict(metrics or {})),
                                        name=f"checkpoint-{step}", daemon=True)
        self._thread.start()
        if blocking:
            self.wait()
        self.last_blocking_s = time.perf_counter() - started

    def wait(self) -> None:
        """Block until this rank's last save is on disk (and, on rank 0, committed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise CheckpointError(f"saving a checkpoint failed: {type(err).__name__}: {err}") from err

    def _run(self, step: int, staging: Path, files: dict[str, FileWriter], metrics: dict[str, float]) -> None:
        try:
            for name, write in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                write(target)
                fsync_file(target)
            marker = staging / f"{DONE}{self.rank:05d}"
            # Synced through the descriptor that created it: once the marker exists, rank 0 may
            # commit at any moment, removing the marker and renaming the staging dir, so it
            # must not be opened again by name.
            with open(marker, "w") as f:
                os.fsync(f.fileno())
            if self.rank == 0:
                self._commit(step, staging, metrics)
        except BaseException as err:  # reported by wait() in the training thread
            self._error = err

    def _commit(self, step: int, staging: Path, metrics: dict[str, float]) -> None:
        delay = os.environ.get(COMMIT_DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        markers = [staging / f"{DONE}{r:05d}" for r in range(self.world)]
        deadline = time.monotonic() + self.timeout_s
        while not all(m.exists() for m in markers):
            if time.monotonic() > deadline:
                missing = [r for r, m in enumerate(markers) if not m.exists()]
                raise TimeoutError(f"ranks {missing} did not finish writing {step_dir_name(step)} "
                                   f"within {self.timeout_s:g}s")
            time.sleep(0.01)
        for m in markers:
            m.unlink()
        if self.mirror is not None:  # earlier uploads finish before local retention may delete their source
            self.mirror_errors += self.mirror.wait()
        final = commit_checkpoint(staging, step, self.spec_hash, self.keep_last, metrics, self.best)
        self.committed.append(final)
        if self.mirror is not None:
            self.mirror.upload(final)
            kept = {p.name for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith("step-")}
            self.mirror.retain(kept)
