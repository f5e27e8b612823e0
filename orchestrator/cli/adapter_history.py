"""What `ftctl adapters show` and `adapters diff` compute from the registry: each version's
values along its chain of refreshes, what differs between two versions, and the drift plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.rundir import RunDir

if TYPE_CHECKING:
    from orchestrator.store.registry import Registry


def history(registry: Registry, name: str) -> list[dict[str, Any]]:
    """One row per version: lineage, verdict, and its values against the base model and its
    predecessor (as measured when it was judged), so drift along the chain is visible."""
    head = registry.head(name)
    rows = []
    for v in registry.versions(name):
        measured = v.record.get("measured") or {}
        job = v.record.get("job") or {}
        candidate = measured.get("candidate") or {}
        base = measured.get("base") or {}
        # Gated versions: the values of the promotion measurement; others: their job's report.
        in_job = job.get("forgetting_tasks") or {}
        tasks = candidate.get("tasks") or {t: v["final"] for t, v in in_job.items()}
        base = base or {"target": None, "tasks": {t: v["base"] for t, v in in_job.items()}}
        rows.append({
            "version": v.version, "parent": v.parent, "current": head is not None and head.version == v.version,
            "verdict": v.verdict, "reason": v.reason, "created_at": v.created_at, "job_id": v.job_id,
            "failed_gates": [g["gate"] for g in v.record.get("gates") or [] if not g["passed"]],
            "data_files": len(v.record["data"].get("files") or []) or None,
            "target": candidate.get("target", (job.get("final_eval") or {}).get("eval_loss")),
            "base_target": base.get("target"),
            "tasks": tasks, "base_tasks": base.get("tasks") or {},
            "drift": {t: tasks[t] - base["tasks"][t] for t in tasks if t in (base.get("tasks") or {})
                      and tasks[t] is not None},
        })
    return rows


def diff_versions(registry: Registry, name: str, a: int, b: int) -> dict[str, Any]:
    """What differs between two versions: data, job settings, measured values, weights."""
    va, vb = registry.get(name, a), registry.get(name, b)
    ra, rb = va.record, vb.record
    out: dict[str, Any] = {"a": a, "b": b}
    out["base_same"] = ra["base"]["digest"] == rb["base"]["digest"]
    out["data_same"] = ra["data"]["content"] == rb["data"]["content"]
    files_a, files_b = set(ra["data"].get("files") or []), set(rb["data"].get("files") or [])
    out["data_files"] = {"only_a": sorted(files_a - files_b), "only_b": sorted(files_b - files_a)}
    out["spec"] = _spec_changes(RunDir(va.run_dir).job, RunDir(vb.run_dir).job)
    rows = {r["version"]: r for r in history(registry, name)}
    ha, hb = rows[a], rows[b]
    out["target"] = {"a": ha["target"], "b": hb["target"]}
    tasks = sorted(set(ha["tasks"]) | set(hb["tasks"]))
    out["tasks"] = {t: {"a": ha["tasks"].get(t), "b": hb["tasks"].get(t)} for t in tasks}
    out["weights"] = _weight_change(Path(va.adapter), Path(vb.adapter))
    return out


def _spec_changes(a: Path, b: Path) -> dict[str, list]:
    """The job settings that differ between two job files: dotted path -> [in a, in b]."""
    import yaml

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): node}

    if not a.is_file() or not b.is_file():
        return {}
    fa, fb = flat(yaml.safe_load(a.read_text())), flat(yaml.safe_load(b.read_text()))
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _weight_change(a: Path, b: Path) -> dict[str, float] | None:
    """Relative Frobenius distance between the two adapters' weight updates (B @ A), summed over modules."""
    from orchestrator.merging.adapters import AdapterError, load_adapter

    try:
        ua, ub = load_adapter(a), load_adapter(b)
    except (AdapterError, OSError) as err:
        return {"error": str(err)}  # type: ignore[dict-item]
    if ua.on_parameters or ub.on_parameters:  # their updates' layout needs the base model's classes
        return {"error": "adapters on bare parameters (target_parameters, e.g. MoE experts) are not compared"}  # type: ignore[dict-item]
    import torch

    num, den = 0.0, 0.0
    for key, update in ua.updates.items():
        other = ub.updates.get(key)
        if other is None:
            continue
        da, db = update.delta().double(), other.delta().double()
        num += float(torch.linalg.norm(db - da) ** 2)
        den += float(torch.linalg.norm(da) ** 2)
    return {"relative_change": (num ** 0.5) / (den ** 0.5) if den else float("nan"), "modules": len(ua.updates)}


def plot_drift(rows: list[dict[str, Any]], name: str, out: Path) -> None:
    """Each source task's value per version, with the base model's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for r in rows for t in r["tasks"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in tasks:
        points = [(r["version"], r["tasks"][task]) for r in rows if r["tasks"].get(task) is not None]
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
        base = next((r["base_tasks"][task] for r in rows if task in r["base_tasks"]), None)
        if base is not None:
            ax.axhline(base, color=line.get_color(), linestyle="--", linewidth=0.8)
    for r in rows:
        if r["verdict"] == "rejected":
            ax.axvline(r["version"], color="red", alpha=0.2, linewidth=6)
    ax.set_xlabel("version (red: not promoted)")
    ax.set_ylabel("source-task metric (dashed: base model)")
    ax.set_title(f"{name}: drift across refreshes")
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)

