"""A problem in a job file, the error that carries all of them at once, and the notes that say
what loading changed in a job instead of refusing it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file: where, what, and (when known) a likely fix."""

    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.path or "(job file)"
        text = f"{where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class Note(Problem):
    """Something loading changed in a job instead of refusing it (see `spec.adjustments`):
    where, what it did, and (when useful) how to choose otherwise. Commands print each one,
    as a warning; it never fails the job."""


class SpecError(Exception):
    """Raised with every problem found; `str()` lists them one per line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: object, choices: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest choice, or None when nothing is close."""
    if not isinstance(word, str):
        return None
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"did you mean '{close[0]}'?" if close else None
