"""Where a model or data path points: builtin, a local file/dir, or a hub id.

Kept free of torch/datasets so that `ftctl validate` stays fast.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BUILTIN_MODEL = "builtin:tiny-base"
DEMO_PREFIX = "builtin:demo/"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# The built-in tiny base model's source tasks (orchestrator/builtin/tasks.py generates them):
# `builtin:demo/source_<task>.jsonl`, `replay_<task>.jsonl` and `mc_<task>.jsonl` are named after them.
SOURCE_TASKS: tuple[str, ...] = ("arithmetic", "reversal", "sorting", "kv_recall")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Location:
    kind: Literal["builtin", "demo", "local", "hub"]
    value: str  # the resolved local path, builtin name, or hub id


def ftctl_home() -> Path:
    """Root of ftctl's local state: `$FTCTL_HOME` or `~/.cache/ftctl` (the built-in model, demo
    data, baselines, the controller's store, ftctl's Ray head record)."""
    env = os.environ.get("FTCTL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftctl"


def demo_data_dir() -> Path:
    return ftctl_home() / "demo-data"


def locate_model(path: str) -> Location:
    if path == BUILTIN_MODEL:
        return Location("builtin", path)
    expanded = Path(os.path.expanduser(path))
    if expanded.exists() or path.startswith((".", "/", "~")) or not _HUB_ID.match(path):
        return Location("local", str(expanded))
    return Location("hub", path)


def is_glob(path: str) -> bool:
    """A data path naming several local files by a pattern (`data/nightly/*.jsonl`)."""
    return not path.startswith("builtin:") and any(c in path for c in "*?[")


def locate_data(path: str) -> Location:
    if path.startswith(DEMO_PREFIX):
        return Location("demo", str(demo_data_dir() / path[len(DEMO_PREFIX):]))
    expanded = Path(os.path.expanduser(path))
    looks_local = (
        expanded.exists()
        or path.startswith((".", "/", "~"))
        or path.lower().endswith(DATA_SUFFIXES)
        or not _HUB_ID.match(path)
    )
    return Location("local", str(expanded)) if looks_local else Location("hub", path)


def demo_file_names() -> list[str]:
    """Files that `ftctl demo-data` writes (and `builtin:demo/<file>` can name)."""
    fixed = ["target_train.jsonl", "target_eval.jsonl", "increment_train.jsonl", "increment_eval.jsonl",
             "classify_train.jsonl", "classify_eval.jsonl", "text_train.jsonl", "alpaca_train.jsonl",
             "sharegpt_train.jsonl", "preference_train.jsonl", "preference_eval.jsonl"]
    return fixed + [f"{kind}_{task}.jsonl" for kind in ("source", "replay", "mc") for task in SOURCE_TASKS]


def absolute_paths(spec: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Local paths made absolute from `cwd`, so a stored job means the same files wherever
    and whenever it runs (the controller does not run in the submitter's directory)."""
    out = copy.deepcopy(spec)

    def anchored(path: str) -> str:
        return path if os.path.isabs(os.path.expanduser(path)) else str(cwd / path)

    data = out["data"]
    sources = [data["train"], data.get("eval"), *(data.get("replay") or {}).get("sources", []),
               *(out.get("forgetting") or {}).get("tasks", [])]
    for source in sources:
        if source and source.get("path") and locate_data(source["path"]).kind == "local":
            source["path"] = anchored(source["path"])
    for task in (out.get("forgetting") or {}).get("tasks", []):
        if task.get("fewshot_path") and locate_data(task["fewshot_path"]).kind == "local":
            task["fewshot_path"] = anchored(task["fewshot_path"])
        include = (task.get("lm_eval") or {}).get("include_path")
        if include and not include.startswith(DEMO_PREFIX):
            task["lm_eval"]["include_path"] = anchored(include)
    lora = (out.get("method") or {}).get("lora") or {}
    if lora.get("init_adapter"):
        lora["init_adapter"] = anchored(lora["init_adapter"])
    model = out.get("model") or {}
    if model.get("path") and locate_model(model["path"]).kind == "local":
        model["path"] = anchored(model["path"])
    return out
