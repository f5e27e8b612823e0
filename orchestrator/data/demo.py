"""Generate the built-in demo data (`builtin:demo/<file>`) on first use.

Several processes (the driver, Ray workers, two jobs started together) may ask for the demo
files at once, so generation runs under an exclusive file lock and every file appears by an
atomic rename: a reader never sees a half-written file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.data.errors import DataError
from orchestrator.spec.paths import demo_data_dir, ftctl_home


def ensure_demo_file(path: Path) -> Path:
    """Return `path` (a file in `demo_data_dir()`), generating the demo data if it is missing."""
    if path.is_file():
        return path
    demo_dir = demo_data_dir()
    demo_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = ftctl_home() / "demo-data.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another process may have generated the files while we waited for the lock.
            if not path.is_file():
                _generate_into(demo_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in demo_dir.iterdir() if p.is_file()))
        raise DataError(
            f"builtin:demo/{path.name} is not a demo file; use one of: {available}"
        )
    return path


def _generate_into(demo_dir: Path) -> None:
    # Imported here: the generator is only needed when demo data is actually missing.
    from orchestrator.builtin.demo_data import write_demo_data

    demo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-data-", dir=demo_dir.parent))
    try:
        written = write_demo_data(staging)
        for file in written.values():
            # Rename file by file: the demo dir may already hold other (valid) files.
            os.replace(file, demo_dir / Path(file).name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
