"""Where commands write: results to stdout, problems to stderr, one ✗ line each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from rich.console import Console
from rich.markup import escape

from orchestrator.exitcodes import ExitCode

if TYPE_CHECKING:
    from orchestrator.spec import Note

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> ExitCode:
    """Say on stderr what went wrong (`message` is rich markup; escape what you did not write); return `code`."""
    # soft_wrap: a long message stays one line, so it can be grepped and copied whole.
    err_console.print(f"[red]✗[/red] {message}", soft_wrap=True)
    return code


def note(message: str) -> None:
    """Say on stderr what a command did on the way (started a Ray head, replaced a dead one);
    `message` is plain text."""
    err_console.print(escape(message), soft_wrap=True)


def refuse(problems: Iterable[str]) -> ExitCode:
    """Say every problem with the command's options, one line each; exit 2."""
    for problem in problems:
        fail(escape(problem))
    return ExitCode.INVALID


def error_text(err: BaseException) -> str:
    """An exception's message as a sentence (a KeyError's str() is its repr)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def print_problems(job: Path, err: Exception) -> None:
    """List every problem a SpecError found in the job file, with its field path and hint."""
    problems = getattr(err, "problems", [])
    err_console.print(f"[red]✗[/red] {job}: {len(problems)} problem(s)")
    for p in problems:
        where = escape(p.path or "(job file)")
        hint = f"  [dim]{escape(p.hint)}[/dim]" if p.hint else ""
        err_console.print(f"  [bold]{where}[/bold]: {escape(p.message)}{hint}", soft_wrap=True)


def print_notes(job: Path, notes: Iterable[Note]) -> None:
    """Say on stderr what loading the job file changed on its own (each a spec Note), one
    warning line each, so that stdout stays the command's result."""
    for n in notes:
        hint = f"  [dim]{escape(n.hint)}[/dim]" if n.hint else ""
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(job))}: [bold]{escape(n.path)}[/bold]: "
                          f"{escape(n.message)}{hint}", soft_wrap=True)


def print_rows(rows: list[dict[str, Any]], as_json: bool, columns: Iterable[str],
               cells: Callable[[dict[str, Any]], list[str]]) -> None:
    """`rows` as JSON (for scripts), or as a table with one row of `cells(row)` each."""
    import json

    from rich.table import Table

    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*cells(row))
    console.print(table)
