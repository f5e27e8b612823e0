"""`ftctl adapters list|show|promote|rollback|diff`: the adapter registry, read and moved by hand.

The registry lives in $FTCTL_HOME/controller/jobs.db and is opened directly (run these on the
head node, or wherever FTCTL_HOME is shared); no controller is needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from orchestrator.cli.adapter_history import diff_versions, history, plot_drift
from orchestrator.cli.arguments import AS_JSON, HOME, NAME, registry_under
from orchestrator.cli.command import Arg, Group, command
from orchestrator.cli.output import console, print_rows
from orchestrator.cli.refusals import exit_code_of

ADAPTERS = Group("adapters", "The adapter registry: versions, lineage, promotion.", metavar="ACTION")
REASON = Arg("--reason", default="", help="recorded in the history")


@command("list", AS_JSON, HOME, group=ADAPTERS)
def cmd_adapters_list(as_json: bool, home: Path | None) -> int:
    """Every adapter name in the registry: versions, the promoted one, the latest verdict."""
    def show() -> None:
        registry = registry_under(home)
        rows = []
        for name in registry.names():
            versions = registry.versions(name)
            head = registry.head(name)
            last = versions[-1]
            rows.append({"name": name, "versions": len(versions), "promoted": head.version if head else None,
                         "latest": last.version, "latest_verdict": last.verdict, "latest_reason": last.reason})
        print_rows(rows, as_json, ("adapter", "versions", "promoted", "latest", "verdict", "reason"),
                   lambda r: [r["name"], str(r["versions"]), f"v{r['promoted']}" if r["promoted"] else "-",
                              f"v{r['latest']}", r["latest_verdict"], escape(r["latest_reason"])])

    return exit_code_of(show)


@command("show", NAME, AS_JSON, HOME,
         Arg("--plot", type=Path, default=None, help="also write the drift plot (PNG) here"),
         group=ADAPTERS)
def cmd_adapters_show(name: str, as_json: bool, home: Path | None, plot: Path | None) -> int:
    """An adapter's history: every version, its lineage and verdict, target loss and each
    source task against the base model (cumulative drift), and the promotion events."""
    def show() -> None:
        registry = registry_under(home)
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
        print_history(name, rows, events)
        if plot is not None:
            console.print(f"drift plot: {plot}")

    return exit_code_of(show)


def print_history(name: str, rows: list[dict], events: list[dict]) -> None:
    """The versions as a table (values and drift per source task), then the promotion events."""
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


@command("promote", NAME, HOME, Arg("version", type=int), REASON,
         Arg("--force", action="store_true", help="promote a version its gates rejected"),
         group=ADAPTERS)
def cmd_adapters_promote(name: str, home: Path | None, version: int, reason: str, force: bool) -> int:
    """Serve a version from now on (gates are not run again; a rejected version needs --force)."""
    def promote() -> None:
        v = registry_under(home).promote(name, version, reason, force=force)
        console.print(f"{name} v{v.version} is promoted")

    return exit_code_of(promote)


@command("rollback", NAME, HOME,
         Arg("--to", type=int, default=None, help="the version to serve (default: the one promoted before)"),
         REASON,
         group=ADAPTERS)
def cmd_adapters_rollback(name: str, home: Path | None, to: int | None, reason: str) -> int:
    """Serve an earlier promoted version again (default: the newest promoted one before the current)."""
    def rollback() -> None:
        v = registry_under(home).rollback(name, to, reason)
        console.print(f"{name} rolled back to v{v.version}")

    return exit_code_of(rollback)


@command("diff", NAME, AS_JSON, HOME, Arg("a", type=int), Arg("b", type=int), group=ADAPTERS)
def cmd_adapters_diff(name: str, as_json: bool, home: Path | None, a: int, b: int) -> int:
    """Compare two versions: data, settings, measured values and how far the weights moved."""
    def show() -> None:
        d = diff_versions(registry_under(home), name, a, b)
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

    return exit_code_of(show)
