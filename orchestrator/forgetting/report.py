"""forgetting.json, forgetting.png and the printed table, from the evaluations a run made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.forgetting.gates import gates_of
from orchestrator.forgetting.metrics import change, higher_is_better
from orchestrator.forgetting.tasks import task_metric
from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec


def build_forgetting_report(spec: JobSpec, history: list[dict[str, Any]],
                            target_history: list[dict[str, Any]] | None = None, final_step: int | None = None,
                            eval_base: dict[str, float] | None = None,
                            eval_final: dict[str, float] | None = None,
                            kl_history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """history: [{"step": s, task: value, ..., "trips": [...]}, ...], the base model first.
    target_history: [{"step": s, "value": exact match}] on data.eval. final_step: the step
    whose values are final (a rollback keeps an earlier one; default: the last).
    kl_history: the KL meter's [{"step": s, "kl": value, "trips": [...]}]."""
    limits = {g.task: g.max_drop for g in gates_of(spec.forgetting)}
    tasks: dict[str, Any] = {}
    for task in spec.forgetting.tasks:
        evals = [{"step": h["step"], "value": h[task.name]} for h in history if task.name in h]
        if not evals:
            continue
        final = _at(evals, final_step)
        metric = task_metric(task)
        entry = {"metric": metric, "higher_is_better": higher_is_better(metric), "base": evals[0]["value"],
                 "evals": evals, "final_step": final["step"], "final": final["value"],
                 **change(metric, evals[0]["value"], final["value"])}
        if task.name in limits:
            entry["max_drop"] = limits[task.name]
            entry["passed"] = entry["drop"] <= limits[task.name] + 1e-12
        tasks[task.name] = entry
    target = _target(target_history, final_step, eval_base, eval_final)
    kl = _kl(kl_history or [], final_step, spec.forgetting.max_kl)
    tripped = [trip for h in [*history, *(kl_history or [])] for trip in h.get("trips", [])]
    report = {"tasks": tasks, "target": target, "kl": kl}
    return _summarised(report, tripped)


def _summarised(report: dict[str, Any], tripped: list[dict[str, Any]]) -> dict[str, Any]:
    tasks, target, kl = report["tasks"], report["target"], report.get("kl")
    worst = max(tasks.items(), key=lambda kv: kv[1]["drop"], default=None)
    summary = {
        "tasks": len(tasks),
        "tasks_worse": sorted(n for n, t in tasks.items() if t["worse"]),
        "largest_drop": {"task": worst[0], "drop": worst[1]["drop"]} if worst else None,
        "gates_tripped": tripped,
        "negative_transfer": target["worse"] if target else None,
    }
    if kl:
        summary["kl"] = kl["final"]
    if report.get("repair"):
        summary["repair_alpha"] = report["repair"]["alpha"]
    return {**report, "negative_transfer": summary["negative_transfer"], "summary": summary}


def _kl(kl_history: list[dict[str, Any]], final_step: int | None, max_kl: float | None) -> dict[str, Any] | None:
    """The live meter: KL(tuned || base) on the training probe at each measurement (the base
    model is 0 by definition)."""
    if not kl_history:
        return None
    evals = [{"step": h["step"], "value": h["kl"]} for h in kl_history]
    final = _at(evals, final_step)
    out = {"metric": "kl_to_base", "evals": evals, "final_step": final["step"], "final": final["value"]}
    if max_kl is not None:
        out.update(max_kl=max_kl, passed=final["value"] <= max_kl + 1e-12)
    return out


def apply_repair(report: dict[str, Any], repair: dict[str, Any]) -> dict[str, Any]:
    """The report of the job's artifact after repair: each task's and the target's final value
    is the chosen alpha's (the trained model's values stay as unrepaired_final), and the whole
    alpha curve is kept under "repair"."""
    import copy

    report = copy.deepcopy(report)
    chosen = next(p for p in repair["curve"] if p["alpha"] == repair["alpha"])
    for name, entry in report["tasks"].items():
        if name not in chosen["tasks"]:
            continue
        entry.setdefault("unrepaired_final", entry["final"])
        entry["final"] = chosen["tasks"][name]
        entry.update(change(entry["metric"], entry["base"], entry["final"]))
        if "max_drop" in entry:
            entry["passed"] = entry["drop"] <= entry["max_drop"] + 1e-12
    target = report.get("target")
    if target and chosen.get("target") is not None and target["metric"] == repair["target_metric"]:
        target.setdefault("unrepaired_final", target["final"])
        target["final"] = chosen["target"]
        target.update(change(target["metric"], target["base"], target["final"]))
    report["repair"] = repair
    return _summarised({k: report[k] for k in ("tasks", "target", "kl", "repair")},
                       report.get("summary", {}).get("gates_tripped", []))


def _at(evals: list[dict[str, Any]], step: int | None) -> dict[str, Any]:
    if step is not None:
        for e in evals:
            if e["step"] == step:
                return e
    return evals[-1]


def _target(history, final_step, eval_base, eval_final) -> dict[str, Any] | None:
    """The target task before and after: exact match on data.eval when it was measured,
    else data.eval loss. Worse than the base model means negative transfer."""
    if history:
        evals = list(history)
        final = _at(evals, final_step)
        return {"metric": "exact_match", "base": evals[0]["value"], "evals": evals, "final": final["value"],
                **change("exact_match", evals[0]["value"], final["value"])}
    if eval_base and eval_final and "eval_loss" in eval_base and "eval_loss" in eval_final and final_step is None:
        return {"metric": "loss", "base": eval_base["eval_loss"], "evals": [], "final": eval_final["eval_loss"],
                **change("loss", eval_base["eval_loss"], eval_final["eval_loss"])}
    return None


def write_forgetting_report(report: dict[str, Any], json_file: Path, png_file: Path) -> None:
    json_file.write_text(json.dumps(report, indent=2))
    plot_forgetting(report, png_file)


def report_run(spec: JobSpec, run: RunDir, history: list[dict[str, Any]], target_history: list[dict[str, Any]],
               gate: dict[str, Any] | None, eval_base: dict[str, float] | None, eval_final: dict[str, float] | None,
               console, kl_history: list[dict[str, Any]] | None = None,
               repair: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The report step of a job: forgetting.json/.png from the evaluations the workers made
    (rolled back: the kept step's values are the final ones; repaired: the chosen alpha's),
    and the table printed. None when the job measured nothing."""
    if not history and not target_history and not kl_history:
        return None
    report = build_forgetting_report(spec, history, target_history,
                                     final_step=gate.get("kept_step") if gate and gate["action"] == "rollback" else None,
                                     eval_base=eval_base, eval_final=eval_final, kl_history=kl_history)
    if repair and repair.get("curve"):
        report = apply_repair(report, repair)
    write_forgetting_report(report, run.forgetting_json, run.forgetting_png)
    console.print(forgetting_table(report))
    return report


def forgetting_table(report: dict[str, Any], title: str = "forgetting (held-out source tasks)"):
    """A rich Table: per task base, final, absolute and relative change, and its gate."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "metric", "base", "final", "change", "relative", "gate"):
        table.add_column(col)
    for name, task in report["tasks"].items():
        gate = "" if "max_drop" not in task else \
            (f"ok (max drop {task['max_drop']:g})" if task["passed"] else f"[red]tripped (max drop {task['max_drop']:g})[/red]")
        table.add_row(name, task["metric"], f"{task['base']:.3f}", f"{task['final']:.3f}",
                      f"{task['delta']:+.3f}" + (" worse" if task["worse"] else ""),
                      _relative(task), gate)
    target = report.get("target")
    if target:
        table.add_row("[bold]target[/bold] (data.eval)", target["metric"], f"{target['base']:.3f}",
                      f"{target['final']:.3f}", f"{target['delta']:+.3f}" + (" worse" if target["worse"] else ""),
                      _relative(target), "[red]negative transfer[/red]" if target["worse"] else "")
    kl = report.get("kl")
    if kl:
        gate = "" if "max_kl" not in kl else \
            (f"ok (max kl {kl['max_kl']:g})" if kl["passed"] else f"[red]tripped (max kl {kl['max_kl']:g})[/red]")
        label = "KL to the base (training probe" + (", trained weights before repair)" if report.get("repair") else ")")
        table.add_row(label, "kl", "0.000", f"{kl['final']:.4f}", f"{kl['final']:+.4f}",
                      "n/a", gate)
    repair = report.get("repair")
    if repair:
        table.caption = f"repaired: alpha {repair['alpha']:g} ({repair['reason']})"
    return table


def _relative(entry: dict[str, Any]) -> str:
    return f"{entry['relative_delta']:+.1%}" if entry["base"] else "n/a"  # no relative change from 0


def plot_forgetting(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    repair = report.get("repair")
    fig, axes = plt.subplots(1, 2 if repair else 1, figsize=(13 if repair else 7, 4), squeeze=False)
    ax = axes[0][0]
    for name, task in report["tasks"].items():
        steps = [e["step"] for e in task["evals"]]
        values = [e["value"] for e in task["evals"]]
        ax.plot(steps, values, marker="o", label=f"{name} ({task['metric']})")
    target = report.get("target")
    if target and target["evals"]:
        ax.plot([e["step"] for e in target["evals"]], [e["value"] for e in target["evals"]], marker="s",
                color="black", linestyle="--", label=f"target task ({target['metric']})")
    ax.set_xlabel("step")
    ax.set_ylabel("metric")
    ax.set_title("forgetting: source tasks (and the target task) during fine-tuning")
    ax.grid(alpha=0.3)
    kl = report.get("kl")
    if kl:
        twin = ax.twinx()
        twin.plot([e["step"] for e in kl["evals"]], [e["value"] for e in kl["evals"]], color="grey", linestyle=":",
                  marker=".", label="KL to the base (right axis)")
        if "max_kl" in kl:
            twin.axhline(kl["max_kl"], color="grey", linewidth=0.8, alpha=0.6)
        twin.set_ylim(bottom=0)
        twin.set_ylabel("KL(tuned || base) per token")
        twin.legend(fontsize=8, loc="lower right")
    ax.legend(fontsize=8, loc="upper right")
    if repair:
        _plot_repair(axes[0][1], repair)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _plot_repair(ax, repair: dict[str, Any]) -> None:
    """The repair curve: each source task and the target against alpha, the chosen alpha marked."""
    curve = sorted(repair["curve"], key=lambda p: p["alpha"])
    alphas = [p["alpha"] for p in curve]
    for name in curve[0]["tasks"]:
        ax.plot(alphas, [p["tasks"][name] for p in curve], marker="o", markersize=3, label=name)
    if any(p.get("target") is not None for p in curve):
        ax.plot(alphas, [p.get("target") for p in curve], marker="s", markersize=3, color="black", linestyle="--",
                label=f"target ({repair['target_metric']})")
    ax.axvline(repair["alpha"], color="red", linewidth=1, label=f"chosen alpha {repair['alpha']:g}")
    ax.set_xlabel("alpha (0 = base, 1 = trained)")
    ax.set_ylabel("metric")
    ax.set_title("repair by interpolation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
