"""`ftctl demo-data` and `ftctl build-base`: the built-in datasets and tiny base model."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console
from orchestrator.exitcodes import ExitCode


@command("demo-data", Arg("out_dir", type=Path, help="directory to write JSONL files into"))
def cmd_demo_data(out_dir: Path) -> int:
    """Write the demo datasets (target task, held-out source tasks, classification) as JSONL."""
    from orchestrator.builtin.demo_data import write_demo_data

    written = write_demo_data(out_dir)
    for name, path in sorted(written.items()):
        console.print(f"  {name:<24} {path}")
    console.print(f"[green]✓[/green] wrote {len(written)} files to {out_dir}")
    return ExitCode.OK


@command("build-base")
def cmd_build_base() -> int:
    """Build (or find) the built-in tiny base model and print its per-task exact match."""
    from orchestrator.models.tiny.build import ensure_tiny_base

    with console.status("building builtin:tiny-base") as status:
        out = ensure_tiny_base(progress=lambda msg: status.update(f"building builtin:tiny-base: {msg}"))
    report = json.loads((out / "build_report.json").read_text())
    console.print(f"builtin:tiny-base at {out}")
    for task, value in report["exact_match"].items():
        console.print(f"  {task:<12} exact match {value:.3f}")
    console.print(f"  target task  exact match {report['target_exact_match']:.3f} (not pre-trained)")
    return ExitCode.OK
