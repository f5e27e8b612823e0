"""The arguments several commands share, and what they name: the job file, the registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from orchestrator.cli.command import Arg
from orchestrator.cli.output import print_notes, print_problems

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec
    from orchestrator.store.registry import Registry

JOB_FILE = Arg("job", type=Path, help="job file (YAML)")
OVERRIDES = Arg("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
ADDRESS = Arg("--address", default=None, help="Ray address")
NAME = Arg("name")
AS_JSON = Arg("--json", action="store_true", dest="as_json", help="print JSON")
HOME = Arg("--home", type=Path, default=None,
           help="FTCTL_HOME holding the registry (default: $FTCTL_HOME or ~/.cache/ftctl)")
METRIC = Arg("--metric", default="exact_match", choices=["exact_match", "loss", "perplexity", "choice", "choice_norm"],
             help="metric for --tasks (default exact_match; choice and choice_norm read multiple-choice rows)")
MAX_EXAMPLES = Arg("--max-examples", type=int, default=200, help="rows per task (default 200)")


def load_job(job: Path, overrides: Sequence[str], check_files: bool = True) -> JobSpec | None:
    """The job file with `overrides` applied, or None after listing every problem in it on
    stderr (the command then exits INVALID). What loading changed on its own (a warmup cut to
    fit the run, a method block dropped for a kind set here) is said first, a warning each."""
    from orchestrator.spec import Note, SpecError, load_spec

    notes: list[Note] = []
    try:
        spec = load_spec(job, overrides, check_files=check_files, notes=notes)
    except SpecError as err:
        print_notes(job, notes)
        print_problems(job, err)
        return None
    print_notes(job, notes)
    return spec


def store_under(home: Path | None) -> str | None:
    """The store file under `--home`; None: the default (FTCTL_REGISTRY, else FTCTL_HOME's)."""
    from orchestrator.store.jobs import store_file

    return str(store_file(home)) if home else None


def registry_under(home: Path | None) -> Registry:
    """The adapter registry in the store under `--home` (see store_under)."""
    from orchestrator.refresh.promote import open_registry

    return open_registry(store_under(home))
