"""Read a PEFT LoRA adapter dir into per-module low-rank updates, without loading any model.

An adapter's update to the base weight W of module M is

    delta(M) = scale * B @ A          (Linear; transposed for fan_in_fan_out and Embedding)

with scale = alpha / r (alpha / sqrt(r) under rsLoRA), alpha and r taken per module
(alpha_pattern, and the rank from A's shape). Saved tensors that are not LoRA factors
(modules_to_save copies, trained biases) replace the base tensor of the same name.

An adapter on bare parameters (peft's `target_parameters`: a Mixture-of-Experts model's
fused experts) is read the same way, then bound to the parameters its factors adapt
(`Adapter.bind_parameters`, with the layouts of parameters.py), which needs the base's classes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orchestrator.digest import sha256_file
from orchestrator.rundir import RunDir

_PREFIX = "base_model.model."
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# Adapter kinds whose update is not `scale * B @ A` on the original base weights: they change
# the base at initialisation (pissa, olora, corda, loftq, lora-ga) or work differently.
_UNSUPPORTED_FLAGS = {
    "use_qalora": "QA-LoRA", "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens", "alora_invocation_tokens": "activated LoRA",
    "arrow_config": "Arrow routing", "use_bdlora": "BD-LoRA", "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA",
    "velora_config": "VeLoRA", "lora_ga_config": "LoRA-GA", "megatron_config": "Megatron layers",
}
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


class AdapterError(Exception):
    """The adapter cannot be merged as asked; the message says why and what to do."""


@dataclass
class ModuleUpdate:
    """The LoRA factors of one module: delta = scale * B @ A (shapes: A (r, in), B (out, r)).

    On a bare parameter holding several experts, A stacks every expert's (r, in) factor
    (rows expert-major) and B every expert's (out, r) factor (columns rank-major), as peft's
    ParamWrapper lays them out."""
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    kind: str = "linear"              # linear | embedding | parameter (a bare parameter, bound to its layout)
    fan_in_fan_out: bool = False
    magnitude: torch.Tensor | None = None   # DoRA's per-output-row magnitude
    lora_bias: torch.Tensor | None = None   # lora_B's bias (lora_bias=True): adds scale * bias
    experts: int = 1                  # parameter: experts stacked in it (1: a 2-D parameter)
    swapped: bool = False             # parameter: laid out (experts, out, in), not (experts, in, out)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0]) // self.experts

    def delta_shape(self) -> tuple[int, ...]:
        """The shape of the base weight this update adds to."""
        rows, cols = int(self.B.shape[0]), int(self.A.shape[1])
        if self.experts > 1:
            return (self.experts, rows, cols) if self.swapped else (self.experts, cols, rows)
        return (cols, rows) if self.kind == "embedding" or self.fan_in_fan_out else (rows, cols)

    def delta(self) -> torch.Tensor:
        """The dense update in the base weight's layout, fp32."""
        if self.experts > 1:  # peft's ParamWrapper.get_delta_weight
            A = self.A.float().reshape(self.experts, -1, self.A.shape[-1])   # (expert, r, in)
            B = self.B.float().reshape(self.B.shape[0], -1, self.experts)    # (out, r, expert)
            return (torch.einsum("ore,eri->eoi" if self.swapped else "ore,eri->eio", B, A) * self.scale).contiguous()
        d = (self.B.float() @ self.A.float()) * self.scale
        if self.kind == "embedding" or self.fan_in_fan_out:
            d = d.T
        return d.contiguous()


@dataclass
class Adapter:
    path: Path
    config: dict
    digest: str                        # sha256 of the adapter's weight file
    updates: dict[str, ModuleUpdate]   # module name (as in the base's state dict) -> factors
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensor name -> new value

    @property
    def name(self) -> str:
        return self.path.name if self.path.name != "adapter" else f"{self.path.parent.name}/adapter"

    @property
    def uses_dora(self) -> bool:
        return any(u.magnitude is not None for u in self.updates.values())

    @property
    def on_parameters(self) -> bool:
        """Some of its factors adapt bare parameters (peft's target_parameters)."""
        return bool(self.config.get("target_parameters"))

    def bind_parameters(self, layouts: dict) -> None:
        """Key the factors on bare parameters by the parameter they adapt, in that parameter's
        layout (`layouts`: adapter module name -> parameters.ParameterLayout)."""
        for module, layout in layouts.items():
            update = self.updates.pop(module, None)
            if update is None or update.A.shape[0] % layout.experts:
                raise AdapterError(f"{self.path}: no factors of {layout.parameter} for its {layout.experts} "
                                   f"expert(s); the adapter is damaged or was trained on a different base")
            self.updates[layout.parameter] = ModuleUpdate(A=update.A, B=update.B, scale=layout.scale, kind="parameter",
                                                          experts=layout.experts, swapped=layout.swapped)

    def summary(self) -> dict:
        ranks = sorted({u.rank for u in self.updates.values()})
        return {"path": str(self.path), "digest": self.digest, "modules": len(self.updates),
                "ranks": ranks, "dora": self.uses_dora, "replaced_tensors": sorted(self.replacements),
                "base_model_name_or_path": self.config.get("base_model_name_or_path")}


def adapter_dir(path: Path) -> Path:
    """The adapter dir itself, or a run dir's `adapter/`."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file() and (RunDir(path).adapter / "adapter_config.json").is_file():
        return RunDir(path).adapter
    return path


def load_adapter(path: Path) -> Adapter:
    """Read and check an adapter dir (or a run dir holding `adapter/`)."""
    path = adapter_dir(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{path} is not a PEFT adapter dir (no adapter_config.json); pass the adapter/ dir of a run")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise AdapterError(f"{config_file} is not valid JSON ({err}); the adapter dir is damaged") from None
    _check_supported(config, path)
    weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise AdapterError(f"{path} has adapter_config.json but no adapter weights ({' or '.join(_WEIGHT_FILES)})")
    tensors = _read_tensors(weights)
    updates, replacements = _split(tensors, config, path)
    if not updates:
        raise AdapterError(f"{path} holds no LoRA factors (lora_A / lora_B); nothing to merge")
    return Adapter(path=path, config=config, digest=sha256_file(weights), updates=updates, replacements=replacements)


def _check_supported(config: dict, path: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} is a {config.get('peft_type')} adapter; ftctl merges LoRA (and QLoRA) adapters")
    for key, what in _UNSUPPORTED_FLAGS.items():
        if config.get(key):
            raise AdapterError(f"{path} uses {what} ({key}), which this merge does not implement; "
                               f"merge it with peft's merge_and_unload instead")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise AdapterError(f"{path} was initialised with {init}, which also changes the base weights; merging it "
                           f"into the original base would be wrong. Convert it to a plain LoRA adapter first "
                           f"(peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))")


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights))
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or corrupt file: say which, keep the rest
        raise AdapterError(f"cannot read {weights}: {err}; the adapter file is damaged") from None


def _split(tensors: dict[str, torch.Tensor], config: dict, path: Path
           ) -> tuple[dict[str, ModuleUpdate], dict[str, torch.Tensor]]:
    factors: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    part = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|"
                      r"lora_embedding_B|lora_magnitude_vector(?:\.weight)?)$")
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        m = part.match(name)
        if m:
            factors.setdefault(m["module"], {})[m["part"].split(".")[0] if "magnitude" in m["part"] else m["part"]] = tensor
            continue
        # A full copy (modules_to_save, trained bias, saved embedding layer): replaces the base tensor.
        replacements[name.replace(".base_layer.", ".")] = tensor
    updates = {}
    for module, parts in factors.items():
        if "lora_embedding_A" in parts:
            A, B, kind = parts.get("lora_embedding_A"), parts.get("lora_embedding_B"), "embedding"
        else:
            A, B, kind = parts.get("lora_A.weight"), parts.get("lora_B.weight"), "linear"
        if A is None or B is None:
            raise AdapterError(f"{path}: module {module} has only one of its two LoRA factors; the adapter is damaged")
        if A.shape[0] != B.shape[1]:
            raise AdapterError(f"{path}: module {module} has factors of rank {A.shape[0]} and {B.shape[1]}; "
                               f"the adapter is damaged")
        magnitude = parts.get("lora_magnitude_vector")
        if magnitude is not None and kind == "embedding":
            raise AdapterError(f"{path}: DoRA on the embedding {module} is not supported by this merge; "
                               f"merge it with peft's merge_and_unload instead")
        rank = int(A.shape[0])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        updates[module] = ModuleUpdate(A=A, B=B, scale=float(scale), kind=kind,
                                       fan_in_fan_out=bool(config.get("fan_in_fan_out")) and kind == "linear",
                                       magnitude=magnitude, lora_bias=parts.get("lora_B.bias"))
    return updates, replacements


def _pattern_value(patterns: dict, module: str, default):
    """peft's per-module overrides: a pattern matches a module name's dotted suffix."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
