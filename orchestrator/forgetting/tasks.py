"""Held-out tasks prepared once on the driver, in the form every evaluator takes.

A task is measured by exact match of greedy answers (its prompt/response rows travel with
it) or by token loss / perplexity (its rows are tokenised once into a dataset cache, which
the evaluator loads). The same `PreparedTask` serves training-time evaluation, `ftctl eval`,
promotion gates and merge reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.spec.models import DataSourceSpec, ForgettingTaskSpec, JobSpec

EXACT_MATCH_ROWS = 200  # rows per exact-match task when the task sets no max_examples
TARGET = "target"  # the name data.eval goes by when it is measured like a source task


@dataclass(frozen=True)
class PreparedTask:
    name: str
    metric: str  # exact_match, loss, perplexity, choice, choice_norm, or the lm-eval metric the gate reads
    rows: tuple[tuple[str, str], ...] | None = None  # exact_match: (prompt, response) pairs
    cache_dir: str | None = None  # loss / perplexity: the tokenised rows
    choices: tuple[tuple[str, tuple[str, ...], int], ...] | None = None  # choice: (prompt, choices, answer)
    lm_eval: dict[str, Any] | None = None  # lm-eval: task, num_fewshot, limit, include_path, metric key
    higher_is_better: bool = True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "metric": self.metric, "higher_is_better": self.higher_is_better}
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
        return cls(data["name"], data["metric"], rows, data.get("cache_dir"), choices, data.get("lm_eval"),
                   data.get("higher_is_better", True))


def prepare_tasks(spec: JobSpec, tokenizer) -> list[PreparedTask]:
    """Every forgetting.tasks entry of the job, ready to evaluate."""
    from orchestrator.data.pipeline import prepare_dataset

    prepared = []
    for task in spec.forgetting.tasks:
        if task.lm_eval is not None:
            from orchestrator.forgetting.lm_eval import prepare

            prepared.append(prepare(task.name, task.lm_eval))
            continue
        source = DataSourceSpec(path=task.path, format=task.format, max_examples=task.max_examples)
        if task.metric == "exact_match":
            prepared.append(PreparedTask(task.name, task.metric, rows=answer_rows(source, task.max_examples
                                                                                  or EXACT_MATCH_ROWS)))
        else:
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

    return resolved_metric(task.lm_eval.task, task.lm_eval.include_path, task.lm_eval.metric)[0]


def target_task(spec: JobSpec) -> PreparedTask | None:
    """data.eval measured by exact match, when its rows are prompt/response pairs: the
    target task's before/after, beside the source tasks."""
    if spec.data.eval is None or spec.data.eval.format != "instruction":
        return None
    return PreparedTask(TARGET, "exact_match", rows=answer_rows(spec.data.eval, EXACT_MATCH_ROWS))


def answer_rows(source: DataSourceSpec, limit: int) -> tuple[tuple[str, str], ...]:
    """Up to `limit` (prompt, response) rows for exact-match evaluation (bad rows skipped;
    the training data pipeline has already reported them)."""
    from orchestrator.data.sources import open_source

    cols = source.columns
    rows: list[tuple[str, str]] = []
    for row in open_source(source).read_rows():
        values = row.values or {}
        if isinstance(values.get(cols.prompt), str) and isinstance(values.get(cols.response), str):
            rows.append((values[cols.prompt], values[cols.response]))
            if len(rows) >= limit:
                break
    return tuple(rows)
