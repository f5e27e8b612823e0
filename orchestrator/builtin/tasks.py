"""Generated tasks for the built-in tiny base model (pure Python, deterministic).

The base model is pre-trained on the SOURCE tasks, so it really knows them; fine-tuning on
the TARGET task (which it does not know) can then be measured for forgetting of the sources.
All tasks use short lowercase-letter / digit strings so they share one alphabet, which is
what makes forgetting under fine-tuning plausible.

Formats (prompt -> response):

- ``arithmetic``: ``"47+85="`` -> ``"132"``, ``"07+15="`` -> ``"022"`` (two numbers 0-99)
- ``reversal``:   ``"rev kwqfa="`` -> ``"afqwk"`` (3-6 lowercase letters)
- ``sorting``:    ``"sort 93172="`` -> ``"12379"`` (3-6 digits)
- ``kv_recall``:  ``"a=7 b=2 c=0 d=1 ?c"`` -> ``"0"`` (keys a-d, random digit values)
- ``shift`` (target): ``"shift kwz="`` -> ``"lxa"`` (each letter moved one on, z wraps to a)
- ``increment`` (second target): ``"inc 4719="`` -> ``"5820"`` (each digit moved one on, 9
  wraps to 0); a second adapter's task, for multi-adapter merges
- classification: ``{"text": "1379", "label": 1}`` (1 when the digits are sorted)

`multiple_choice` turns source rows into ``{"prompt", "choices", "answer"}``: the right
response among three wrong ones of its kind.
"""

from __future__ import annotations

import random
import string
from typing import Callable

# The source task names are declared in spec (the demo files are named after them, and
# `ftctl validate` knows those names without importing this module).
from orchestrator.spec.paths import SOURCE_TASKS

TARGET_TASK: str = "shift"
SECOND_TARGET_TASK: str = "increment"
_KV_KEYS = "abcd"


def _arithmetic(rng: random.Random) -> dict:
    # Zero-padded to fixed width so digit positions line up, which a tiny model learns fast.
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"prompt": f"{a:02d}+{b:02d}=", "response": f"{a + b:03d}"}


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def _digits(rng: random.Random) -> str:
    return "".join(rng.choices(string.digits, k=rng.randint(3, 6)))


def _reversal(rng: random.Random) -> dict:
    word = _word(rng)
    return {"prompt": f"rev {word}=", "response": word[::-1]}


def _sorting(rng: random.Random) -> dict:
    digits = _digits(rng)
    return {"prompt": f"sort {digits}=", "response": "".join(sorted(digits))}


def _kv_recall(rng: random.Random) -> dict:
    # Keys come in a fixed order and the query key is the last token: recall by key name is
    # then learnable in the build budget. Shuffled keys need an induction circuit, which a
    # model this small only forms after far more steps than a one-minute build allows.
    values = [rng.choice(string.digits) for _ in _KV_KEYS]
    query = rng.randrange(len(_KV_KEYS))
    pairs = " ".join(f"{k}={v}" for k, v in zip(_KV_KEYS, values))
    return {"prompt": f"{pairs} ?{_KV_KEYS[query]}", "response": values[query]}


def _shift(rng: random.Random) -> dict:
    word = _word(rng)
    shifted = "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in word)
    return {"prompt": f"shift {word}=", "response": shifted}


def _increment(rng: random.Random) -> dict:
    digits = _digits(rng)
    return {"prompt": f"inc {digits}=", "response": "".join(str((int(d) + 1) % 10) for d in digits)}


_GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "arithmetic": _arithmetic,
    "reversal": _reversal,
    "sorting": _sorting,
    "kv_recall": _kv_recall,
    TARGET_TASK: _shift,
    SECOND_TARGET_TASK: _increment,
}

ALL_TASKS: tuple[str, ...] = (*SOURCE_TASKS, TARGET_TASK, SECOND_TARGET_TASK)


def _check_task(task: str) -> None:
    if task not in _GENERATORS:
        known = ", ".join(ALL_TASKS)
        raise ValueError(f"unknown tiny-base task {task!r}; use one of: {known}")


def generate(task: str, n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Return ``n`` examples ``{"prompt", "response"}`` of ``task`` with distinct prompts.

    Deterministic for a given ``(task, seed)``. Prompts in ``exclude`` are never returned,
    which is how held-out evaluation sets are kept disjoint from training sets.
    """
    _check_task(task)
    if n < 0:
        raise ValueError(f"n must be zero or positive, got {n}")
    make = _GENERATORS[task]
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"{task}/{seed}")
    banned = exclude or set()
    seen: set[str] = set()
    rows: list[dict] = []
    attempts = 0
    max_attempts = 50 * n + 1000
    while len(rows) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could only make {len(rows)} distinct {task!r} prompts of the {n} asked for "
                f"outside the {len(banned)} excluded ones; ask for fewer examples or exclude fewer"
            )
        row = make(rng)
        if row["prompt"] in seen or row["prompt"] in banned:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows


def generate_classification(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Return ``n`` rows ``{"text": digits, "label": 1 if sorted else 0}``, balanced 50/50.

    Texts are distinct and never in ``exclude``, so eval rows can be kept apart from training.
    """
    if n < 0:
        raise ValueError(f"n must be zero or positive, got {n}")
    rng = random.Random(f"classify/{seed}")
    banned = exclude or set()
    seen: set[str] = set()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"could only make {len(rows)} distinct classification texts of the {n} asked for; "
                "ask for fewer rows or exclude fewer"
            )
        want_sorted = len(rows) % 2 == 0
        digits = _digits(rng)
        text = "".join(sorted(digits)) if want_sorted else digits
        if text in seen or text in banned or (not want_sorted and list(text) == sorted(text)):
            continue
        seen.add(text)
        rows.append({"text": text, "label": int(want_sorted)})
    rng.shuffle(rows)
    return rows


def multiple_choice(task: str, rows: list[dict], seed: int) -> list[dict]:
    """``rows`` of a source task as ``{"prompt", "choices", "answer"}``: the right response and
    three plausible wrong ones (arithmetic: a nearby sum; reversal, sorting: a permutation of
    the answer; kv_recall: another value of the prompt), in a seeded order; ``answer`` is the
    index of the right one. Deterministic for a given ``(task, rows, seed)``."""
    if task not in SOURCE_TASKS:
        raise ValueError(f"multiple-choice rows are made for source tasks only; use one of: {', '.join(SOURCE_TASKS)}")
    rng = random.Random(f"mc/{task}/{seed}")
    out = []
    for row in rows:
        right = row["response"]
        if task == "arithmetic":
            near = [int(right) + d for d in (-10, -2, -1, 1, 2, 10) if 0 <= int(right) + d <= 198]
            wrong = [f"{n:03d}" for n in rng.sample(near, 3)]
        elif task == "kv_recall":
            values = sorted({pair[-1] for pair in row["prompt"].split()[:-1]} - {right})
            wrong = values + rng.sample([d for d in string.digits if d != right and d not in values], 3 - len(values))
        else:
            wrong = _wrong_strings(right, string.digits if right.isdigit() else string.ascii_lowercase, rng)
        choices = [right, *wrong]
        rng.shuffle(choices)
        out.append({"prompt": row["prompt"], "choices": choices, "answer": choices.index(right)})
    return out


def _wrong_strings(right: str, alphabet: str, rng: random.Random) -> list[str]:
    """Three distinct strings other than ``right``: permutations of it, then, for strings with
    too few (``"aab"``), one character changed."""
    wrong: list[str] = []
    attempts = 0
    while len(wrong) < 3:
        attempts += 1
        if attempts <= 50:
            candidate = "".join(rng.sample(right, len(right)))
        else:
            i = rng.randrange(len(right))
            candidate = right[:i] + rng.choice(alphabet) + right[i + 1:]
        if candidate != right and candidate not in wrong:
            wrong.append(candidate)
    return wrong
