"""Merge, verify, record, publish: the whole of `ftctl merge` and of a job's `merge.enabled`.

The merged model is built in a staging dir beside `out` and renamed into place only after
verification passed, so a model dir named `out` is always a verified merge. Its
`merge_manifest.json` records what went in (base and adapter hashes, weights, method,
dtype), what verification measured, and the adapters the base already carried: merging an
adapter into a model that already holds it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.merging.adapters import AdapterError, load_adapter
from orchestrator.merging.combine import EXACT_METHODS
from orchestrator.merging.merge import MANIFEST, MergeError, check_combinable, merge_weights, write_cat_adapter
from orchestrator.merging.weights import WeightsError, base_weights, parse_size


class MergeVerificationFailed(MergeError):
    """The merged model's logits differ from base + adapter by more than the tolerance."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass
class MergeRequest:
    adapters: list[Path]
    out: Path
    base: str | None = None                 # model dir or builtin name; default: the adapter's base
    weights: list[float] | None = None      # default 1.0 each
    method: str = "linear"
    dtype: str = "auto"
    density: float | None = None            # ties / dare: fraction kept (default 0.5); others 1
    seed: int = 0
    tolerance: float | None = None          # default by dtype (float32: 1e-4)
    shard_size: str | int = "2GB"
    quantization: dict | None = None        # the adapter was trained on this 4-bit base (qlora)
    heldout: list[dict] | None = None       # batches {input_ids, attention_mask, labels}
    tasks: list = field(default_factory=list)  # PreparedTasks to report per model
    tokenizer: Any = None                    # needed with tasks
    device: str | None = None


def resolve_base(base: str | None, adapter_config: dict) -> Path:
    from orchestrator.models.build import ModelError, resolve_model_dir
    from orchestrator.spec.models import ModelSpec

    if base is None:
        recorded = adapter_config.get("base_model_name_or_path")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        raise MergeError(f"the adapter names its base as {recorded!r}, which is not a local dir here; "
                         f"pass the base model dir with --base")
    try:
        resolved = Path(resolve_model_dir(ModelSpec(path=base)))
    except (ModelError, ValueError) as err:
        raise MergeError(str(err)) from None
    if not resolved.is_dir():
        raise MergeError(f"base model {base} is not a local dir; download it and pass the dir with --base")
    return resolved


def carried_adapters(base_dir: Path) -> list[dict[str, Any]]:
    """Adapters already merged into `base_dir` (from its manifest, through every earlier merge)."""
    manifest = base_dir / MANIFEST
    if not manifest.is_file():
        return []
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        raise MergeError(f"{manifest} is damaged; cannot tell which adapters this model already carries") from None
    return [*data.get("lineage", []), *({"digest": a["digest"], "path": a["path"], "merged_at": data.get("created")}
                                         for a in data.get("adapters", []))]


def merge_and_verify(req: MergeRequest, progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Merge, verify and publish `req.out`; the manifest as a dict. Raises MergeError (refused
    or failed; nothing is left at `out`) or MergeVerificationFailed."""
    import torch

    from orchestrator import __version__
    from orchestrator.digest import sha256_file, tree_digest
    from orchestrator.merging import verify
    from orchestrator.spec.paths import ftctl_home

    started = time.time()
    try:
        adapters = [load_adapter(p) for p in req.adapters]
        base_dir = resolve_base(req.base, adapters[0].config)
        base = base_weights(base_dir)
    except (AdapterError, WeightsError) as err:
        raise MergeError(str(err)) from None
    out = Path(req.out)
    if out.resolve() == base_dir.resolve():
        raise MergeError("--out is the base model dir; write the merged model to a new dir")
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} is a file; choose a new dir for --out (nothing was overwritten)")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} already exists and is not empty; choose a new --out (nothing was overwritten)")
    carried = carried_adapters(base_dir)
    for a in adapters:
        earlier = next((c for c in carried if c["digest"] == a.digest), None)
        if earlier is not None:
            raise MergeError(f"{base_dir} already carries adapter {a.path} (sha256 {a.digest[:12]}, merged from "
                             f"{earlier['path']}); merging it again would apply it twice. Merge into the "
                             f"original base instead")
    weights = req.weights or [1.0] * len(adapters)
    check_combinable(adapters, weights, req.method)
    for a in adapters:
        if a.on_parameters:
            _bind_parameters(a, base_dir)
    density = req.density if req.density is not None else (0.5 if req.method not in EXACT_METHODS else 1.0)
    if not 0 < density <= 1:
        raise MergeError(f"density must be in (0, 1] (the fraction of each update kept), got {density}")
    if len(adapters) == 1 and req.method not in EXACT_METHODS:
        raise MergeError(f"{req.method} combines several adapters; a single adapter is merged as it is "
                         f"(use --method linear, or give more --adapter)")
    config = json.loads((base_dir / "config.json").read_text())
    stored = verify.output_dtype(req.dtype, config)
    tolerance = req.tolerance if req.tolerance is not None else verify.default_tolerance(stored)
    cmp_dtype = verify.VERIFY_DTYPE
    device = req.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if req.quantization is not None and len(adapters) > 1:
        raise MergeError("a QLoRA adapter's quantisation gap is measured one adapter at a time; merge it alone")
    if req.quantization is not None and not req.heldout:
        raise MergeError("measuring the quantisation gap of a QLoRA merge needs held-out data: pass --heldout PATH "
                         "(or --job with data.eval)")

    staging = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        progress(f"merging {len(adapters)} adapter(s) into {base_dir.name} ({req.method}, {req.dtype})")
        stats = merge_weights(base, config, adapters, weights, req.method, req.dtype, staging, density=density,
                              seed=req.seed, shard_bytes=parse_size(req.shard_size), progress=progress)
        cat = write_cat_adapter(adapters, weights, staging / "adapter") if (
            req.method == "cat" and len(adapters) > 1) else None

        progress("verifying: logits of the merged model vs base + adapter")
        t0 = time.perf_counter()
        probe = ({k: req.heldout[0][k] for k in ("input_ids", "attention_mask")} if req.heldout
                 else verify.probe_batch(int(config.get("vocab_size", 32000)), seed=req.seed))
        # One model in memory at a time: each helper drops its model before returning logits.
        ref_logits = verify.reference_logits(probe, base_dir, adapters, weights, req.method, cmp_dtype, device,
                                             cat_adapter=staging / "adapter" if cat else None,
                                             density=density, seed=req.seed,
                                             stored=stored if stored != verify.output_dtype("auto", config) else None)
        diff = verify.max_logit_difference(ref_logits, verify.merged_logits(probe, staging, cmp_dtype, device))
        verification = {
            "max_abs_logit_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance, "compared_in": cmp_dtype,
            "device": device, "probe": "held-out rows" if req.heldout else "seeded random token ids",
            "probe_shape": list(probe["input_ids"].shape),
            "reference": _reference_kind(len(adapters), req.method),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        manifest: dict[str, Any] = {
            "format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tool": _versions(__version__),
            "base": {"path": str(base_dir), "digest": tree_digest(base_dir, ftctl_home() / "digests.json")},
            "adapters": [{**a.summary(), "weight": w, "config_digest": sha256_file(a.path / "adapter_config.json")}
                         for a, w in zip(adapters, weights)],
            "lineage": carried,
            "method": req.method, "density": density, "seed": req.seed, "dtype": req.dtype,
            "output_dtype": stored, "merge": stats, "cat_adapter": cat, "verification": verification,
        }
        if not verification["passed"]:
            raise MergeVerificationFailed(
                f"merge verification failed: the merged model's logits differ from base + adapter by up to "
                f"{diff:.3g} (> tolerance {tolerance:g} for {stored} weights); the merged model was not written", manifest)
        if req.quantization is not None:
            progress("measuring the quantisation gap (4-bit base + adapter vs merged) on held-out data")
            manifest["quantisation_gap"] = verify.quantisation_gap(base_dir, adapters[0], req.quantization, staging,
                                                                   stored, device, req.heldout)
        if req.tasks:
            progress("evaluating each adapter and the merged model on the tasks")
            manifest["task_metrics"] = verify.task_metrics(base_dir, adapters, staging, req.tasks, req.tokenizer,
                                                           stored, device)
        manifest["seconds"] = round(time.time() - started, 3)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
        manifest["path"] = str(out)
        return manifest
    except (AdapterError, WeightsError) as err:
        raise MergeError(str(err)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _bind_parameters(adapter, base_dir: Path) -> None:
    from orchestrator.merging.parameters import parameter_layouts

    try:
        layouts = parameter_layouts(base_dir, adapter.path)
    except (ValueError, RuntimeError, KeyError) as err:  # peft cannot place the adapter on this base
        raise MergeError(f"adapter {adapter.path} does not fit the base {base_dir}: "
                         f"{str(err).strip().splitlines()[0][:300]}") from None
    try:
        adapter.bind_parameters(layouts)
    except AdapterError as err:
        raise MergeError(str(err)) from None


def gap_line(gap: dict[str, Any]) -> str:
    """The quantisation gap in one line, for the console."""
    return (f"quantisation gap on held-out data: merged loss {gap['merged_loss']:.4f} vs 4-bit base + adapter "
            f"{gap['quantized_base_adapter_loss']:.4f} (gap {gap['gap']:+.4f})")


def _reference_kind(n_adapters: int, method: str) -> str:
    if n_adapters == 1:
        return "peft PeftModel (base + adapter)"
    if method == "cat":
        return "peft PeftModel with the stacked adapter"
    if method == "linear":
        return "base + each adapter's low-rank path at run time"
    return "base + the combined update at run time (checks the export; the combination is reported by task metrics)"


def _versions(ftctl_version: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"ftctl": ftctl_version}
    for package in ("torch", "transformers", "peft", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
