"""Check a merge: the merged model's logits against base + adapter(s) applied at run time.

The reference never uses the merged weights:
- one adapter: peft's own PeftModel (the adapter as it was trained and served);
- cat: peft's PeftModel with the stacked adapter the merge also wrote;
- linear: the base with each adapter's low-rank path added to its modules' outputs;
- ties / dare: the base with the combined update added to its modules' outputs. This checks
  the export (tensor names, dtype, shards, tied weights); the combination itself is checked
  by the task metrics before and after, and by unit tests.

Models are loaded one at a time, so verification needs the memory of one model.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from orchestrator.merging.adapters import Adapter
from orchestrator.merging.weights import DTYPES

# Both models run in float64, so the difference measured is the merge's own (the merged
# weights rounded to their stored dtype), not fp32 kernel noise, which grows with depth.
VERIFY_DTYPE = "float64"

# Largest |logit difference| accepted by default, by the dtype the merged weights are stored in.
DEFAULT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2.5e-1, "float16": 3e-2}


def default_tolerance(dtype: str) -> float:
    return DEFAULT_TOLERANCE[dtype]


def output_dtype(dtype: str, base_config: dict) -> str:
    """The dtype the merged weights are stored in ('auto': the base's own)."""
    if dtype != "auto":
        return dtype
    stored = str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32").removeprefix("torch.")
    return stored if stored in DTYPES else "float32"


def probe_batch(vocab_size: int, seed: int = 0, rows: int = 8, length: int = 32) -> dict[str, torch.Tensor]:
    """Seeded random token ids, the probe when there are no held-out rows (the merge must
    hold for any input, so random ids are a fair probe)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def load_causal_lm(path: Path | str, dtype: str, device: str, quantization: dict | None = None,
                   stored: str | None = None):
    """The model in `dtype`; with `stored`, its weights first rounded to that dtype (the base as
    it would be served next to the merged model)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": DTYPES[stored] if stored else {**DTYPES, "float64": torch.float64}[dtype]}
    if dtype == "float64":
        # Mixture-of-Experts layers default to grouped_mm, which has no float64 kernel.
        kwargs["experts_implementation"] = "eager"
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quantization.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=quantization.get("double_quant", True),
            bnb_4bit_compute_dtype=getattr(torch, quantization.get("compute_dtype", "bfloat16")))
        kwargs["dtype"] = getattr(torch, quantization.get("compute_dtype", "bfloat16"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if quantization is None:
        model = model.to(device=device, dtype={**DTYPES, "float64": torch.float64}[dtype])
    return model.eval()


@torch.no_grad()
def logits_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    return out * batch["attention_mask"][..., None]  # padded positions do not count


def reference_model(base_dir: Path, adapters: list[Adapter], weights: list[float], method: str, dtype: str,
                    device: str, cat_adapter: Path | None = None, density: float = 1.0, seed: int = 0,
                    stored: str | None = None):
    """The base (its weights in the `stored` dtype) with the adapter(s) applied at run time,
    never through merged weights."""
    from peft import PeftModel

    model = load_causal_lm(base_dir, dtype, device, stored=stored)
    if len(adapters) == 1 or method == "cat":
        path = adapters[0].path if len(adapters) == 1 else cat_adapter
        model = PeftModel.from_pretrained(model, str(path)).to(device=device, dtype=model.dtype).eval()
        if len(adapters) == 1 and weights[0] != 1:
            for module in model.modules():
                if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                    for name in module.scaling:
                        module.scaling[name] *= weights[0]
        return model
    if method == "linear":
        for module_name in sorted({m for a in adapters for m in a.updates}):
            parts = [(a.updates[module_name], w) for a, w in zip(adapters, weights) if module_name in a.updates]
            _add_low_rank(model.get_submodule(module_name), parts, device)
        return model
    from orchestrator.merging.merge import merged_update

    for module_name in sorted({m for a in adapters for m in a.updates}):
        kind = next(a.updates[module_name] for a in adapters if module_name in a.updates)
        dense = merged_update(module_name, adapters, weights, method, density, seed)
        _add_dense(model.get_submodule(module_name), dense, kind.kind, kind.fan_in_fan_out, device)
    return model


def _add_low_rank(module, parts, device) -> None:
    dtype = next(module.parameters()).dtype  # float64 while verifying
    factors = [(u.A.to(device, dtype), u.B.to(device, dtype), u.scale * w, u.kind) for u, w in parts]

    def hook(mod, inputs, output):
        x = inputs[0]
        extra = 0
        for A, B, s, kind in factors:
            if kind == "embedding":
                extra = extra + torch.nn.functional.embedding(x, A.T) @ B.T * s
            else:
                extra = extra + (x.to(dtype) @ A.T @ B.T) * s
        return output + extra.to(output.dtype)

    module.register_forward_hook(hook)


def _add_dense(module, delta: torch.Tensor, kind: str, fan_in_fan_out: bool, device) -> None:
    dtype = next(module.parameters()).dtype
    delta = delta.to(device, dtype)

    def hook(mod, inputs, output):
        x = inputs[0]
        if kind == "embedding":
            extra = torch.nn.functional.embedding(x, delta)
        else:
            extra = x.to(dtype) @ (delta if fan_in_fan_out else delta.T)
        return output + extra.to(output.dtype)

    module.register_forward_hook(hook)


def max_logit_difference(reference: torch.Tensor, merged: torch.Tensor) -> float:
    return float((reference - merged).abs().max())


def release() -> None:
    """Return the memory of models the caller has dropped (their last reference is gone)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reference_logits(probe: dict[str, torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """Logits of `reference_model(*args, **kwargs)`; the model is gone when this returns."""
    logits = logits_of(reference_model(*args, **kwargs), probe)
    release()
    return logits


def merged_logits(probe: dict[str, torch.Tensor], merged_dir: Path, dtype: str, device: str) -> torch.Tensor:
    logits = logits_of(load_causal_lm(merged_dir, dtype, device), probe)
    release()
    return logits


@torch.no_grad()
def mean_token_loss(model, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Mean next-token loss over the label tokens of held-out batches, and the token count."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                         ignore_index=-100, reduction="sum"))
        tokens += int((labels != -100).sum())
    return total / max(tokens, 1), tokens


def quantisation_gap(base_dir: Path, adapter: Adapter, quantization: dict, merged_dir: Path, dtype: str,
                     device: str, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Held-out loss of the merged full-precision model vs the 4-bit base + adapter it was
    trained as. A positive gap: the merge is worse than what was trained."""
    from peft import PeftModel

    q_loss, tokens = mean_token_loss(PeftModel.from_pretrained(
        load_causal_lm(base_dir, dtype, device, quantization), str(adapter.path)).eval(), batches)
    release()
    m_loss, _ = mean_token_loss(load_causal_lm(merged_dir, dtype, device), batches)
    release()
    return {"quantized_base_adapter_loss": round(q_loss, 6), "merged_loss": round(m_loss, 6),
            "gap": round(m_loss - q_loss, 6), "tokens": tokens, "quantization": quantization}


def task_metrics(base_dir: Path, adapters: list[Adapter], merged_dir: Path, tasks: list,
                 tokenizer, dtype: str, device: str) -> dict[str, dict[str, float]]:
    """Each task's metric on the base, on the base with each adapter alone (before) and on
    the merged model (after): {"base": {...}, "<adapter>": {...}, "merged": {...}}."""
    from orchestrator.forgetting.measure import measure

    # PEFT adapter names must not hold dots: each adapter is measured under a plain label.
    labels = {f"adapter{i}": a for i, a in enumerate(adapters)}
    before = measure(lambda: load_causal_lm(base_dir, dtype, device),
                     {"base": None, **{label: a.path for label, a in labels.items()}}, tasks, tokenizer, device=device)
    after = measure(lambda: load_causal_lm(merged_dir, dtype, device), {"merged": None}, tasks, tokenizer,
                    device=device)
    named = {"base": before["base"], **{a.name: before[label] for label, a in labels.items()}, "merged": after["merged"]}
    return {name: {k: round(v, 6) for k, v in m.tasks.items()} for name, m in named.items()}
