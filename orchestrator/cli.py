"""`ftctl`: thin typed commands over the package's functions.

Heavy libraries (torch, ray, transformers, datasets) are imported inside the commands
that need them, so `ftctl --help` and `ftctl validate` start in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def cmd_validate(job: Path, overrides: list[str]) -> int:
    """Check a job file and list every problem in it."""
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return EXIT_INVALID
    console.print(f"[green]✓[/green] {job} is valid: job '{spec.name}', method {spec.method.kind}, "
                  f"{spec.resources.workers} worker(s), strategy {spec.resources.strategy}")
    return EXIT_OK


def cmd_run(job: Path, overrides: list[str], run_dir: Path | None, address: str | None) -> int:
    """Validate the job, then train it on Ray (embedded local Ray unless an address is given)."""
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return EXIT_INVALID
    from orchestrator.training.run import run_job

    return run_job(spec, run_dir=run_dir, address=address, console=console)


def cmd_demo_data(out_dir: Path) -> int:
    """Write the demo datasets (target task, held-out source tasks, classification) as JSONL."""
    from orchestrator.models.tiny.demo_data import write_demo_data

    written = write_demo_data(out_dir)
    for name, path in sorted(written.items()):
        console.print(f"  {name:<24} {path}")
    console.print(f"[green]✓[/green] wrote {len(written)} files to {out_dir}")
    return EXIT_OK


def cmd_build_base() -> int:
    """Build (or find) the built-in tiny base model and print its per-task exact match."""
    from orchestrator.models.tiny.build import ensure_tiny_base
    import json

    with console.status("building builtin:tiny-base") as status:
        out = ensure_tiny_base(progress=lambda msg: status.update(f"building builtin:tiny-base: {msg}"))
    report = json.loads((out / "build_report.json").read_text())
    console.print(f"builtin:tiny-base at {out}")
    for task, value in report["exact_match"].items():
        console.print(f"  {task:<12} exact match {value:.3f}")
    console.print(f"  target task  exact match {report['target_exact_match']:.3f} (not pre-trained)")
    return EXIT_OK


def print_problems(job: Path, err: "Exception") -> None:
    problems = getattr(err, "problems", [])
    err_console.print(f"[red]✗[/red] {job}: {len(problems)} problem(s)")
    for p in problems:
        where = escape(p.path or "(job file)")
        hint = f"  [dim]{escape(p.hint)}[/dim]" if p.hint else ""
        err_console.print(f"  [bold]{where}[/bold]: {escape(p.message)}{hint}", soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="Fine-tuning control plane for LLMs on Ray: validate, run and measure forgetting.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help=cmd_validate.__doc__, description=cmd_validate.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")

    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--run-dir", type=Path, default=None, help="output dir (default runs/<name>-<timestamp>)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or embedded local Ray)")

    p = sub.add_parser("demo-data", help=cmd_demo_data.__doc__, description=cmd_demo_data.__doc__)
    p.add_argument("out_dir", type=Path, help="directory to write JSONL files into")

    sub.add_parser("build-base", help=cmd_build_base.__doc__, description=cmd_build_base.__doc__)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": lambda a: cmd_validate(a.job, a.overrides),
    "run": lambda a: cmd_run(a.job, a.overrides, a.run_dir, a.address),
    "demo-data": lambda a: cmd_demo_data(a.out_dir),
    "build-base": lambda a: cmd_build_base(),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130
    except Exception as exc:  # a last guard: users get a sentence, not a traceback
        if args.command == "validate":
            err_console.print(f"[red]✗[/red] could not validate {args.job}: {exc}")
            return EXIT_INVALID
        raise


if __name__ == "__main__":
    sys.exit(main())
