"""Held-out tasks prepared once on the driver, in the form every evaluator takes.

A task is measured by exact match of greedy answers (its prompt/response rows travel with
it), by the choice a model finds most likely (its prompt/choices/answer rows travel with it)
or by token loss / perplexity (its rows are tokenised once into a dataset cache, which the
evaluator loads). The same `PreparedTask` serves training-time evaluation, `ftctl eval`,
promotion gates and merge reports.

Few-shot (`num_fewshot: k`, exact_match and choice): row i's prompt is preceded by k solved
examples drawn by `random.Random(FEWSHOT_SEED + i)` from the first FEWSHOT_ROWS rows of
`fewshot_path`, or from the task's other evaluated rows; a row never serves as its own
example (no example shares its prompt). Each example is its prompt followed by its answer
(the response, or the text of the right choice) and a blank line:

    "12+30=042\n\n" "55+01=056\n\n" "47+85="
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.data.errors import DataError
from orchestrator.spec.models import DataSourceSpec, ForgettingTaskSpec, JobSpec

EXACT_MATCH_ROWS = 200  # rows per exact-match or choice task when the task sets no max_examples
FEWSHOT_ROWS = 1000  # rows read from a fewshot_path to draw examples from
FEWSHOT_SEED = 1234
FEWSHOT_SEPARATOR = "\n\n"
CHOICE_METRICS = ("choice", "choice_norm")
TARGET = "target"  # the name data.eval goes by when it is measured like a source task


@dataclass(frozen=True)
class PreparedTask:
    name: str
    metric: str  # exact_match, loss, perplexity, choice, choice_norm, or the lm-eval metric the gate reads
    rows: tuple[tuple[str, str], ...] | None = None  # exact_match: (prompt, response) pairs
    cache_dir: str | None = None  # loss / perplexity: the tokenised rows
    choices: tuple[tuple[str, tuple[str, ...], int], ...] | None = None  # choice: (prompt, choices, answer)
    lm_eval: dict[str, Any] | None = None  # lm-eval: task, num_fewshot, limit, include_path

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "metric": self.metric}
        if self.rows is not None:
            out["rows"] = [{"prompt": p, "response": r} for p, r in self.rows]
        if self.cache_dir is not None:
            out["cache_dir"] = self.cache_dir
        if self.choices is not None:
            out["choices"] = [{"prompt": p, "choices": list(c), "answer": a} for p, c, a in self.choices]
        if self.lm_eval is not None:
            out["lm_eval"] = self.lm_eval
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PreparedTask":
        rows = tuple((r["prompt"], r["response"]) for r in data["rows"]) if data.get("rows") is not None else None
        choices = (tuple((r["prompt"], tuple(r["choices"]), int(r["answer"])) for r in data["choices"])
                   if data.get("choices") is not None else None)
        return cls(data["name"], data["metric"], rows, data.get("cache_dir"), choices, data.get("lm_eval"))


def prepare_tasks(spec: JobSpec, tokenizer) -> list[PreparedTask]:
    """Every forgetting.tasks entry of the job, ready to evaluate."""
    from orchestrator.data.pipeline import prepare_dataset

    prepared = []
    for task in spec.forgetting.tasks:
        if task.lm_eval is not None:
            from orchestrator.forgetting.lm_eval import prepare

            prepared.append(prepare(task.name, task.lm_eval))
            continue
        limit = task.max_examples or EXACT_MATCH_ROWS
        if task.metric in CHOICE_METRICS:
            choices = choice_rows(task.path, limit)
            pool = choice_rows(task.fewshot_path, FEWSHOT_ROWS) if task.fewshot_path else choices
            prompts = fewshot_prompts([(p, c[a]) for p, c, a in choices], [(p, c[a]) for p, c, a in pool], task)
            prepared.append(PreparedTask(task.name, task.metric, choices=tuple(
                (prompt, c, a) for prompt, (_, c, a) in zip(prompts, choices))))
        elif task.metric == "exact_match":
            rows = answer_rows(DataSourceSpec(path=task.path, format=task.format), limit, tokenizer)
            pool = (answer_rows(DataSourceSpec(path=task.fewshot_path, format=task.format), FEWSHOT_ROWS, tokenizer)
                    if task.fewshot_path else rows)
            prompts = fewshot_prompts(rows, pool, task)
            prepared.append(PreparedTask(task.name, task.metric, rows=tuple(
                (prompt, r) for prompt, (_, r) in zip(prompts, rows))))
        else:
            source = DataSourceSpec(path=task.path, format=task.format, max_examples=task.max_examples)
            unpacked = spec.data.model_copy(update={"packing": False})  # one example per row for evaluation
            cache = prepare_dataset(source, unpacked, tokenizer).cache_dir
            prepared.append(PreparedTask(task.name, task.metric, cache_dir=str(cache)))
    return prepared


def task_metric(task: ForgettingTaskSpec) -> str:
    """The metric a forgetting task's gate and report read: its own, or for an lm_eval entry
    the one named there, else the lm-eval task's primary metric."""
    if task.lm_eval is None:
        return task.metric
    from orchestrator.forgetting.lm_eval import resolved_metric

    return resolved_metric(task.lm_eval.task, task.lm_eval.include_path, task.lm_eval.metric)


def fewshot_prompts(rows: Sequence[tuple[str, str]], pool: Sequence[tuple[str, str]],
                    task: ForgettingTaskSpec) -> list[str]:
    """Each row's prompt with `task.num_fewshot` solved examples from `pool` before it (see
    the module docstring); rows and pool are (prompt, answer text) pairs."""
    k = task.num_fewshot
    if k == 0:
        return [prompt for prompt, _ in rows]
    out = []
    for i, (prompt, _) in enumerate(rows):
        others = [shot for shot in pool if shot[0] != prompt]
        if len(others) < k:
            raise DataError(f"forgetting task {task.name}: num_fewshot {k} needs {k} examples besides each row, but "
                            f"{task.fewshot_path or 'the evaluated rows'} hold only {len(others)}; lower num_fewshot, "
                            "or point fewshot_path at more rows")
        shots = random.Random(FEWSHOT_SEED + i).sample(others, k)
        out.append("".join(p + a + FEWSHOT_SEPARATOR for p, a in shots) + prompt)
    return out


def target_task(spec: JobSpec) -> PreparedTask | None:
    """data.eval measured by exact match, when its rows are prompt/response pairs (instruction
    or alpaca): the target task's before/after, beside the source tasks."""
    if spec.data.eval is None or spec.data.eval.format not in ("instruction", "alpaca"):
        return None
    return PreparedTask(TARGET, "exact_match", rows=answer_rows(spec.data.eval, EXACT_MATCH_ROWS))


def answer_rows(source: DataSourceSpec, limit: int, tokenizer=None) -> tuple[tuple[str, str], ...]:
    """Up to `limit` (prompt, response) rows for exact-match evaluation (bad rows skipped;
    the training data pipeline has already reported them). An alpaca row's prompt is the one
    it is trained with (`alpaca_pair`); a chat row's is its conversation before the last
    assistant message through the chat template (`chat_pair`, which needs the tokenizer).
    A source without one usable row is an error: it would score 0 over nothing."""
    from orchestrator.data.formats import RowProblem, alpaca_pair, chat_pair
    from orchestrator.data.sources import open_source

    cols = source.columns
    rows: list[tuple[str, str]] = []
    opened = open_source(source)
    for row in opened.read_rows():
        values = row.values or {}
        try:
            if source.format == "alpaca":
                rows.append(alpaca_pair(values, cols))
            elif source.format == "chat":
                if tokenizer is None:
                    raise ValueError("exact match on chat rows renders their prompts: pass the tokenizer")
                rows.append(chat_pair(values, cols, tokenizer))
            elif isinstance(values.get(cols.prompt), str) and isinstance(values.get(cols.response), str):
                rows.append((values[cols.prompt], values[cols.response]))
            else:
                continue
        except RowProblem:
            continue
        if len(rows) >= limit:
            break
    if not rows:
        keys = {"alpaca": f"{cols.instruction}/{cols.output}", "chat": f"{cols.messages} with an assistant message"}
        raise DataError(f"{opened.name} has no row with {keys.get(source.format, f'{cols.prompt}/{cols.response}')} "
                        "for exact match; check the file, its format and columns")
    return tuple(rows)


def choice_rows(path: str, limit: int) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """Up to `limit` (prompt, choices, answer) rows of a multiple-choice file; a bad row stops
    evaluation, naming its file and row."""
    from orchestrator.data.formats import RowProblem, multiple_choice_row
    from orchestrator.data.sources import open_source

    opened = open_source(DataSourceSpec(path=path))
    rows: list[tuple[str, tuple[str, ...], int]] = []
    for row in opened.read_rows():
        try:
            if row.values is None:
                raise RowProblem(row.problem)
            rows.append(multiple_choice_row(row.values))
        except RowProblem as problem:
            raise DataError(f"{opened.name} row {row.number}: {problem}; fix the row (multiple-choice rows are "
                            "{prompt, choices: [...], answer: index})") from None
        if len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{opened.name} has no rows; point the path at a file with data")
    return tuple(rows)
