"""LoRA on bare parameters (peft's `target_parameters`), and model tensors stored under other names.

peft adapts a parameter that is not a Linear's weight (a Mixture-of-Experts model's experts
stored fused as one 3-D tensor, a router's weight) with a `ParamWrapper`; its `all-linear`
picks them on MoE models by itself. Which saved factors belong to which parameter, how many
experts they hold and in which layout, depends on the model's classes (wrappers on the same
module nest in the order the module registers its parameters), so it is read from peft's own
wrappers on the base built on the meta device, never inferred from shapes.

transformers also loads some checkpoints into other tensors than it stores (Mixtral's
per-expert `w1`/`w3` are concatenated and stacked into `experts.gate_up_proj`; its
`block_sparse_moe` is renamed `mlp`). Those conversions are linear, so an update to a loaded
tensor becomes updates to the stored ones through transformers' own reverse conversion, the
one `save_pretrained` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ParameterLayout:
    """How peft lays out the factors of one adapted parameter (see peft's lora.ParamWrapper)."""
    parameter: str   # the parameter's name in the loaded model, e.g. model.layers.0.mlp.experts.gate_up_proj
    experts: int     # leading dimension of a 3-D parameter; 1 for a 2-D one
    swapped: bool    # the 3-D parameter is (experts, out, in), not (experts, in, out)
    scale: float


def converts_on_load(config: dict) -> bool:
    """Whether transformers loads this model type's checkpoints into other tensors than it stores."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping(config.get("model_type")) is not None


def meta_model(base_root: Path):
    """The base's model class with its config and no weights: names, shapes and conversions only."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(base_root))
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def parameter_layouts(base_root: Path, adapter_path: Path) -> dict[str, ParameterLayout]:
    """Adapter module name (as its weight file names the factors) -> the parameter it adapts."""
    from peft import PeftConfig, inject_adapter_in_model
    from peft.tuners.lora.layer import ParamWrapper

    config = PeftConfig.from_pretrained(str(adapter_path))
    model = inject_adapter_in_model(config, meta_model(base_root), adapter_name="default", low_cpu_mem_usage=True)
    return {name: ParameterLayout(parameter=f"{name.replace('.base_layer', '')}.{module.parameter_name}",
                                  experts=int(module.num_experts), swapped=bool(module._did_swap_in_out_features),
                                  scale=float(module.scaling["default"]))
            for name, module in model.named_modules() if isinstance(module, ParamWrapper)}


def stored_form(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors named and shaped as the model loads them -> as its checkpoint stores them."""
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, dict(tensors))
