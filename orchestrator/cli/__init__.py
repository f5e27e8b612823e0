"""`ftctl`: thin typed commands over the package's functions, one module per group of commands.

Each command is declared once, next to its function (see command.py); program.py builds the
parser from those declarations. Heavy libraries (torch, ray, transformers, datasets) are
imported inside the commands that need them, so `ftctl --help` and `ftctl validate` start in
well under a second.
"""

from orchestrator.cli.jobs import cmd_estimate
from orchestrator.cli.output import console, err_console, error_text, print_problems, refuse
from orchestrator.cli.program import build_parser, main

__all__ = ["build_parser", "cmd_estimate", "console", "err_console", "error_text", "main", "print_problems", "refuse"]
