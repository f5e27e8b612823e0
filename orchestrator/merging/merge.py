"""Merge adapters into a base model's weights, one tensor at a time, into a new model dir.

The base is read tensor by tensor and the output written shard by shard (weights.py), so
memory stays near one output shard plus the adapters. Updates are added in fp32 and the
result cast once to the output dtype. The base is never a 4-bit model: a QLoRA adapter is
merged into the original-precision weights it was quantized from.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from orchestrator.merging.adapters import Adapter, AdapterError, ModuleUpdate
from orchestrator.merging.combine import METHODS, combine
from orchestrator.merging.weights import DTYPES, BaseWeights, ShardWriter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
MANIFEST = "merge_manifest.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


class MergeError(Exception):
    """The merge was refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """Where one adapter module's update lands in the base: the weight (and bias) tensor names.
    `pieces`: the tensors the base stores the weight as, when it stores it under other names or
    split (fused experts); `weight` is then the name the loaded model gives it."""
    module: str
    weight: str
    bias: str
    pieces: tuple[str, ...] = ()


def plan_targets(adapters: list[Adapter], shapes: dict[str, tuple[tuple[int, ...], str]],
                 config: dict, stored: Callable[[dict], dict] | None = None) -> dict[str, Target]:
    """module name -> its tensors in the base, checked for presence, shape and tied weights.
    `stored` turns tensors named as the model loads them into those its checkpoint stores
    (parameters.stored_form), for weights the base does not store as they are loaded."""
    # transformers ties the output head to the input embedding unless the config says not to.
    tied = bool(config.get("tie_word_embeddings", True))
    targets: dict[str, Target] = {}
    for adapter in adapters:
        for module, update in adapter.updates.items():
            loaded = module if update.kind == "parameter" else f"{module}.weight"
            want = tuple(update.delta_shape())
            weight = _find_tensor(loaded, shapes)
            pieces: dict[str, tuple[int, ...]] = {}
            if weight is None and stored is not None:
                pieces = {n: tuple(t.shape) for n, t in stored({loaded: torch.empty(want, device="meta")}).items()}
                if any(n not in shapes for n in pieces):
                    pieces = {}
            if weight is None and not pieces:
                example = next(iter(shapes), "?")
                hint = (" (this base ties its output head to the input embedding, so it stores no separate "
                        "lm_head weight)" if module.endswith("lm_head") and tied else "")
                raise AdapterError(f"adapter {adapter.path} changes {module}, but the base has no tensor "
                                   f"'{loaded}'{hint}; its tensors are named like '{example}'. Is this the "
                                   f"base the adapter was trained on?")
            if tied and update.kind == "embedding":
                raise AdapterError(f"adapter {adapter.path} changes the embedding {module}, which this base ties to "
                                   f"its output head: merging would change both and no longer match base + adapter")
            for name, shape in (pieces or {weight: want}).items():
                if tuple(shapes[name][0]) != shape:
                    raise AdapterError(f"adapter {adapter.path} changes {module} with an update of shape "
                                       f"{list(shape)}, but the base's {name} has shape {list(shapes[name][0])}; "
                                       f"the adapter was trained on a different base")
            if update.magnitude is not None and len(pieces) > 1:
                raise AdapterError(f"adapter {adapter.path} is a DoRA adapter on {module}, which the base stores "
                                   f"split in {len(pieces)} tensors; merge it with peft's merge_and_unload instead")
            weight = weight or loaded
            bias = weight[: -len("weight")] + "bias" if weight.endswith("weight") else ""
            if update.lora_bias is not None and bias not in shapes:
                raise AdapterError(f"adapter {adapter.path} trains a bias for {module} (lora_bias), but the base's "
                                   f"{module} has no bias tensor to merge it into")
            targets.setdefault(module, Target(module, weight, bias, tuple(pieces)))
    return targets


def _find_tensor(name: str, shapes: dict) -> str | None:
    for candidate in (name, name.removeprefix("model."), f"model.{name}"):
        if candidate in shapes:
            return candidate
    return None


def check_combinable(adapters: list[Adapter], weights: list[float], method: str) -> None:
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    if len(weights) != len(adapters):
        raise MergeError(f"{len(adapters)} adapters but {len(weights)} weights; give one --weight per --adapter")
    digests = [a.digest for a in adapters]
    for i, d in enumerate(digests):
        if d in digests[:i]:
            raise MergeError(f"{adapters[i].path} is the same adapter as {adapters[digests.index(d)].path}; "
                             f"merging it twice would apply it twice")
    if len(adapters) == 1:
        if adapters[0].uses_dora and weights[0] != 1:
            raise MergeError("a DoRA adapter merges only with weight 1 (its magnitudes are absolute, not scalable)")
        return
    for a in adapters:
        if a.uses_dora:
            raise MergeError(f"{a.path} is a DoRA adapter; DoRA adapters are merged one at a time (its magnitude "
                             f"vectors do not combine linearly)")
        if a.replacements:
            raise MergeError(f"{a.path} also saves whole tensors ({', '.join(sorted(a.replacements)[:3])}: "
                             f"modules_to_save or trained biases); multi-adapter merges combine only LoRA updates")
        if any(u.lora_bias is not None for u in a.updates.values()):
            raise MergeError(f"{a.path} trains lora_B biases; multi-adapter merges combine only LoRA weight updates")
        if a.on_parameters:
            raise MergeError(f"{a.path} adapts bare parameters (target_parameters, e.g. a Mixture-of-Experts "
                             f"model's experts); such adapters are merged one at a time")


def merged_update(module: str, adapters: list[Adapter], weights: list[float], method: str,
                  density: float, seed: int) -> torch.Tensor:
    """The dense fp32 update of one module from all adapters."""
    if len(adapters) == 1:
        return adapters[0].updates[module].delta() * weights[0]
    deltas = [a.updates[module].delta() if module in a.updates else None for a in adapters]
    return combine(method, deltas, weights, density=density, seed=seed, name=module)


def merge_weights(base: BaseWeights, config: dict, adapters: list[Adapter], weights: list[float], method: str,
                  dtype: str, out: Path, *, density: float = 1.0, seed: int = 0, shard_bytes: int = 2 * 10**9,
                  progress: Callable[[str], None] = lambda _m: None) -> dict:
    """Write the merged weights (and the base's other files) into `out`; return what was done."""
    check_combinable(adapters, weights, method)
    if dtype != "auto" and dtype not in DTYPES:
        raise MergeError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    started = time.perf_counter()
    rss_start = _reset_peak_rss()
    shapes = base.shapes()
    stored = _stored_form(base.root, config)
    targets = plan_targets(adapters, shapes, config, stored=stored)
    by_weight = {t.weight: t for t in targets.values() if not t.pieces}
    by_piece = {piece: t for t in targets.values() for piece in t.pieces}
    by_bias = {t.bias: t for t in targets.values() if t.bias}
    split: dict[str, dict[str, torch.Tensor]] = {}  # module -> the stored pieces of its update not yet written
    replacements: dict[str, torch.Tensor] = {}
    for a in adapters:
        for name, tensor in a.replacements.items():
            found = _find_tensor(name, shapes)
            if found is None:
                raise AdapterError(f"adapter {a.path} saves a whole tensor {name}, which the base does not have")
            replacements[found] = tensor
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, shard_bytes)
    changed = 0
    total = len(shapes)
    for i, (_file, name) in enumerate(base.names(), start=1):
        tensor = base.read(name)
        original = tensor.dtype
        if name in replacements:
            tensor, changed = replacements[name], changed + 1
        elif name in by_weight:
            module = by_weight[name].module
            update = merged_update(module, adapters, weights, method, density, seed)
            tensor = _apply(tensor, update, adapters[0].updates.get(module) if len(adapters) == 1 else None)
            changed += 1
        elif name in by_piece:
            target = by_piece[name]
            if target.module not in split:
                update = merged_update(target.module, adapters, weights, method, density, seed)
                split[target.module] = stored({target.weight: update})
            tensor = _apply(tensor, split[target.module].pop(name), None)
            if not split[target.module]:
                del split[target.module]
            changed += 1
        elif name in by_bias:
            bias = _lora_bias(by_bias[name].module, adapters, weights)
            if bias is not None:
                tensor, changed = tensor.float() + bias, changed + 1
        if tensor.is_floating_point():
            tensor = tensor.to(DTYPES[dtype] if dtype != "auto" else original)
        writer.add(name, tensor)
        del tensor
        if i % 50 == 0:
            progress(f"merged {i}/{total} tensors")
    shards = writer.close()
    peak = _peak_rss()
    _copy_other_files(base.root, adapters, out, dtype)
    return {
        "tensors": total, "tensors_changed": changed, "shards": shards, "bytes": writer.total_bytes,
        "largest_shard_bytes": writer.largest_shard_bytes, "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_growth_bytes": (peak - rss_start) if peak is not None and rss_start is not None else None,
        "modules": len(targets),
    }


def _stored_form(base_root: Path, config: dict) -> Callable[[dict], dict]:
    """parameters.stored_form for this base, its model built (on the meta device) on first use;
    nothing for a base whose tensors load as they are stored."""
    model = None

    def convert(tensors: dict) -> dict:
        nonlocal model
        from orchestrator.merging.parameters import converts_on_load, meta_model, stored_form

        if not converts_on_load(config):
            return {}
        model = model if model is not None else meta_model(base_root)
        return stored_form(model, tensors)

    return convert


def _apply(weight: torch.Tensor, update: torch.Tensor, single: ModuleUpdate | None) -> torch.Tensor:
    merged = weight.float() + update
    if single is not None and single.magnitude is not None:
        # DoRA: rescale each output row of W + delta to its learned magnitude.
        oriented = merged.T if single.fan_in_fan_out else merged
        norm = torch.linalg.norm(oriented, dim=1)
        oriented = oriented * (single.magnitude.float() / norm).view(-1, 1)
        merged = oriented.T if single.fan_in_fan_out else oriented
    return merged


def _lora_bias(module: str, adapters: list[Adapter], weights: list[float]) -> torch.Tensor | None:
    extra = None
    for a, w in zip(adapters, weights):
        u = a.updates.get(module)
        if u is not None and u.lora_bias is not None:
            piece = u.lora_bias.float() * u.scale * w
            extra = piece if extra is None else extra + piece
    return extra


def _copy_other_files(base_root: Path, adapters: list[Adapter], out: Path, dtype: str) -> None:
    """Config, tokenizer and the rest of the base's files; a single adapter's own tokenizer wins
    (training may have set a pad token or added tokens)."""
    for item in base_root.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in (
                MANIFEST, "model.safetensors.index.json", "pytorch_model.bin.index.json"):
            shutil.copy2(item, out / item.name)
    if len(adapters) == 1:
        for name in _TOKENIZER_FILES:
            if (adapters[0].path / name).is_file():
                shutil.copy2(adapters[0].path / name, out / name)
    if dtype != "auto":
        config_file = out / "config.json"
        config = json.loads(config_file.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype
        config_file.write_text(json.dumps(config, indent=2))


def write_cat_adapter(adapters: list[Adapter], weights: list[float], out: Path) -> dict:
    """The adapters as one LoRA adapter: factors stacked along the rank, each adapter's
    weight and scale folded into its B, so that its update is sum_i w_i * scale_i * B_i A_i."""
    from safetensors.torch import save_file

    blocks = [max(u.rank for u in a.updates.values()) for a in adapters]
    rank = sum(blocks)
    modules = sorted({m for a in adapters for m in a.updates})
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        first = next(a.updates[module] for a in adapters if module in a.updates)
        A = torch.zeros(rank, first.A.shape[1])
        B = torch.zeros(first.B.shape[0], rank)
        offset = 0
        for a, w, width in zip(adapters, weights, blocks):
            u = a.updates.get(module)
            if u is not None:
                A[offset:offset + u.rank] = u.A.float()
                B[:, offset:offset + u.rank] = u.B.float() * (u.scale * w)
            offset += width
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if first.kind == "embedding" else (
            "lora_A.weight", "lora_B.weight")
        tensors[f"base_model.model.{module}.{a_key}"] = A.contiguous()
        tensors[f"base_model.model.{module}.{b_key}"] = B.contiguous()
    config = dict(adapters[0].config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
                  target_modules=modules, lora_dropout=0.0, use_dora=False, bias="none", modules_to_save=None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return {"path": str(out), "rank": rank, "modules": len(modules)}


def _reset_peak_rss() -> int | None:
    """Reset this process's peak RSS (Linux) and return the current RSS, in bytes. The merge
    measures its own peak this way; an earlier peak of the process is forgotten."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _peak_rss() -> int | None:
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
