"""Every `ftctl` command the README and the job files' header comments show runs as written.

Three kinds of example, each checked against the real parser (`build_parser`) and, where it
names a job file, against the real validation (`ftctl validate` in-process):

- commands: the lines of code blocks and the commands heading a job file. They must parse,
  use only flags their command has, and a job file they name must exist and be valid with the
  overrides they give.
- mentions: `ftctl ...` in running text. Checked like commands, except that they may leave
  out required parts (`ftctl adapters promote`, `ftctl refresh NAME`); anything they do say
  (a flag, a value, an override) must be right.
- synopses: the first column of the README's Commands table, with metavariables (JOB.yaml,
  ID), `[optional]` parts and `a|b` alternatives. Every command path and alternative must
  exist, every flag must be one of that command's, and `a|b` values of a flag with choices
  must be among them.

Placeholders (upper-case names such as JOB.yaml, `<timestamp>`, `...`) are taken as the
strings they are; only a job file that is not a placeholder is read.
"""

from __future__ import annotations

import io
import re
import shlex
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cli.command import COMMANDS, Command
from orchestrator.cli.program import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
INLINE = re.compile(r"`(ftctl [^`]+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")
PLACEHOLDER_JOB = re.compile(r"^[A-Z][A-Z0-9_]*\.ya?ml$")


@dataclass(frozen=True)
class Example:
    where: str  # README.md:LINE or configs/NAME.yaml:LINE
    text: str   # the command as shown, starting with "ftctl "
    kind: str   # command, mention or synopsis

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


# ---------------------------------------------------------------------------- finding them


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _commands_in_code(code: str) -> list[tuple[int, str]]:
    """The `ftctl ...` commands of shell lines, each with the (0-based) line it starts on:
    continuations joined, comments dropped, `&&`, `;` and `|` split."""
    found = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        first, line = i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"&&|;|\s\|\s", line):
            if part.strip().startswith("ftctl "):
                found.append((first, " ".join(part.split())))
    return found


def _blank(text: str, start: int, end: int) -> str:
    """`text` with [start, end) replaced by spaces, newlines kept (line numbers stay right)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _commands_table(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """The synopses in the first column of the README's Commands table, and the spans of
    those cells (so that the prose pass skips them)."""
    section = re.search(r"^## Commands\n(.*?)(?=^##)", text, re.M | re.S)
    assert section, "README.md has no '## Commands' section"
    synopses, cells = [], []
    for row in re.finditer(r"^\|(.*?)(?<!\\)\|", section.group(1), re.M):
        start, end = section.start(1) + row.start(1), section.start(1) + row.end(1)
        for span in re.finditer(r"`([^`]+)`", text[start:end]):
            synopses.append((_line_of(text, start), span.group(1).replace("\\|", "|")))
        cells.append((start, end))
    return synopses, cells


def readme_examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    examples = []
    prose = text
    for block in FENCE.finditer(text):
        if block.group(1) in SHELL_BLOCKS:
            first = _line_of(text, block.start(2))
            for offset, command in _commands_in_code(block.group(2)):
                examples.append(Example(f"README.md:{first + offset}", command, "command"))
        prose = _blank(prose, block.start(), block.end())
    synopses, cells = _commands_table(text)
    for line, synopsis in synopses:
        if synopsis.split()[0] != "ftctl":  # `schedule list|show NAME` continues a cell's `ftctl schedule add`
            synopsis = f"ftctl {synopsis}"
        examples.append(Example(f"README.md:{line}", synopsis, "synopsis"))
    for start, end in cells:
        prose = _blank(prose, start, end)
    for span in INLINE.finditer(prose):
        examples.append(Example(f"README.md:{_line_of(text, span.start())}", " ".join(span.group(1).split()),
                                "mention"))
    return examples


def config_examples() -> list[Example]:
    examples = []
    for path in CONFIGS:
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        where = f"configs/{path.name}"
        for i, line in enumerate(header, 1):
            if line.startswith("ftctl "):
                examples.append(Example(f"{where}:{i}", line, "command"))
        joined = "\n".join(header)
        for span in INLINE.finditer(joined):
            examples.append(Example(f"{where}:{_line_of(joined, span.start())}", " ".join(span.group(1).split()),
                                    "mention"))
    return examples


EXAMPLES = readme_examples() + config_examples()


# ---------------------------------------------------------------------------- checking them


def _parse(argv: list[str]) -> tuple[dict | None, str]:
    """The parsed arguments, or None and argparse's complaint."""
    complaint = io.StringIO()
    try:
        with redirect_stderr(complaint):
            return vars(build_parser().parse_args(argv)), ""
    except SystemExit:
        return None, complaint.getvalue().strip().splitlines()[-1]


# The program's own flags, which come before the command's name.
TOP_FLAGS = {flag for action in build_parser()._actions if not action.dest == "help"
             for flag in action.option_strings}


def _commands_named(words: list[str]) -> tuple[list[Command], list[str], list[str]]:
    """The commands the leading words name (several for `start|stop`), the words after them,
    and problems with the names."""
    by_path = {c.path: c for c in COMMANDS}
    groups = {c.group.name for c in COMMANDS if c.group is not None}
    while words and words[0] in TOP_FLAGS:  # `ftctl --verbose COMMAND ...`
        words = words[1:]
    if not words:
        return [], [], ["names no command"]
    if words[0] in groups:
        if len(words) < 2:  # the group alone, e.g. `ftctl launch`
            return [c for c in COMMANDS if c.group and c.group.name == words[0]], [], []
        paths, rest = [f"{words[0]} {name}" for name in words[1].split("|")], words[2:]
    else:
        paths, rest = [words[0]], words[1:]
    unknown = [p for p in paths if p not in by_path]
    return [by_path[p] for p in paths if p in by_path], rest, [f"`ftctl {p}` is not a command" for p in unknown]


def _options(commands: list[Command]) -> dict[str, dict]:
    """Every flag of these commands, with its add_argument options."""
    found: dict[str, dict] = {"-h": {}, "--help": {}}
    for cmd in commands:
        for arg in cmd.args:
            for flag in arg.flags:
                if flag.startswith("-"):
                    found[flag] = arg.options
    return found


def _bare(word: str) -> str:
    return word.strip("[](),")


def _positional_choices(commands: list[Command]) -> set[str]:
    return {str(c) for cmd in commands for arg in cmd.args if not arg.flags[0].startswith("-")
            for c in arg.options.get("choices") or ()}


def flag_problems(example: Example) -> list[str]:
    """Command names that do not exist, flags the command does not have, and `a|b`
    alternatives that are not among a flag's (or a positional argument's) choices."""
    words = shlex.split(example.text, comments=True)[1:]
    commands, rest, problems = _commands_named(words)
    options = _options(commands)
    positional = _positional_choices(commands)
    names = " or ".join(f"`ftctl {c.path}`" for c in commands)
    for i, word in enumerate(rest):
        flag = _bare(word).split("=")[0]
        after_flag = i > 0 and FLAG.match(_bare(rest[i - 1]))
        if "|" in word and not after_flag and positional:  # `controller start|stop|status`
            problems += [f"{names}: {alt} is not one of {', '.join(sorted(positional))}"
                         for alt in _bare(word).split("|") if alt and alt not in positional]
        if not FLAG.match(flag):
            continue
        if flag not in options:
            problems.append(f"{names} has no option {flag}")
            continue
        value = _bare(rest[i + 1]) if i + 1 < len(rest) else ""
        choices = options[flag].get("choices")
        if choices and "|" in value:
            problems += [f"{flag} {alt}: not one of {', '.join(choices)}" for alt in value.split("|")
                         if alt not in choices]
    return problems


def usage_problems(example: Example, capsys) -> list[str]:
    """Parse the example; validate the job file it names with its overrides."""
    parsed, complaint = _parse(shlex.split(example.text, comments=True)[1:])
    if parsed is None:
        if example.kind == "mention" and "the following arguments are required" in complaint:
            return []  # a mention may leave out what it does not talk about
        return [f"does not parse: {complaint}"]
    job, overrides = parsed.get("job"), parsed.get("overrides") or []
    if job is None or PLACEHOLDER_JOB.match(job.name) or "<" in str(job):
        return []
    if not (REPO / job).is_file():
        return [f"job file {job} does not exist"]
    capsys.readouterr()
    code = main(["validate", str(job), *overrides])
    said = capsys.readouterr()
    return [] if code == 0 else [f"`ftctl validate {job} {' '.join(overrides)}` exits {code}:\n{said.err}"]


def check(example: Example, capsys) -> list[str]:
    problems = flag_problems(example)
    if example.kind != "synopsis":
        problems += usage_problems(example, capsys)
    return problems


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e.where} {e.text[:70]}")
def test_example_runs_as_written(example, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the examples name files relative to the repository root
    assert check(example, capsys) == [], str(example)


def test_the_examples_are_found():
    texts = {e.text for e in EXAMPLES}
    # The override example of the Commands section, the quickstart, and a continued code line.
    assert ("ftctl run configs/quickstart.yaml training.max_steps=20 resources.workers=1 "
            "forgetting.tasks.0.max_examples=50") in texts
    assert "ftctl run configs/quickstart.yaml" in texts
    assert any(t.startswith("ftctl merge --base builtin:tiny-base") and t.endswith("--out merged-ab") for t in texts)
    # Each job file's opening command, and every row of the Commands table.
    for path in CONFIGS:
        assert any(e.where == f"configs/{path.name}:1" and e.kind == "command" for e in EXAMPLES), path.name
    in_the_table = {c.path for e in EXAMPLES if e.kind == "synopsis"
                    for c in _commands_named(shlex.split(e.text, comments=True)[1:])[0]}
    assert {c.path for c in COMMANDS} - in_the_table == set()


@pytest.mark.parametrize("text, kind, words", [
    ("ftctl run configs/quickstart.yaml --run-dri out", "command", "has no option --run-dri"),
    ("ftctl run configs/quickstart.yaml training.max_stepz=20", "command", "did you mean 'max_steps'?"),
    ("ftctl run configs/quickstart.yaml training.max_steps=20 training.epochs=1", "command", "not both"),
    ("ftctl run configs/missing.yaml", "command", "does not exist"),
    ("ftctl run --address", "mention", "expected one argument"),
    ("ftctl estimate configs/quickstart.yaml --gpu-memory lots", "mention", "invalid float value"),
    ("ftctl controller restart", "mention", "invalid choice: 'restart'"),
    ("ftctl controller start|restart [--port P]", "synopsis", "restart is not one of"),
    ("ftctl adapters remove NAME", "mention", "`ftctl adapters remove` is not a command"),
    ("ftctl merge --adapter A --method ties|sum --out D", "synopsis", "sum: not one of"),
    ("ftctl schedule add|drop NAME --cron C --job JOB.yaml", "synopsis", "`ftctl schedule drop` is not a command"),
    ("ftctl list [--state S] [--jsn]", "synopsis", "has no option --jsn"),
])
def test_a_wrong_example_is_caught(text, kind, words, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    problems = check(Example("test", text, kind), capsys)
    assert any(words in p for p in problems), problems


def test_a_mention_may_leave_out_required_parts(capsys):
    assert check(Example("test", "ftctl refresh NAME", "mention"), capsys) == []
    assert check(Example("test", "ftctl refresh NAME", "command"), capsys) != []
