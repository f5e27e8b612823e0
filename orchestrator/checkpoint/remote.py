"""A copy of every committed checkpoint in remote storage, for resuming on a fresh machine.

`checkpoint.storage: <URI>` (s3://, gs://, file://, memory://, anything fsspec knows) names
where. Uploads run in one background thread, in order, so a save never waits on the
network, and a failed upload is reported instead of stopping training. Remote layout
mirrors the local one: `<uri>/step-<8 digits>/` with `manifest.json` uploaded last, so a
remote dir without a manifest is incomplete and never fetched.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from functools import partial
from pathlib import Path
from typing import Callable

from fsspec.core import url_to_fs

from orchestrator.checkpoint.store import _STEP_DIR, MANIFEST, CheckpointError, verify_checkpoint


class Mirror:
    """Copies committed checkpoints to `<uri>/<step dir name>/` in one background thread."""

    def __init__(self, uri: str, warn: Callable[[str], object] = print):
        self.uri = uri
        self.warn = warn
        self.fs, root = url_to_fs(uri)
        self.root = root.rstrip("/")
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
        self._thread.start()

    def upload(self, local_checkpoint: Path) -> None:
        """Queue a copy of a committed checkpoint; returns at once."""
        local_checkpoint = Path(local_checkpoint)
        self._enqueue(f"mirroring {local_checkpoint.name} to {self.uri}", partial(self._upload, local_checkpoint))

    def retain(self, keep: set[str]) -> None:
        """Queue, after earlier uploads, the deletion of remote step dirs not named in `keep`."""
        self._enqueue(f"deleting old checkpoints from {self.uri}", partial(self._retain, set(keep)))

    def wait(self) -> list[str]:
        """Block until every queued operation ran; the errors since the last wait."""
        self._queue.join()
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def close(self) -> None:
        """Wait for queued operations, then stop the thread."""
        if self._closed:
            return
        self.wait()
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def list_remote(self) -> list[str]:
        """Names of the remote step dirs, oldest first (complete or not)."""
        self.fs.invalidate_cache(self.root)  # another machine may have written since we last listed
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
        return sorted(n for n in names if _STEP_DIR.match(n))

    def fetch_latest(self, local_checkpoints: Path) -> Path | None:
        """Download the newest remote checkpoint that verifies; broken ones are skipped with a message."""
        names = self.list_remote()
        for i, name in enumerate(reversed(names)):
            try:
                return self._fetch(name, Path(local_checkpoints))
            except (CheckpointError, OSError) as err:
                older = names[-i - 2] if i + 1 < len(names) else None
                self.warn(f"{err}; " + (f"trying {older} instead" if older else "no older remote checkpoint to fall back to"))
        return None

    def _enqueue(self, what: str, operation: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError(f"the mirror to {self.uri} is closed; create a new Mirror to upload again")
        self._queue.put((what, operation))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                what, operation = item
                try:
                    operation()
                except Exception as err:  # any backend error: report it, keep the thread and training alive
                    message = f"{what} failed ({type(err).__name__}: {err}); the local checkpoints are unaffected"
                    with self._lock:
                        self._errors.append(message)
                    self.warn(message)
            finally:
                self._queue.task_done()

    def _upload(self, local: Path) -> None:
        files = json.loads((local / MANIFEST).read_text())["files"]
        remote = f"{self.root}/{local.name}"
        if self.fs.exists(remote):
            self._remove(remote)
        for name in sorted(files):
            target = f"{remote}/{Path(name).as_posix()}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local / name), target)
        self.fs.makedirs(remote, exist_ok=True)
        self.fs.put_file(str(local / MANIFEST), f"{remote}/{MANIFEST}")

    def _retain(self, keep: set[str]) -> None:
        for name in self.list_remote():
            if name not in keep:
                self._remove(f"{self.root}/{name}")

    def _remove(self, remote: str) -> None:
        # Manifest first: a dir caught half-deleted then reads as incomplete, never as complete.
        if self.fs.exists(f"{remote}/{MANIFEST}"):
            self.fs.rm(f"{remote}/{MANIFEST}")
        self.fs.rm(remote, recursive=True)

    def _fetch(self, name: str, local_checkpoints: Path) -> Path:
        remote = f"{self.root}/{name}"
        if not self.fs.exists(f"{remote}/{MANIFEST}"):
            raise CheckpointError(f"remote checkpoint {name} is incomplete (manifest missing)")
        tmp = local_checkpoints / f".fetch-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self.fs.get(f"{remote}/", f"{tmp}/", recursive=True)
            verify_checkpoint(tmp)
        except CheckpointError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(str(err).replace(f"checkpoint {tmp.name}", f"remote checkpoint {name}")) from None
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(f"remote checkpoint {name} could not be downloaded ({err})") from err
        final = local_checkpoints / name
        if final.exists():  # a local copy that did not verify; the remote one did
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
