"""Training state as plain data: RNG streams, snapshots of tensors, safe loading.

Everything here is saved with `torch.save` of tensors, numbers, strings, lists and dicts,
so that it loads back with `torch.load(weights_only=True)`: nothing in a checkpoint is
ever unpickled as arbitrary objects.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from orchestrator.checkpoint.store import CheckpointError


def rng_state() -> dict[str, Any]:
    """Every random stream of this process: python, numpy, torch CPU and each CUDA device."""
    import numpy as np

    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def snapshot(value: Any) -> Any:
    """A deep copy with every tensor cloned to CPU memory: what a background writer may
    serialise while training goes on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def load_tensors(path: Path, allowed: tuple = ()) -> Any:
    """`torch.load(weights_only=True)`, with `allowed` classes on the allowlist; a file that
    needs anything else is refused rather than unpickled."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path.parent.name}/{path.name} cannot be loaded safely: {first}") from None
