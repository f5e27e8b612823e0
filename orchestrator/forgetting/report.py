"""forgetting.json and forgetting.png from the evaluations a run made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.forgetting.metrics import HIGHER_IS_BETTER, change
from orchestrator.spec.models import JobSpec


def build_forgetting_report(spec: JobSpec, history: list[dict[str, Any]]) -> dict[str, Any]:
    """history: [{"step": s, task: value, ...}, ...] with the base model at the first entry."""
    tasks: dict[str, Any] = {}
    for task in spec.forgetting.tasks:
        evals = [{"step": h["step"], "value": h[task.name]} for h in history if task.name in h]
        if not evals:
            continue
        base, final = evals[0]["value"], evals[-1]["value"]
        tasks[task.name] = {"metric": task.metric, "higher_is_better": HIGHER_IS_BETTER[task.metric],
                            "base": base, "evals": evals, "final": final, **change(task.metric, base, final)}
    worst = max(tasks.items(), key=lambda kv: kv[1]["drop"], default=None)
    summary = {
        "tasks": len(tasks),
        "tasks_worse": sorted(n for n, t in tasks.items() if t["worse"]),
        "largest_drop": {"task": worst[0], "drop": worst[1]["drop"]} if worst else None,
    }
    return {"tasks": tasks, "summary": summary}


def write_forgetting_report(report: dict[str, Any], run_dir: Path) -> None:
    (run_dir / "forgetting.json").write_text(json.dumps(report, indent=2))
    plot_forgetting(report, run_dir / "forgetting.png")


def plot_forgetting(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, task in report["tasks"].items():
        steps = [e["step"] for e in task["evals"]]
        values = [e["value"] for e in task["evals"]]
        ax.plot(steps, values, marker="o", label=f"{name} ({task['metric']})")
    ax.set_xlabel("step")
    ax.set_ylabel("metric on held-out source task")
    ax.set_title("forgetting: source tasks during fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
