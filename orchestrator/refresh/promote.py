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

from orchestrator.forgetting.measure import Measured
from orchestrator.refresh.gates import promotion_gates, verdict
from orchestrator.rundir import RunDir
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
    _write(RunDir(run_dir).promotion, out)
    return out


def version_record(spec: JobSpec, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What a version is made of and what it measured in its job."""
    from orchestrator.data.sources import open_source
    from orchestrator.digest import tree_digest
    from orchestrator.models.build import resolve_model_dir
    from orchestrator.spec.paths import ftctl_home
    from orchestrator.spec.hashing import spec_hash

    model_dir = resolve_model_dir(spec.model)
    train = spec.data.train
    report_file = RunDir(run_dir).forgetting_json
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
    from orchestrator.data.pipeline import prepare_dataset
    from orchestrator.forgetting.measure import load_base_model, measure as measure_models
    from orchestrator.forgetting.tasks import prepare_tasks
    from orchestrator.models.build import bnb_config, load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    tasks = prepare_tasks(spec, tokenizer)
    eval_set = prepare_dataset(spec.data.eval, spec.data, tokenizer).dataset if spec.data.eval else None
    quantization = bnb_config(spec.method) if spec.method.kind == "qlora" else None
    return measure_models(lambda: load_base_model(model_dir, spec.model.revision, spec.model.trust_remote_code,
                                                  quantization),
                          models, tasks, tokenizer, eval_set=eval_set, batch_size=spec.training.per_device_batch_size,
                          dpo=spec.training.dpo)


def _gates(spec: JobSpec):
    from orchestrator.forgetting.gates import gates_of

    return gates_of(spec.forgetting)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
