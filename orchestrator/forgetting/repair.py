"""Repair by interpolation: keep as much of a fine-tune as the source tasks allow.

The weights base + alpha x (tuned - base) for alpha in [0, 1] run from the base model
(alpha 0) to the trained one (alpha 1); for lora/qlora that is the adapter's update scaled
by alpha (every lora_B times alpha). The repair evaluates a grid of alphas on the source
tasks and the target, bisects between the largest alpha that kept every source-task drop
within its max_drop and the next one that did not, and keeps the largest passing alpha.
Its weights become the job's artifact (adapter/ or model/); the trained ones move to
adapter.unrepaired/ or model.unrepaired/, and a later repair starts from those again.

One process, no Ray: the job's driver runs it after training (forgetting.repair), and
`ftctl repair RUN_DIR` after the fact.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.forgetting.metrics import change
from orchestrator.forgetting.tasks import TARGET, PreparedTask, task_metric
from orchestrator.spec.models import JobSpec

ADAPTER_KINDS = ("lora", "qlora")


class RepairError(Exception):
    """A repair that cannot run (no artifact, a base that does not load); nothing was changed."""


@dataclass(frozen=True)
class Point:
    alpha: float
    tasks: dict[str, float]
    target: float | None

    def as_dict(self, base: dict[str, float], budget: dict[str, float], metrics: dict[str, str]) -> dict[str, Any]:
        drops = {name: float(change(metrics[name], base[name], value)["drop"])
                 for name, value in self.tasks.items() if name in base}
        return {"alpha": self.alpha, "tasks": self.tasks, "target": self.target, "drops": drops,
                "passed": passes(drops, budget)}


def passes(drops: dict[str, float], budget: dict[str, float]) -> bool:
    """Every task with a budget dropped by at most its max_drop (equal passes)."""
    return all(drops.get(name, 0.0) <= limit + 1e-12 for name, limit in budget.items())


def budgets(spec: JobSpec, max_drop: float | None = None) -> dict[str, float]:
    """Each source task's allowed drop: `max_drop` (the command line's --max-drop), else
    forgetting.repair.max_drop, else the task's own gate; tasks without one are not held."""
    f = spec.forgetting
    override = max_drop if max_drop is not None else (f.repair.max_drop if f.repair else None)
    out = {}
    for task in f.tasks:
        limit = override if override is not None else (task.max_drop if task.max_drop is not None else f.max_drop)
        if limit is not None:
            out[task.name] = float(limit)
    return out


def grid(points: int) -> list[float]:
    return [round(i / (points - 1), 6) for i in range(points)]


def search(evaluate: Callable[[float], Point], alphas: list[float], refine: int,
           ok: Callable[[Point], bool]) -> list[Point]:
    """Every alpha of the grid, then `refine` bisections between the largest passing alpha and
    the smallest failing one above it (none above: the grid's top passed, nothing to refine)."""
    points = [evaluate(a) for a in sorted(set(alphas), reverse=True)]
    for _ in range(refine):
        passing = [p.alpha for p in points if ok(p)]
        low = max(passing) if passing else 0.0
        above = [p.alpha for p in points if p.alpha > low]
        if not above:
            break
        points.append(evaluate(round((low + min(above)) / 2, 6)))
    return sorted(points, key=lambda p: p.alpha)


def choose(curve: list[dict[str, Any]], budget: dict[str, float]) -> tuple[float, str]:
    """The largest passing alpha and a sentence saying why."""
    passing = [p for p in curve if p["passed"]]
    limits = ", ".join(f"{name} {limit:g}" for name, limit in budget.items())
    if not passing:
        return 0.0, (f"no alpha kept every source-task drop within its max_drop ({limits}), not even 0 (the base "
                     "model measured now differs from its recorded values); alpha 0 is the base model")
    best = max(passing, key=lambda p: p["alpha"])
    above = sorted((p for p in curve if p["alpha"] > best["alpha"]), key=lambda p: p["alpha"])
    if not above:
        return best["alpha"], f"the trained weights keep every source-task drop within its max_drop ({limits})"
    broke = above[0]
    worst = [f"{name} drop {broke['drops'][name]:.3f} > {budget[name]:g}" for name in budget
             if broke["drops"].get(name, 0.0) > budget[name] + 1e-12]
    return best["alpha"], (f"the largest alpha whose every source-task drop is within its max_drop ({limits}); "
                           f"alpha {broke['alpha']:g} broke {', '.join(worst)}")


# ------------------------------------------------------------------ the weights at alpha


class Interpolation:
    """A model whose weights can be set to base + alpha x (tuned - base)."""

    def __init__(self, spec: JobSpec, model_dir: str, trained: Path, device: str):
        from orchestrator.forgetting.measure import load_base_model

        self.adapters = spec.method.kind in ADAPTER_KINDS
        quantization = None
        if spec.method.kind == "qlora":
            from orchestrator.models.build import bnb_config

            quantization = bnb_config(spec.method)
        m = spec.model
        if self.adapters:
            from peft import PeftModel

            base = load_base_model(model_dir, m.revision, m.trust_remote_code, quantization, device)
            self.model = PeftModel.from_pretrained(base, str(trained))
            self.pairs = _adapter_pairs(self.model)
        else:
            self.model = load_base_model(str(trained), None, m.trust_remote_code, None, device)
            base = load_base_model(model_dir, m.revision, m.trust_remote_code, None, "cpu").state_dict()
            self.pairs = _weight_pairs(self.model, base)
        self.model.eval()

    def set(self, alpha: float) -> None:
        import torch

        with torch.no_grad():
            for param, start, end in self.pairs:
                param.copy_((start.float() + alpha * (end.float() - start.float())).to(param.dtype))

    def save(self, out: Path) -> None:
        self.model.save_pretrained(str(out), safe_serialization=True)


def _adapter_pairs(model) -> list[tuple[Any, Any, Any]]:
    """(parameter, its value at alpha 0, at alpha 1) for every weight of the adapter: lora_B
    scaled from zero; modules_to_save copies from their original module."""
    import torch

    pairs = []
    named = dict(model.named_parameters())
    for name, param in named.items():
        if ".lora_B." in name or ".lora_embedding_B." in name:
            end = param.detach().clone()
            pairs.append((param, torch.zeros_like(end), end))
        elif ".modules_to_save." in name:
            head, _, rest = name.partition(".modules_to_save.")
            original = named.get(f"{head}.original_module.{rest.split('.', 1)[1]}")
            if original is not None:
                pairs.append((param, original.detach().clone(), param.detach().clone()))
    if not pairs:
        raise RepairError("the adapter has no lora_B weights to scale")
    return pairs


def _weight_pairs(model, base: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """(parameter, base value, trained value) for every weight the fine-tune changed."""
    import torch

    pairs = []
    for name, param in model.named_parameters():
        start = base.get(name)
        if start is None or start.shape != param.shape:
            raise RepairError(f"the base model has no weight {name} of shape {tuple(param.shape)}; the run's model "
                              "was not trained from this base")
        end = param.detach().to("cpu", copy=True)
        if not torch.equal(start.to(end.dtype), end):
            pairs.append((param, start, end))
    return pairs


# ------------------------------------------------------------------------------ the repair


def repair(spec: JobSpec, artifact: Path, model_dir: str, tasks: list[PreparedTask], target: PreparedTask | None,
           eval_set, base_values: dict[str, float] | None, max_drop: float | None = None,
           progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Search alpha for the job's artifact and make the chosen weights the artifact. The
    summary's repair block, with the whole curve. `base_values`: the base model's task values
    as the job recorded them (drops are taken from them, as the report's are); None measures
    them at alpha 0."""
    import torch
    from accelerate import Accelerator

    from orchestrator.forgetting.evaluate import PREFERENCE_COLUMN, evaluate_target, evaluate_tasks
    from orchestrator.models.build import load_tokenizer

    started = time.perf_counter()
    unrepaired = unrepaired_dir(artifact)
    trained = unrepaired if unrepaired.is_dir() else artifact  # a repair again starts from the trained weights
    if not trained.is_dir():
        raise RepairError(f"no trained weights at {artifact}: the job left no artifact to repair")
    budget = budgets(spec, max_drop)
    if not budget:
        raise RepairError("no source task has a max_drop to repair to; pass --max-drop or set forgetting.max_drop")
    on_gpu = spec.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    accelerator = Accelerator(cpu=not on_gpu)
    tokenizer = load_tokenizer(model_dir, spec.model)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    progress("loading the base and the trained weights")
    weights = Interpolation(spec, model_dir, trained, device)
    metrics = {t.name: task_metric(t) for t in spec.forgetting.tasks}
    target_metric = "exact_match" if target is not None else "loss"
    table = None  # preference pairs measured on full weights: the base's log-probabilities are their reference
    if eval_set is not None and PREFERENCE_COLUMN in eval_set.column_names and not weights.adapters:
        from orchestrator.models.preference import reference_table

        weights.set(0.0)
        table = reference_table(weights.model, eval_set, pad_id, spec.training.per_device_batch_size, device, False)

    def evaluate(alpha: float) -> Point:
        progress(f"alpha {alpha:g}")
        weights.set(alpha)
        values = evaluate_tasks(accelerator, weights.model, tasks, tokenizer, pad_id, shard=False)
        if target is not None:
            goal = evaluate_tasks(accelerator, weights.model, [target], tokenizer, pad_id, shard=False)[TARGET]
        elif eval_set is not None:
            goal = evaluate_target(accelerator, weights.model, eval_set, pad_id, spec.training.per_device_batch_size,
                                   shard=False, dpo=spec.training.dpo, reference_table=table)["eval_loss"]
        else:
            goal = None
        return Point(alpha, values, goal)

    base = dict(base_values) if base_values else evaluate(0.0).tasks
    settings = spec.forgetting.repair
    points = search(evaluate, grid(settings.grid if settings else 11), settings.refine if settings else 3,
                    lambda p: passes(p.as_dict(base, budget, metrics)["drops"], budget))
    curve = [p.as_dict(base, budget, metrics) for p in points]
    alpha, reason = choose(curve, budget)
    progress(f"writing the weights at alpha {alpha:g}")
    weights.set(alpha)
    _replace_artifact(weights, artifact, trained)
    by_alpha = {p["alpha"]: p for p in curve}
    top, low = by_alpha.get(1.0), by_alpha.get(0.0)
    kept = None
    if top and low and top["target"] is not None and low["target"] is not None:
        gain = float(change(target_metric, low["target"], top["target"])["delta"])
        got = float(change(target_metric, low["target"], by_alpha[alpha]["target"])["delta"])
        kept = got / gain if gain else None
    return {"method": "interpolate", "alpha": alpha, "reason": reason, "budget": budget,
            "target_metric": target_metric, "target_gain_kept": kept, "base": base, "curve": curve,
            "artifact": str(artifact), "unrepaired": str(unrepaired_dir(artifact)),
            "seconds": round(time.perf_counter() - started, 3)}


def unrepaired_dir(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".unrepaired")


def _replace_artifact(weights: Interpolation, artifact: Path, trained: Path) -> None:
    """Write the weights beside the artifact, keep the trained ones as *.unrepaired, then move
    the new ones in: a crash in between leaves the trained weights and no half-written dir."""
    staging = artifact.with_name(artifact.name + ".repairing")
    shutil.rmtree(staging, ignore_errors=True)
    weights.save(staging)
    for extra in trained.iterdir():  # the tokenizer and anything else the job left beside the weights
        if extra.is_file() and not (staging / extra.name).exists():
            shutil.copy2(extra, staging / extra.name)
    unrepaired = unrepaired_dir(artifact)
    if trained == artifact:
        os.replace(artifact, unrepaired)
    else:
        shutil.rmtree(artifact, ignore_errors=True)
    os.replace(staging, artifact)


def summary_block(result: dict[str, Any]) -> dict[str, Any]:
    """What summary.json says of a repair: the alpha and why (the curve is in forgetting.json)."""
    return {k: v for k, v in result.items() if k not in ("curve", "base")}


def repair_run(spec: JobSpec, artifact: Path, model_dir: str, tasks: list[PreparedTask],
               target: PreparedTask | None, eval_cache: str | None, base_values: dict[str, float] | None, console,
               max_drop: float | None = None) -> dict[str, Any]:
    """The repair step of a job (forgetting.repair) and of `ftctl repair`: the repair's result,
    its curve printed as a table and the choice said in one line."""
    from orchestrator.data.pipeline import load_prepared

    eval_set = load_prepared(Path(eval_cache)) if eval_cache and target is None else None
    with console.status("repair: interpolating between the base and the trained weights") as status:
        result = repair(spec, artifact, model_dir, tasks, target, eval_set, base_values, max_drop,
                        progress=lambda m: status.update(f"repair: {m}"))
    console.print(curve_table(result))
    kept = result["target_gain_kept"]
    console.print(f"repaired: alpha {result['alpha']:g} ({result['reason']})"
                  + (f"; it keeps {kept:.0%} of the target gain" if kept is not None else "")
                  + f"; trained weights kept in {result['unrepaired']}", soft_wrap=True)
    if result["alpha"] == 0.0:
        console.print("[yellow]warning:[/yellow] alpha 0 is the base model: nothing of the fine-tune is kept")
    return result


def curve_table(result: dict[str, Any]):
    from rich.table import Table

    curve = result["curve"]
    names = list(curve[0]["tasks"]) if curve else []
    table = Table(title="repair: source-task drops and target by alpha")
    for col in ("alpha", *names, f"target ({result['target_metric']})", "within budget"):
        table.add_column(col)
    for p in curve:
        mark = "[bold]" if p["alpha"] == result["alpha"] else ""
        cells = [f"{p['drops'].get(n, 0.0):+.3f}" for n in names]
        target = "" if p["target"] is None else f"{p['target']:.3f}"
        table.add_row(f"{mark}{p['alpha']:g}", *cells, target, "yes" if p["passed"] else "[red]no[/red]")
    return table


def repair_finished_run(run_dir: Path, max_drop: float | None, console) -> dict[str, Any]:
    """`ftctl repair RUN_DIR`: repair a finished run's artifact after the fact, with the job's own
    tasks, target and recorded base values; forgetting.json/.png and summary.json are
    rewritten to describe the repaired artifact. Raises RepairError when it cannot."""
    import json

    import yaml

    from orchestrator.forgetting.report import apply_repair, forgetting_table, write_forgetting_report
    from orchestrator.forgetting.tasks import prepare_tasks, target_task
    from orchestrator.models.build import load_tokenizer, resolve_model_dir
    from orchestrator.rundir import RunDir
    from orchestrator.summary import RunSummary

    run = RunDir(Path(run_dir))
    if not run.job.is_file() or not run.summary.is_file():
        raise RepairError(f"{run.root} is not a finished run dir (no job.yaml or summary.json)")
    spec = JobSpec.model_validate(yaml.safe_load(run.job.read_text()))
    kind = spec.method.kind
    if kind == "head":
        raise RepairError("method head trains a classifier over a frozen backbone; there is nothing to interpolate")
    lora = spec.method.lora
    if lora is not None and kind in ADAPTER_KINDS and (lora.use_dora or lora.bias != "none"):
        raise RepairError("the adapter trains DoRA magnitudes or biases, so scaling it does not interpolate")
    if not spec.forgetting.tasks:
        raise RepairError("the job measured no source task, so no alpha can be chosen by their drops")
    if spec.data.eval is None:
        raise RepairError("the job has no data.eval to measure the target gain on")
    if not budgets(spec, max_drop):
        raise RepairError("no source task of the job has a max_drop; pass --max-drop")
    artifact = run.artifact(kind)
    if not artifact.is_dir() and not unrepaired_dir(artifact).is_dir():
        raise RepairError(f"the run left no {artifact.name}/ to repair (its status: "
                          f"{json.loads(run.summary.read_text()).get('status')})")
    report = json.loads(run.forgetting_json.read_text()) if run.forgetting_json.is_file() else None
    base = {name: t["base"] for name, t in report["tasks"].items()} if report else None
    model_dir = str(resolve_model_dir(spec.model, progress=lambda _m: None))
    tokenizer = load_tokenizer(model_dir, spec.model)
    tasks, target = prepare_tasks(spec, tokenizer), target_task(spec)
    eval_cache = None
    if target is None:
        from orchestrator.data.pipeline import prepare_dataset

        eval_cache = str(prepare_dataset(spec.data.eval, spec.data, tokenizer).cache_dir)
    result = repair_run(spec, artifact, model_dir, tasks, target, eval_cache, base, console, max_drop)
    summary = RunSummary.from_json(json.loads(run.summary.read_text()))
    artifacts = {**summary.artifacts, run.artifact_key(kind): str(artifact),
                 run.artifact_key(kind) + "_unrepaired": result["unrepaired"]}
    if run.merged.is_dir():  # made from the trained adapter: it is not this artifact any more
        aside = unrepaired_dir(run.merged)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(run.merged, aside)
        artifacts.pop("merged", None)
        console.print(f"merged/ was made from the trained adapter: moved to {aside}; merge the repaired one with "
                      f"`ftctl merge --adapter {artifact} --out DIR`", soft_wrap=True)
    forgetting = summary.forgetting
    if report is not None:
        report = apply_repair(report, result)
        write_forgetting_report(report, run.forgetting_json, run.forgetting_png)
        console.print(forgetting_table(report))
        forgetting = report["summary"]
    import dataclasses

    summary = dataclasses.replace(summary, repair=summary_block(result), artifacts=artifacts, forgetting=forgetting)
    summary.write(run.summary)
    if run.root.joinpath("promotion.json").is_file():
        console.print("note: the registry holds the version this run registered before the repair; a refresh with "
                      "forgetting.repair registers the repaired adapter", soft_wrap=True)
    return result
