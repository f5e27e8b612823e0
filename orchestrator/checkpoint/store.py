"""Checkpoints that are trusted only when complete.

Layout: `<run>/checkpoints/step-<8 digits>/` holding the files of one save and a
`manifest.json` (file sizes and sha256, step, spec hash) written last. A save goes to a
temp dir, every file is fsynced, the manifest is written, and the dir is renamed into
place, so a crash never leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orchestrator.digest import sha256_file

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
REPLACED = ".replaced-"  # a committed checkpoint moved aside while its step is saved again
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(Exception):
    """No usable checkpoint, or one that fails verification."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    spec_hash: str


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def staging_dir(checkpoints: Path, step: int, attempt: str = "") -> Path:
    """Where the ranks write a checkpoint before it is committed (one per worker-group
    attempt, so a restart never mixes its files with a crashed attempt's)."""
    return checkpoints / (f".tmp-{step_dir_name(step)}" + (f"-{attempt}" if attempt else ""))


def commit_checkpoint(staging: Path, step: int, spec_hash: str, keep_last: int | None = None,
                      metrics: dict[str, float] | None = None, best: Best | tuple[Best, ...] | None = None) -> Path:
    """Fsync the staged files, write the manifest last, rename into place, apply retention."""
    staged = sorted(p for p in staging.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(staged)))) as pool:
        digests = list(pool.map(_fsync_and_hash, staged))
    files = {str(f.relative_to(staging)): {"bytes": f.stat().st_size, "sha256": d} for f, d in zip(staged, digests)}
    manifest = {"step": step, "spec_hash": spec_hash, "metrics": metrics or {}, "files": files}
    tmp = staging / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    fsync_file(tmp)
    os.replace(tmp, staging / MANIFEST)
    final = staging.parent / step_dir_name(step)
    replaced = staging.parent / f"{REPLACED}{final.name}"
    if final.exists():
        # A re-save of the same step (a restart that redoes it) replaces the old one. The old
        # one is moved aside first, so a crash leaves it recoverable (restore_replaced).
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_dir(staging.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    if keep_last is not None:
        apply_retention(staging.parent, keep_last, best)
    return final


def restore_replaced(checkpoints: Path) -> list[Path]:
    """Put back a checkpoint moved aside by a re-save that crashed before its new copy was
    renamed into place; drop one whose replacement did land. Returns what was put back."""
    restored = []
    for aside in sorted(checkpoints.glob(REPLACED + "step-*")):
        final = checkpoints / aside.name[len(REPLACED):]
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
            restored.append(final)
    return restored


def verify_checkpoint(path: Path, require: tuple[str, ...] = ()) -> CheckpointInfo:
    """Check the manifest and every file's size and hash, and that the `require`d files are
    among them; raise CheckpointError saying what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path.name} is incomplete (manifest missing)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        step = int(manifest["step"])
        if not isinstance(files, dict) or not all(
                isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("sha256"), str)
                and _inside(name) for name, meta in files.items()):
            raise TypeError("files is not a map of relative names to sizes and hashes")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path.name} has an unreadable manifest") from None
    for name in require:
        if name not in files:
            raise CheckpointError(f"checkpoint {path.name} has no {name}")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path.name} is missing {name}")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"checkpoint {path.name}: {name} has {f.stat().st_size} bytes, "
                                  f"manifest says {meta['bytes']} (truncated or overwritten)")
    # Hashing is the slow part; hashlib releases the GIL, so files are hashed in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(files)))) as pool:
        digests = dict(zip(files, pool.map(lambda name: sha256_file(path / name), files)))
    for name, meta in files.items():
        if digests[name] != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path.name}: {name} does not match its sha256 (corrupt)")
    return CheckpointInfo(path=path, step=step, spec_hash=str(manifest.get("spec_hash", "")))


def verify_training_checkpoint(path: Path) -> CheckpointInfo:
    """verify_checkpoint for a training checkpoint: it must also hold a readable trainer state."""
    info = verify_checkpoint(path, require=(TRAINER_STATE,))
    read_trainer_state(path)
    return info


def read_trainer_state(path: Path) -> dict:
    """A checkpoint's trainer_state.json (step, data position, spec, ...)."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path.name}: {TRAINER_STATE} is unreadable ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("spec"), dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {path.name}: {TRAINER_STATE} is not a trainer state (no step and spec)")
    return state


def _inside(name: object) -> bool:
    """A manifest entry names a file inside the checkpoint, never outside it."""
    return isinstance(name, str) and bool(name) and not name.startswith("/") and ".." not in Path(name).parts


def step_of(path: Path) -> int:
    """The step a checkpoint dir is named for."""
    return int(_STEP_DIR.match(path.name).group(1))


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Committed-looking checkpoint dirs, oldest first (not yet verified)."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def latest_complete_checkpoint(checkpoints: Path, warn=print, verify=verify_checkpoint) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a message."""
    candidates = list_checkpoints(checkpoints)
    for i, path in enumerate(reversed(candidates)):
        try:
            return verify(path)
        except CheckpointError as err:
            older = candidates[len(candidates) - i - 2].name if len(candidates) - i - 2 >= 0 else None
            warn(f"{err}; " + (f"trying {older} instead" if older else "no older checkpoint to fall back to"))
    return None


def apply_retention(checkpoints: Path, keep_last: int, best: Best | tuple[Best, ...] | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and, for each `best` rule, the one
    with the best value of that metric in its manifest; returns what was deleted."""
    found = list_checkpoints(checkpoints)
    keep = set(found[max(0, len(found) - keep_last):])
    for rule in (best if isinstance(best, tuple) else (best,) if best is not None else ()):
        chosen = best_checkpoint(found, rule)
        if chosen is not None:
            keep.add(chosen)
    doomed = [p for p in found if p not in keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


@dataclass(frozen=True)
class Best:
    """Which checkpoint is best: the metric recorded in manifests, and its direction."""

    metric: str
    mode: str  # "min" or "max"


def best_checkpoint(paths: list[Path], best: Best) -> Path | None:
    """The checkpoint whose manifest has the best value of the metric (the newest on ties)."""
    scored = []
    for path in paths:
        try:
            value = json.loads((path / MANIFEST).read_text())["metrics"][best.metric]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        scored.append((value if best.mode == "max" else -value, path.name, path))
    return max(scored)[2] if scored else None


def _fsync_and_hash(path: Path) -> str:
    fsync_file(path)
    return sha256_file(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fsync_file(path)
    except OSError:  # some filesystems refuse fsync on directories; the rename still stands
        pass
