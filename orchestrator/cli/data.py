"""`ftctl demo-data` and `ftctl build-base`: the built-in datasets and tiny base model."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console, fail, refuse
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


@command(
    "build-base",
    Arg("--from-recipe", action="store_true",
        help="pre-train from the recipe (about two minutes on two cores) instead of installing the build the "
             "package ships; replaces the cached copy"),
    Arg("--out", type=Path, default=None, metavar="DIR",
        help="with --from-recipe: write the build and its manifest.json into DIR instead of the cache; "
             "--out orchestrator/models/tiny/shipped refreshes the shipped copy after a recipe change"),
)
def cmd_build_base(from_recipe: bool, out: Path | None) -> int:
    """Install (or find) the built-in tiny base model and print its per-task exact match."""
    from orchestrator.models.tiny import build, manifest

    def say(message: str) -> None:
        console.print(f"  {escape(message)}", soft_wrap=True)

    if out is not None and not from_recipe:
        return refuse(["--out writes a fresh build from the recipe: add --from-recipe"])
    with console.status(f"preparing {build.TINY_BASE_ID}"):
        if out is not None:
            try:
                written = build.build_shipped_copy(out, progress=say)
            except ValueError as err:
                return fail(escape(str(err)), ExitCode.INVALID)
            where = out
            console.print(f"wrote recipe v{written['recipe_version']} and its {manifest.MANIFEST_FILE} "
                          f"({len(written['files'])} files) to {where}")
        else:
            where = build.rebuild_tiny_base(progress=say) if from_recipe else build.ensure_tiny_base(progress=say)
    report = json.loads((where / build.REPORT_FILE).read_text())
    console.print(f"{build.TINY_BASE_ID} at {where}")
    for task, value in report["exact_match"].items():
        console.print(f"  {task:<12} exact match {value:.3f}")
    console.print(f"  target task  exact match {report['target_exact_match']:.3f} (not pre-trained)")
    return ExitCode.OK
