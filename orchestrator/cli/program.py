"""The `ftctl` program: a parser built from the declared commands, and main() calling the one named."""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from orchestrator.cli import adapters, control, data, evaluate, jobs, launch, merge, schedules
from orchestrator.cli.command import Command, commands_in
from orchestrator.cli.output import err_console
from orchestrator.exitcodes import ExitCode

# Where the commands are declared, in the order `ftctl --help` lists them.
COMMAND_MODULES = (jobs, evaluate, merge, control, launch, data, adapters, schedules)

CHOSEN = "ftctl_command"  # where the parsed arguments keep the chosen Command


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every declared command, each remembering its Command."""
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="Fine-tuning control plane for LLMs on Ray: validate, run and measure forgetting.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="let Ray's own start-up lines and notices through (also: FTCTL_VERBOSE=1)")
    top = parser.add_subparsers(metavar="COMMAND")
    groups: dict[str, Any] = {}  # group name -> its subparsers
    for module in COMMAND_MODULES:
        for cmd in commands_in(module.__name__):
            where = top
            if cmd.group is not None:
                if cmd.group.name not in groups:
                    group = top.add_parser(cmd.group.name, help=cmd.group.help, description=cmd.group.help)
                    groups[cmd.group.name] = group.add_subparsers(metavar=cmd.group.metavar, required=True)
                where = groups[cmd.group.name]
            sub = where.add_parser(cmd.name, help=cmd.help, description=cmd.description)
            for arg in cmd.args:
                sub.add_argument(*arg.flags, **arg.options)
            sub.set_defaults(**{CHOSEN: cmd})
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """Parse `argv`, taking `key.sub=value` overrides wherever they stand on the line.

    argparse binds a command's `overrides` (nargs="*") at the first run of positional
    arguments, so overrides written after an option (`schedule add NAME --cron C --job J
    key=value`) would be "unrecognized". Those are appended to the overrides, in the order
    written: the last one of a key still wins."""
    namespace, extra = parser.parse_known_args(argv)
    values = vars(namespace)
    stray = [arg for arg in extra if arg.startswith("-") or "=" not in arg]
    if extra and (stray or "overrides" not in values):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        values["overrides"] = [*values["overrides"], *extra]
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names (default: sys.argv) with its parsed arguments; its exit code."""
    parser = build_parser()
    values = parse(parser, argv)
    cmd: Command | None = values.pop(CHOSEN, None)
    if values.pop("verbose"):
        os.environ["FTCTL_VERBOSE"] = "1"  # read where Ray is started or joined, here and in the runners
    if cmd is None:
        parser.print_help()
        return ExitCode.OK
    try:
        return cmd.func(**values)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a last guard: users get a sentence, not a traceback
        if cmd.path == "validate":  # validate promises exit 2, never a traceback
            err_console.print(f"[red]✗[/red] could not validate {values['job']}: {exc}")
            return ExitCode.INVALID
        raise
