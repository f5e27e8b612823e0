"""Each command is declared once, next to its function, and the parser `ftctl` builds from the
declarations knows exactly those commands; every one answers --help; the README's exit-code
table is ExitCode's."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from orchestrator.cli import build_parser, main
from orchestrator.cli import command as declarations
from orchestrator.cli.command import COMMANDS, Arg, command
from orchestrator.exitcodes import ExitCode

README = Path(__file__).resolve().parents[2] / "README.md"


def leaf_parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words that name it, parser) for every command the parser runs, groups opened."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield " ".join(words), parser
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, (*words, name))


LEAVES = list(leaf_parsers(build_parser()))


def test_every_command_in_the_parser_is_declared_exactly_once():
    in_parser = [path for path, _ in LEAVES]
    declared = [c.path for c in COMMANDS]
    assert len(set(declared)) == len(declared), f"declared more than once: {sorted(declared)}"
    assert sorted(in_parser) == sorted(declared)
    assert {"validate", "launch slurm", "adapters show", "schedule run-now", "refresh"} <= set(declared)


def test_declaring_a_command_twice_is_refused(monkeypatch):
    monkeypatch.setattr(declarations, "COMMANDS", list(COMMANDS))
    with pytest.raises(ValueError, match="`ftctl validate` is declared twice"):
        command("validate")(lambda: 0)
    assert [c.path for c in declarations.COMMANDS] == [c.path for c in COMMANDS]


@pytest.mark.parametrize("path,parser", LEAVES, ids=[path for path, _ in LEAVES])
def test_each_command_function_takes_exactly_its_arguments(path, parser):
    cmd = next(c for c in COMMANDS if c.path == path)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert set(inspect.signature(cmd.func).parameters) == dests, path
    assert cmd.func.__doc__, f"{path}: its docstring is its --help"


@pytest.mark.parametrize("path", [c.path for c in COMMANDS] + ["launch", "adapters", "schedule"])
def test_help_of_every_command_exits_0(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per paragraph: the description can be found whole
    with pytest.raises(SystemExit) as exited:
        main([*path.split(), "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: ftctl {path} ")
    cmd = next((c for c in COMMANDS if c.path == path), None)
    if cmd is not None:
        assert " ".join(cmd.description.split()) in out


def test_arg_keeps_what_add_argument_takes():
    arg = Arg("--json", action="store_true", dest="as_json")
    assert arg.flags == ("--json",) and arg.options == {"action": "store_true", "dest": "as_json"}


def test_readme_exit_code_table_is_exit_code():
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", README.read_text(), flags=re.MULTILINE)
    assert [(int(code), name) for code, name, _ in rows] == [(c.value, c.name) for c in ExitCode]
