"""The manifest of a tiny base build: its recipe version and each file's size and sha256.

The package ships one build (``orchestrator/models/tiny/shipped/``) with its manifest, so a
fresh machine copies 2 MB instead of pre-training for two minutes. Pure Python: no torch.

    {"model_id": "builtin:tiny-base", "recipe_version": 1,
     "files": {"model.safetensors": {"bytes": 2234952, "sha256": "..."}, ...}}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orchestrator.digest import sha256_file

MANIFEST_FILE = "manifest.json"


class UnusableBuild(Exception):
    """A shipped build cannot be installed; the message says why."""


def write_manifest(directory: Path, model_id: str, recipe_version: int) -> dict:
    """Describe every file of the build in ``directory`` in its ``manifest.json``; return it."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {"model_id": model_id, "recipe_version": recipe_version, "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict:
    """The manifest of the build in ``directory``; UnusableBuild if there is none or it is unreadable."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise UnusableBuild(f"{directory} holds no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UnusableBuild(f"{path} is unreadable: {err}") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("recipe_version"), int)
            and isinstance(manifest.get("files"), dict) and manifest["files"]):
        raise UnusableBuild(f"{path} lacks its recipe_version or its list of files")
    return manifest


def copy_verified(source: Path, dest: Path, recipe_version: int) -> dict:
    """Copy the build in ``source`` into the directory ``dest`` and check the copies against
    the manifest; return the manifest.

    Raises UnusableBuild, saying why, when the manifest is missing, names another recipe
    version, or a file is missing or differs from its digest (``dest`` may then hold part
    of the copy).
    """
    manifest = read_manifest(source)
    if manifest["recipe_version"] != recipe_version:
        raise UnusableBuild(f"{source} holds recipe v{manifest['recipe_version']}, not v{recipe_version}")
    for name, expected in manifest["files"].items():
        if not (source / name).is_file():
            raise UnusableBuild(f"{source} lacks {name}, which its manifest lists")
        # The copy is what gets checked: it is what will be loaded.
        shutil.copyfile(source / name, dest / name)
        if sha256_file(dest / name) != expected["sha256"]:
            raise UnusableBuild(f"{source / name} does not match its sha256 in the manifest (damaged or edited)")
    return manifest
