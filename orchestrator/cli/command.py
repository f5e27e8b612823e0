"""How a command is declared: once, next to its function.

    @command("demo-data", Arg("out_dir", type=Path, help="directory to write JSONL files into"))
    def cmd_demo_data(out_dir: Path) -> int:
        \"\"\"Write the demo datasets (target task, held-out source tasks, classification) as JSONL.\"\"\"

The docstring is the command's help; each Arg is what `ArgumentParser.add_argument` takes, and
its dest is one of the function's parameters: `ftctl` calls the function with the parsed values
as keyword arguments and exits with what it returns (an ExitCode). `group=` puts it under a
word such as `launch`; `exits=` adds what its exit codes mean to its --help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

CommandFunc = TypeVar("CommandFunc", bound=Callable[..., int])


class Arg:
    """One argument of a command: what `ArgumentParser.add_argument` takes."""

    def __init__(self, *flags: str, **options: Any) -> None:
        self.flags = flags
        self.options = options


@dataclass(frozen=True)
class Group:
    """A command that only names subcommands, such as `launch` in `ftctl launch slurm`."""

    name: str
    help: str
    metavar: str  # what usage lines call the subcommand, e.g. TARGET


@dataclass(frozen=True)
class Command:
    """A declared command: its name, the function that runs it and the arguments it takes."""

    name: str
    func: Callable[..., int]
    args: tuple[Arg, ...]
    group: Group | None
    exits: str  # what each exit code means, added to the description

    @property
    def path(self) -> str:
        """The words that name it on the command line: "validate", "launch slurm"."""
        return f"{self.group.name} {self.name}" if self.group else self.name

    @property
    def help(self) -> str:
        return self.func.__doc__ or ""

    @property
    def description(self) -> str:
        return f"{self.help} {self.exits}" if self.exits else self.help


COMMANDS: list[Command] = []
"""Every declared command, in the order their modules declared them."""


def command(name: str, *args: Arg, group: Group | None = None, exits: str = "") -> Callable[[CommandFunc], CommandFunc]:
    """Declare the decorated function as the command `name` (within `group`, if given) taking `args`."""
    def declare(func: CommandFunc) -> CommandFunc:
        new = Command(name, func, args, group, exits)
        if any(c.path == new.path for c in COMMANDS):
            raise ValueError(f"`ftctl {new.path}` is declared twice (again by {func.__module__}.{func.__name__}); "
                             f"give one of them another name")
        COMMANDS.append(new)
        return func

    return declare


def commands_in(module_name: str) -> list[Command]:
    """The commands a module declared, in its order."""
    return [c for c in COMMANDS if c.func.__module__ == module_name]
