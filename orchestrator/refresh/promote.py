"""After a lora/qlora job: register its adapter as a new version and, for a refresh (or
any job with promotion.auto), measure it against the base model and the previous promoted
version and promote it only if every gate passes.

Runs in the job's own process (the runner or `ftctl run`), after summary.json is written;
the verdict goes to the registry, to `<run dir>/promotion.json` and to summary.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.refresh.gates import Measured, promotion_gates, verdict
from orchestrator.spec.models import JobSpec


def open_registry(store: str | None = None):
    """The registry in the JobStore file `store`; default $FTCTL_REGISTRY, else the
    controller's file in $FTCTL_HOME."""
    from orchestrator.spec.paths import ftctl_home
    from orchestrator.store.jobs import SQLiteJobStore, store_file
    from orchestrator.store.registry import Registry

    return Registry(SQLiteJobStore(store or os.environ.get("FTCTL_REGISTRY") or store_file(ftctl_home())))


def register_and_judge(spec: JobSpec, run_dir: Path, summary: dict[str, Any], job_id: str | None = None,
                       registry=None, progress=lambda _m: None) -> dict[str, Any] | None:
    """The promotion block of summary.json (None when this job registers nothing)."""
    adapter = summary.get("artifacts", {}).get("adapter")
    if spec.method.kind not in ("lora", "qlora") or summary.get("status") != "succeeded" or not adapter:
        return None
    registry = registry or open_registry()
    name = spec.promotion.adapter or spec.name
    parent = spec.promotion.parent
    version = registry.register(name, version_record(spec, run_dir, summary), parent, str(run_dir), job_id)
    out: dict[str, Any] = {"adapter": name, "version": version.version, "parent": parent, "verdict": "registered"}
    if spec.promotion.auto:
        head = registry.head(name)
        # The version to beat is the one served now; a refresh's parent normally is it.
        previous = head if head is not None and head.version != version.version else None
        progress(f"measuring {name} v{version.version} against the base model"
                 + (f" and v{previous.version}" if previous else ""))
        started = time.perf_counter()
        measured = measure(spec, {"base": None, "candidate": Path(adapter),
                                  **({"previous": Path(previous.adapter)} if previous else {})})
        results = promotion_gates(measured["candidate"], measured["base"], measured.get("previous"),
                                  _gates(spec), spec.promotion.min_target_gain, spec.promotion.max_drop_vs_previous)
        promote, reason = verdict(results)
        values = {k: {"target": v.target, "tasks": v.tasks} for k, v in measured.items()}
        judged = registry.judge(name, version.version, promote, reason, [r.as_dict() for r in results],
                                expected_head=previous.version if previous else None, measured=values)
        out.update(verdict=judged.verdict, reason=judged.reason, previous=previous.version if previous else None,
                   gates=[r.as_dict() for r in results], measured=values,
                   measure_seconds=round(time.perf_counter() - started, 3))
    _write(run_dir / "promotion.json", out)
    return out


def version_record(spec: JobSpec, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What a version is made of and what it measured in its job."""
    from orchestrator.data.sources import open_source
    from orchestrator.digest import tree_digest
    from orchestrator.models.build import resolve_model_dir
    from orchestrator.spec.paths import ftctl_home
    from orchestrator.training.run import spec_hash

    model_dir = resolve_model_dir(spec.model)
    train = spec.data.train
    report_file = run_dir / "forgetting.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    forgetting = {name: {"metric": t["metric"], "base": t["base"], "final": t["final"]}
                  for name, t in (report.get("tasks") or {}).items()}
    return {
        "base": {"path": spec.model.path, "digest": tree_digest(Path(model_dir), ftctl_home() / "digests.json")},
        "data": {"train": train.path, "files": train.files, "content": open_source(train).content_id,
                 "eval": spec.data.eval.path if spec.data.eval else None},
        "spec_hash": spec_hash(spec),
        "method": spec.method.kind,
        "init_adapter": spec.method.lora.init_adapter if spec.method.lora else None,
        "job": {"steps": summary.get("steps"), "final_loss": summary.get("final_loss"),
                "final_eval": summary.get("final_eval"), "forgetting_tasks": forgetting,
                "forgetting_gate": summary.get("forgetting_gate")},
        "artifacts": {"adapter": summary["artifacts"]["adapter"], "run_dir": str(run_dir),
                      **({"merged": summary["artifacts"]["merged"]} if "merged" in summary["artifacts"] else {})},
    }


def measure(spec: JobSpec, models: dict[str, Path | None]) -> dict[str, Measured]:
    """data.eval loss and every forgetting task's metric for the base model (None) and each
    adapter, in this process, one pass over the same rows. A qlora job's adapters are
    measured on the 4-bit base they were trained on."""
    import torch
    import transformers
    from accelerate import Accelerator

    from orchestrator.data.pipeline import prepare_dataset
    from orchestrator.models.build import bnb_config, load_tokenizer, resolve_model_dir
    from orchestrator.training.evaluation import evaluate_forgetting, evaluate_target
    from orchestrator.training.run import _forgetting_task

    transformers.utils.logging.disable_progress_bar()
    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    tasks = [_forgetting_task(task, spec, tokenizer) for task in spec.forgetting.tasks]
    eval_set = prepare_dataset(spec.data.eval, spec.data, tokenizer).dataset if spec.data.eval else None
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu)
    kwargs: dict[str, Any] = {"revision": spec.model.revision, "trust_remote_code": spec.model.trust_remote_code}
    if spec.method.kind == "qlora":
        kwargs["quantization_config"] = bnb_config(spec.method)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if spec.method.kind != "qlora":
        base = base.to(accelerator.device)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    batch = spec.training.per_device_batch_size

    def values(model) -> Measured:
        target = evaluate_target(accelerator, model, eval_set, pad_id, batch, shard=False)["eval_loss"] \
            if eval_set is not None else float("nan")
        return Measured(target, evaluate_forgetting(accelerator, model, tasks, tokenizer, pad_id, shard=False))

    out: dict[str, Measured] = {}
    wrapped = None
    for label, adapter in sorted(models.items(), key=lambda item: item[1] is not None):  # the bare base first
        if adapter is None:
            out[label] = values(base)
            continue
        from peft import PeftModel

        if wrapped is None:
            wrapped = PeftModel.from_pretrained(base, str(adapter), adapter_name=label)
        else:
            wrapped.load_adapter(str(adapter), adapter_name=label)
        wrapped.set_adapter(label)
        out[label] = values(wrapped)
    return out


def _gates(spec: JobSpec):
    from orchestrator.forgetting.gates import gates_of

    return gates_of(spec.forgetting)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
