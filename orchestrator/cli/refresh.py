"""`ftctl adapters ...`, `ftctl schedule ...` and `ftctl refresh`: thin commands over the
registry, the controller's schedules and the refresh job.

`adapters` reads and writes the registry in $FTCTL_HOME/controller/jobs.db directly (run
it on the head node, or wherever FTCTL_HOME is shared); `schedule` talks to the controller
through Ray, since schedules fire inside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.cli import error_text, print_problems, refuse
from orchestrator.exitcodes import ExitCode

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _store(home: Path | None) -> str | None:
    """The store file under `--home`; None: the default (FTCTL_REGISTRY, else FTCTL_HOME's)."""
    from orchestrator.store.jobs import store_file

    return str(store_file(home)) if home else None


def _registry(home: Path | None):
    from orchestrator.refresh.promote import open_registry

    return open_registry(_store(home))


def _guard(action: Callable[[], int | None]) -> int:
    from orchestrator.store.registry import RegistryError
    from orchestrator.store.schedules import ScheduleError

    try:
        result = action()
    except (RegistryError, ScheduleError, ValueError, KeyError) as err:
        err_console.print(f"[red]✗[/red] {escape(error_text(err))}", soft_wrap=True)
        return ExitCode.INVALID
    return ExitCode.OK if result is None else result


# -------------------------------------------------------------------------- adapters


def cmd_adapters_list(home: Path | None, as_json: bool) -> int:
    """Every adapter name in the registry: versions, the promoted one, the latest verdict."""
    def show() -> None:
        registry = _registry(home)
        rows = []
        for name in registry.names():
            versions = registry.versions(name)
            head = registry.head(name)
            last = versions[-1]
            rows.append({"name": name, "versions": len(versions), "promoted": head.version if head else None,
                         "latest": last.version, "latest_verdict": last.verdict, "latest_reason": last.reason})
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table()
        for column in ("adapter", "versions", "promoted", "latest", "verdict", "reason"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["name"], str(r["versions"]), f"v{r['promoted']}" if r["promoted"] else "-",
                          f"v{r['latest']}", r["latest_verdict"], escape(r["latest_reason"]))
        console.print(table)

    return _guard(show)


def history(registry, name: str) -> list[dict[str, Any]]:
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


def cmd_adapters_show(name: str, home: Path | None, as_json: bool, plot: Path | None) -> int:
    """An adapter's history: every version, its lineage and verdict, target loss and each
    source task against the base model (cumulative drift), and the promotion events."""
    def show() -> None:
        registry = _registry(home)
        rows = history(registry, name)
        if not rows:
            registry.get(name, 1)  # raises the "no adapter named" message
        events = registry.events(name)
        if plot is not None:
            plot_drift(rows, name, plot)
        if as_json:
            print(json.dumps({"versions": rows, "events": events,
                              "records": [v.record for v in registry.versions(name)]}, indent=2, default=str))
            return
        tasks = sorted({t for r in rows for t in r["tasks"]})
        table = Table(title=f"adapter {name}")
        for column in ("version", "parent", "verdict", "eval loss", *[f"{t} (drift)" for t in tasks], "failed gates"):
            table.add_column(column, overflow="fold")
        for r in rows:
            marker = " *" if r["current"] else ""
            cells = [f"{r['tasks'][t]:.3f} ({r['drift'][t]:+.3f})" if t in r["drift"] else
                     (f"{r['tasks'][t]:.3f}" if r["tasks"].get(t) is not None else "-") for t in tasks]
            table.add_row(f"v{r['version']}{marker}", f"v{r['parent']}" if r["parent"] else "-", r["verdict"],
                          f"{r['target']:.4f}" if r["target"] is not None else "-", *cells,
                          ", ".join(r["failed_gates"]) or ("-" if r["verdict"] == "registered" else "none"))
        first = next((r for r in rows if r["base_tasks"]), None)
        if first:
            console.print("base model: eval loss " + (f"{first['base_target']:.4f}" if first["base_target"] is not None
                                                      else "-") + ", " + ", ".join(
                f"{t} {v:.3f}" for t, v in sorted(first["base_tasks"].items())))
        console.print(table)
        console.print("* promoted now; drift = value minus the base model's")
        for e in events:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at"]))
            moves = (f"v{e['from_version']} -> v{e['to_version']}" if e["from_version"] else f"v{e['to_version']}")
            console.print(f"  {when} {e['action']:<9} {moves:<10} {escape(e['reason'])}", soft_wrap=True)
        if plot is not None:
            console.print(f"drift plot: {plot}")

    return _guard(show)


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


def cmd_adapters_promote(name: str, version: int, reason: str, force: bool, home: Path | None) -> int:
    """Serve a version from now on (gates are not run again; a rejected version needs --force)."""
    def act() -> None:
        v = _registry(home).promote(name, version, reason, force=force)
        console.print(f"{name} v{v.version} is promoted")

    return _guard(act)


def cmd_adapters_rollback(name: str, to: int | None, reason: str, home: Path | None) -> int:
    """Serve an earlier promoted version again (default: the newest promoted one before the current)."""
    def act() -> None:
        v = _registry(home).rollback(name, to, reason)
        console.print(f"{name} rolled back to v{v.version}")

    return _guard(act)


def diff_versions(registry, name: str, a: int, b: int) -> dict[str, Any]:
    """What differs between two versions: data, job settings, measured values, weights."""
    va, vb = registry.get(name, a), registry.get(name, b)
    ra, rb = va.record, vb.record
    out: dict[str, Any] = {"a": a, "b": b}
    out["base_same"] = ra["base"]["digest"] == rb["base"]["digest"]
    out["data_same"] = ra["data"]["content"] == rb["data"]["content"]
    files_a, files_b = set(ra["data"].get("files") or []), set(rb["data"].get("files") or [])
    out["data_files"] = {"only_a": sorted(files_a - files_b), "only_b": sorted(files_b - files_a)}
    out["spec"] = _spec_changes(Path(va.run_dir) / "job.yaml", Path(vb.run_dir) / "job.yaml")
    rows = {r["version"]: r for r in history(registry, name)}
    ha, hb = rows[a], rows[b]
    out["target"] = {"a": ha["target"], "b": hb["target"]}
    tasks = sorted(set(ha["tasks"]) | set(hb["tasks"]))
    out["tasks"] = {t: {"a": ha["tasks"].get(t), "b": hb["tasks"].get(t)} for t in tasks}
    out["weights"] = _weight_change(Path(va.adapter), Path(vb.adapter))
    return out


def _spec_changes(a: Path, b: Path) -> dict[str, list]:
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


def cmd_adapters_diff(name: str, a: int, b: int, home: Path | None, as_json: bool) -> int:
    """Compare two versions: data, settings, measured values and how far the weights moved."""
    def show() -> None:
        d = diff_versions(_registry(home), name, a, b)
        if as_json:
            print(json.dumps(d, indent=2, default=str))
            return
        console.print(f"{name} v{a} -> v{b}")
        console.print(f"  base model: {'same' if d['base_same'] else 'DIFFERENT'}; training data: "
                      f"{'same' if d['data_same'] else 'different'}")
        for version, files in ((a, d["data_files"]["only_a"]), (b, d["data_files"]["only_b"])):
            for f in files:
                console.print(f"    only in v{version}: {f}")
        for key, (va, vb) in d["spec"].items():
            console.print(f"  {key}: {va} -> {vb}")
        if d["target"]["a"] is not None and d["target"]["b"] is not None:
            console.print(f"  eval loss: {d['target']['a']:.4f} -> {d['target']['b']:.4f}")
        for task, values in d["tasks"].items():
            if values["a"] is not None and values["b"] is not None:
                console.print(f"  {task}: {values['a']:.3f} -> {values['b']:.3f} ({values['b'] - values['a']:+.3f})")
        if d["weights"] and "relative_change" in d["weights"]:
            console.print(f"  adapter weights moved by {d['weights']['relative_change']:.3f} (relative, over "
                          f"{d['weights']['modules']} modules)")

    return _guard(show)


# ------------------------------------------------------------------------- schedules


def _client(address: str | None, start: bool):
    from orchestrator.api import Client

    return Client(address=address, start=start)


def _with_schedules(address: str | None, action: Callable[[Any], int | None], start: bool = False) -> int:
    from orchestrator.api import ControllerUnavailable

    try:
        return _guard(lambda: action(_client(address, start)))
    except ControllerUnavailable as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.FAILED


def _refreshable_job(name: str, job: Path, overrides: list[str], cron: str | None = None):
    """The job file as a refreshable JobSpec, or the exit code after saying what is wrong
    (a bad name or cron, an invalid job, or a job with nothing to gate on)."""
    from orchestrator.cron import parse_cron
    from orchestrator.refresh.jobs import check_refreshable
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.store.schedules import ScheduleError, check_name

    try:
        check_name(name)
        if cron is not None:
            parse_cron(cron)
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    except (ValueError, ScheduleError) as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}")
        return ExitCode.INVALID
    problems = check_refreshable(spec)
    if problems:
        err_console.print(f"[red]✗[/red] {job} cannot be refreshed on a schedule: " + "; ".join(problems))
        return ExitCode.INVALID
    return spec


def cmd_schedule_add(name: str, cron: str, job: Path, overrides: list[str], missed: str, priority: int, team: str,
                     address: str | None) -> int:
    """Refresh adapter NAME on a cron schedule (UTC): each firing trains the job warm-started
    from the promoted version, on the data its glob matches then, and promotes the result
    only when every gate passes."""
    spec = _refreshable_job(name, job, overrides, cron)
    if isinstance(spec, int):
        return spec

    def add(client) -> None:
        s = client.schedule_add(name, cron, job, overrides, missed, priority, team)
        console.print(f"schedule {name}: {cron} (UTC), missed firings: {missed}; next {_when(s['next_slot'])}")

    return _with_schedules(address, add, start=True)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


def cmd_schedule_list(address: str | None, as_json: bool) -> int:
    """Schedules, when each fires next, and their latest firings."""
    def show(client) -> None:
        rows = client.schedules()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table()
        for column in ("schedule", "cron", "missed", "state", "next", "last firing"):
            table.add_column(column, overflow="fold")
        for s in rows:
            last = s["firings"][-1] if s["firings"] else None
            table.add_row(s["name"], s["cron"], s["missed"], "paused" if s["paused"] else "active",
                          _when(s["next_slot"]),
                          f"{_when(last['slot'])} {last['kind']} {last['job_id'] or ''} {escape(last['note'])}"
                          if last else "-")
        console.print(table)

    return _with_schedules(address, show)


def cmd_schedule_show(name: str, address: str | None, as_json: bool) -> int:
    """One schedule and every firing it made (slot, kind, job, note)."""
    def show(client) -> None:
        s = client.schedule(name)
        if as_json:
            print(json.dumps(s, indent=2))
            return
        console.print(f"{s['name']}: {s['cron']} (UTC), missed: {s['missed']}, "
                      f"{'paused' if s['paused'] else 'next ' + _when(s['next_slot'])}")
        for f in s["firings"]:
            console.print(f"  {_when(f['slot'])} {f['kind']:<9} {f['job_id'] or '-':<24} {escape(f['note'])}",
                          soft_wrap=True)

    return _with_schedules(address, show)


def cmd_schedule_simple(action: str, name: str, address: str | None) -> int:
    """remove | pause | resume | run-now."""
    def act(client) -> None:
        if action == "remove":
            client.schedule_remove(name)
            console.print(f"schedule {name} removed (its adapter versions stay in the registry)")
        elif action in ("pause", "resume"):
            s = client.schedule_pause(name, action == "pause")
            console.print(f"schedule {name} {'paused' if s['paused'] else 'resumed; next ' + _when(s['next_slot'])}")
        else:
            job_id = client.schedule_run_now(name)
            note = client.schedule(name)["firings"][-1]["note"]
            if not job_id:
                err_console.print(f"[red]✗[/red] {name}: nothing queued: {escape(note)}", soft_wrap=True)
                return ExitCode.FAILED
            console.print(f"{name}: queued {job_id} ({note})")

    return _with_schedules(address, act)


def cmd_schedule_render(name: str, job: Path, overrides: list[str], cron: str, target: str, image: str,
                        namespace: str, pvc: str, cpus: int | None, time_limit: str | None) -> int:
    """For clusters without a long-running controller: print a Slurm scrontab entry or a
    KubeRay RayCronJob that runs `ftctl refresh NAME` on the schedule."""
    spec = _refreshable_job(name, job, overrides, cron)
    if isinstance(spec, int):
        return spec
    from orchestrator.launchers.errors import LaunchError
    from orchestrator.launchers.kubernetes import K8sOptions, render_manifests, to_yaml
    from orchestrator.launchers.slurm import render_scrontab

    try:
        if target == "slurm":
            print(render_scrontab(name, cron, job.resolve(), overrides, spec, cpus=cpus, time_limit=time_limit))
        else:
            options = K8sOptions(image=image, namespace=namespace, pvc=pvc, cron=cron, refresh=name)
            print(to_yaml(render_manifests(spec, options)))
    except LaunchError as err:
        return refuse(err.problems)
    return ExitCode.OK


def cmd_refresh(name: str, job: Path, overrides: list[str], address: str | None, home: Path | None,
                run_dir: Path | None = None) -> int:
    """Run one refresh of adapter NAME in the foreground (what a scrontab entry or a RayCronJob
    runs): warm-start from the promoted version, train on what the data glob matches now,
    register, gate and promote."""
    from orchestrator.data.errors import DataError
    from orchestrator.refresh.jobs import refresh_spec
    from orchestrator.spec import SpecError

    spec = _refreshable_job(name, job, overrides)
    if isinstance(spec, int):
        return spec
    try:
        refreshed = refresh_spec(spec.model_dump(mode="json"), name, _registry(home).head(name))
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    except DataError as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}")
        return ExitCode.FAILED
    from orchestrator.pipeline import default_run_dir, run_job

    return run_job(refreshed, run_dir=run_dir or default_run_dir(refreshed), address=address, console=console,
                   store=_store(home))


# --------------------------------------------------------------------------- parsers


def add_parsers(sub) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add `adapters`, `schedule` and `refresh` to the CLI; their dispatchers."""
    home_help = "FTCTL_HOME holding the registry (default: $FTCTL_HOME or ~/.cache/ftctl)"
    adapters = sub.add_parser("adapters", help="The adapter registry: versions, lineage, promotion.",
                              description="The adapter registry: versions, lineage, promotion.")
    acts = adapters.add_subparsers(dest="action", metavar="ACTION", required=True)

    def registry_command(action: str, fn: Callable, json_flag: bool = False):
        p = acts.add_parser(action, help=fn.__doc__, description=fn.__doc__)
        if action != "list":
            p.add_argument("name")
        if json_flag:
            p.add_argument("--json", action="store_true", dest="as_json")
        p.add_argument("--home", type=Path, default=None, help=home_help)
        return p

    registry_command("list", cmd_adapters_list, json_flag=True)
    p = registry_command("show", cmd_adapters_show, json_flag=True)
    p.add_argument("--plot", type=Path, default=None, help="also write the drift plot (PNG) here")
    p = registry_command("promote", cmd_adapters_promote)
    p.add_argument("version", type=int)
    p.add_argument("--reason", default="", help="recorded in the history")
    p.add_argument("--force", action="store_true", help="promote a version its gates rejected")
    p = registry_command("rollback", cmd_adapters_rollback)
    p.add_argument("--to", type=int, default=None, help="the version to serve (default: the one promoted before)")
    p.add_argument("--reason", default="", help="recorded in the history")
    p = registry_command("diff", cmd_adapters_diff, json_flag=True)
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)

    schedule = sub.add_parser("schedule", help="Scheduled adapter refreshes (fired by the controller).",
                              description="Scheduled adapter refreshes (fired by the controller).")
    acts = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = acts.add_parser("add", help=cmd_schedule_add.__doc__, description=cmd_schedule_add.__doc__)
    p.add_argument("name", help="the schedule, and the adapter name its versions register under")
    p.add_argument("--cron", required=True, help='five-field cron in UTC, e.g. "0 3 * * *"')
    p.add_argument("--job", type=Path, required=True, help="job file (lora/qlora, with data.eval and forgetting gates)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--missed", choices=["catch-up", "skip"], default="catch-up",
                   help="slots missed while no controller ran: fire once for them (catch-up) or not (skip)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--team", default="")
    p.add_argument("--address", default=None, help="Ray address")
    for action, doc in (("list", cmd_schedule_list.__doc__), ("show", cmd_schedule_show.__doc__),
                        ("remove", "Remove a schedule (its adapter versions stay)."),
                        ("pause", "Stop firing until resumed."),
                        ("resume", "Fire again from the next slot (slots passed while paused are not made up)."),
                        ("run-now", "Fire one refresh now, outside the cron.")):
        p = acts.add_parser(action, help=doc, description=doc)
        if action != "list":
            p.add_argument("name")
        else:
            p.add_argument("--json", action="store_true", dest="as_json")
        if action == "show":
            p.add_argument("--json", action="store_true", dest="as_json")
        p.add_argument("--address", default=None, help="Ray address")
    p = acts.add_parser("render", help=cmd_schedule_render.__doc__, description=cmd_schedule_render.__doc__)
    p.add_argument("name")
    p.add_argument("--cron", required=True)
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.add_argument("--target", choices=["slurm", "k8s"], required=True)
    p.add_argument("--image", default="ftctl:latest", help="k8s: container image with ftctl installed")
    p.add_argument("--namespace", default="default")
    p.add_argument("--pvc", default="ftctl-runs", help="k8s: PVC holding FTCTL_HOME (the registry) and run dirs")
    p.add_argument("--cpus", type=int, default=None, help="slurm: CPUs for the refresh (default: the job's)")
    p.add_argument("--time", dest="time_limit", default=None, help="slurm: time limit, e.g. 02:00:00")

    p = sub.add_parser("refresh", help=cmd_refresh.__doc__, description=cmd_refresh.__doc__)
    p.add_argument("name", help="adapter name in the registry")
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.add_argument("--address", default=None, help="Ray address (default: embedded local Ray)")
    p.add_argument("--home", type=Path, default=None, help=home_help)
    p.add_argument("--run-dir", type=Path, default=None, help="default runs/<name>-<timestamp>")

    def adapters_cmd(a) -> int:
        return {
            "list": lambda: cmd_adapters_list(a.home, a.as_json),
            "show": lambda: cmd_adapters_show(a.name, a.home, a.as_json, a.plot),
            "promote": lambda: cmd_adapters_promote(a.name, a.version, a.reason, a.force, a.home),
            "rollback": lambda: cmd_adapters_rollback(a.name, a.to, a.reason, a.home),
            "diff": lambda: cmd_adapters_diff(a.name, a.a, a.b, a.home, a.as_json),
        }[a.action]()

    def schedule_cmd(a) -> int:
        if a.action == "add":
            return cmd_schedule_add(a.name, a.cron, a.job, a.overrides, a.missed, a.priority, a.team, a.address)
        if a.action == "list":
            return cmd_schedule_list(a.address, a.as_json)
        if a.action == "show":
            return cmd_schedule_show(a.name, a.address, a.as_json)
        if a.action == "render":
            return cmd_schedule_render(a.name, a.job, a.overrides, a.cron, a.target, a.image, a.namespace, a.pvc,
                                       a.cpus, a.time_limit)
        return cmd_schedule_simple(a.action, a.name, a.address)

    return {"adapters": adapters_cmd, "schedule": schedule_cmd,
            "refresh": lambda a: cmd_refresh(a.name, a.job, a.overrides, a.address, a.home, a.run_dir)}
