"""One entry point for "load a model, with or without adapters, and measure it".

`ftctl eval`, promotion gates and merge reports all call `measure`: the bare base model
first, then each adapter on that same base (one PEFT wrapper, adapters switched), every one
on the same rows. Training-time evaluation uses the same evaluators, sharded over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.forgetting.tasks import PreparedTask


@dataclass(frozen=True)
class Measured:
    target: float  # data.eval loss (nan without an eval set)
    tasks: dict[str, float]  # each task's metric


def measure(load_base: Callable[[], Any], adapters: dict[str, Path | None], tasks: list[PreparedTask], tokenizer,
            eval_set=None, batch_size: int = 8, device: str | None = None,
            progress: Callable[[str], None] = lambda _m: None, dpo=None) -> dict[str, Measured]:
    """Each label's values: None measures the bare base, a path the base with that adapter.
    `dpo`: the DPO settings a preference eval set's loss is measured with."""
    import gc

    import torch
    from accelerate import Accelerator

    from orchestrator.forgetting.evaluate import evaluate_target, evaluate_tasks

    on_gpu = device == "cuda" if device is not None else torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def values(model) -> Measured:
        target = evaluate_target(accelerator, model, eval_set, pad_id, batch_size, shard=False, dpo=dpo)["eval_loss"] \
            if eval_set is not None else float("nan")
        return Measured(target, evaluate_tasks(accelerator, model, tasks, tokenizer, pad_id, shard=False))

    base = load_base()
    out: dict[str, Measured] = {}
    wrapped = None
    for label, adapter in sorted(adapters.items(), key=lambda item: item[1] is not None):  # the bare base first
        if adapter is None:
            progress(f"measuring {label}")
            out[label] = values(base)
            continue
        from peft import PeftModel

        progress(f"measuring {label} ({adapter})")
        if wrapped is None:
            wrapped = PeftModel.from_pretrained(base, str(adapter), adapter_name=label)
        else:
            wrapped.load_adapter(str(adapter), adapter_name=label)
        wrapped.set_adapter(label)
        out[label] = values(wrapped)
    del base, wrapped
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def load_base_model(model_dir: str | Path, revision: str | None = None, trust_remote_code: bool = False,
                    quantization_config=None, device: str | None = None):
    """The base model for measuring: safetensors only, on `device` (4-bit bases stay where
    bitsandbytes put them)."""
    import torch
    import transformers

    from orchestrator.models.build import check_weights

    transformers.utils.logging.disable_progress_bar()
    check_weights(str(model_dir))
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if Path(model_dir).is_dir():
        kwargs["use_safetensors"] = True
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if quantization_config is None:
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model
