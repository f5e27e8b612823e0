"""Content hashes of files (data fingerprints, checkpoint manifests)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path, memo_file: Path | None = None) -> str:
    """sha256 over every file's relative path and content hash under `root` (a model dir).

    File hashes are remembered in `memo_file` by (path, size, mtime), so a multi-GB base
    model is read once, not on every job."""
    import json
    import os

    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except ValueError:
            memo = {}
    digest = hashlib.sha256()
    changed = False
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(path)
            changed = True
        digest.update(f"{path.relative_to(root)}\0{memo[key]}\n".encode())
    if memo_file is not None and changed:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    return digest.hexdigest()
