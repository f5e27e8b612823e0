"""A model dir's safetensors weights, read one tensor at a time and written shard by shard.

Reading reopens the file per tensor, so the pages of a multi-GB shard never stay mapped;
writing holds at most one output shard in memory. Together they keep a merge's memory near
one shard plus the adapter, whatever the model's size.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightsError(Exception):
    """A model dir's weights cannot be read as needed; the message says what to do."""


@dataclass(frozen=True)
class BaseWeights:
    """Where each tensor of a Hugging Face model dir lives."""
    root: Path
    files: tuple[str, ...]           # weight files, in order
    location: dict[str, str]         # tensor name -> file

    def names(self) -> Iterator[tuple[str, str]]:
        """(file, tensor name) for every tensor, file by file."""
        by_file: dict[str, list[str]] = {f: [] for f in self.files}
        for name, file in self.location.items():
            by_file[file].append(name)
        for file in self.files:
            for name in sorted(by_file[file]):
                yield file, name

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.root / self.location[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, safetensors dtype), from the headers only."""
        from safetensors import safe_open

        out = {}
        for file in self.files:
            with safe_open(str(self.root / file), framework="pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    out[name] = (tuple(piece.get_shape()), piece.get_dtype())
        return out


def base_weights(root: Path) -> BaseWeights:
    root = Path(root)
    if not (root / "config.json").is_file():
        raise WeightsError(f"{root} is not a Hugging Face model dir (no config.json)")
    config = json.loads((root / "config.json").read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise WeightsError(f"{root} is stored {method}-quantized; merging needs the original-precision weights "
                           f"(merging into quantized weights loses the adapter's precision). Pass the "
                           f"unquantized base model with --base")
    if (root / INDEX).is_file():
        try:
            weight_map = json.loads((root / INDEX).read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError("no weight_map of tensor -> file")
            if not all(isinstance(f, str) for f in weight_map.values()):
                raise ValueError("weight_map values must be file names")
        except (ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"{root / INDEX} is damaged ({err}); re-save the model") from None
        files = tuple(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise WeightsError(f"{root} lists weight files that are missing: {', '.join(missing)}")
        return BaseWeights(root, files, dict(weight_map))
    if (root / SINGLE).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(root / SINGLE), framework="pt") as handle:
                names = list(handle.keys())
        except Exception as err:
            raise WeightsError(f"cannot read {root / SINGLE}: {err}; the file is damaged") from None
        return BaseWeights(root, (SINGLE,), {n: SINGLE for n in names})
    if any(root.glob("pytorch_model*.bin")):
        raise WeightsError(f"{root} has only pytorch_model*.bin weights; save it as safetensors first "
                           f"(model.save_pretrained(dir, safe_serialization=True)) and merge into that")
    raise WeightsError(f"{root} holds no model weights (model.safetensors or {INDEX})")


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '64KiB' or a byte count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*((?:[KMGT]I?)?B?)\s*", str(text).upper())
    if not m:
        raise ValueError(f"cannot read size {text!r}; write e.g. 2GB, 500MB or a byte count")
    unit = m[2].rstrip("B")
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    base = 1024 if unit.endswith("I") else 1000
    return int(float(m[1]) * base ** power)


class ShardWriter:
    """Collect tensors into shards of at most `max_bytes` and write each as soon as it fills.

    Shards are written as `part-NNNNN.safetensors` and renamed to the Hugging Face names
    (`model-0000i-of-0000N.safetensors`, or `model.safetensors` when one suffices) at `close`."""

    def __init__(self, out: Path, max_bytes: int):
        self.out = Path(out)
        self.max_bytes = max(int(max_bytes), 1)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._parts: list[tuple[str, list[str]]] = []
        self.total_bytes = 0
        self.largest_shard_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        part = f"part-{len(self._parts) + 1:05d}.safetensors"
        save_file(self._pending, str(self.out / part), metadata={"format": "pt"})
        self._parts.append((part, list(self._pending)))
        self.largest_shard_bytes = max(self.largest_shard_bytes, self._pending_bytes)
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard and the index; the final shard file names."""
        if self._pending:
            self._flush()
        n = len(self._parts)
        if n == 1:
            os.replace(self.out / self._parts[0][0], self.out / SINGLE)
            return [SINGLE]
        names, weight_map = [], {}
        for i, (part, tensors) in enumerate(self._parts, start=1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / part, self.out / final)
            names.append(final)
            weight_map.update({t: final for t in tensors})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / INDEX).write_text(json.dumps(index, indent=2))
        return names
