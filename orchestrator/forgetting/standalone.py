"""`ftctl eval`: held-out source tasks on any model or adapter, outside a training job.

One process, no Ray: the base model is evaluated, then (with an adapter) the base model
with the adapter, and the change is reported with the same table, metrics and gates as a
training job's forgetting report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestrator.spec.models import JobSpec

_TASK_NAME = re.compile(r"^[A-Za-z0-9_.-]*$")  # ForgettingTaskSpec.name's pattern, or empty


def eval_spec(model: str, tasks: list[str], job: Path | None, metric: str, max_examples: int | None,
              max_drop: float | None, lm_tasks: list[dict[str, Any]] | None = None) -> JobSpec:
    """A job holding just what evaluation needs: the model and the forgetting tasks, from
    `job`'s forgetting section, from `name=path` / `path` entries, or lm-eval task settings
    (`lm_tasks`: the lm_eval blocks, one per task)."""
    from orchestrator.spec import SpecError, load_spec, resolve_spec

    if job is not None:
        overrides = ([f"model.path={model}"] if model else []) + \
            ([f"forgetting.max_drop={max_drop}"] if max_drop is not None else [])
        return load_spec(job, overrides)
    entries = []
    for item in tasks:
        # NAME=PATH splits at the first "=" when what precedes it can be a task name; a path
        # may hold "=" itself (partitioned folders such as split=test/).
        name, sep, path = item.partition("=")
        if not sep or not _TASK_NAME.match(name):
            name, path = "", item
        name = name or Path(path).stem.removeprefix("source_")
        entries.append({"name": name, "path": path, "metric": metric, "max_examples": max_examples,
                        "format": "multiple_choice" if metric in ("choice", "choice_norm") else "instruction"})
    for block in lm_tasks or []:
        entries.append({"name": re.sub(r"[^A-Za-z0-9_.-]", "_", block["task"])[:64],
                        "lm_eval": {k: v for k, v in block.items() if v is not None}})
    stand_in = next((e["path"] for e in entries if "path" in e), "builtin:demo/target_train.jsonl")
    raw = {"name": "eval", "model": {"path": model}, "data": {"train": {"path": stand_in}},
           "forgetting": {"tasks": entries, "max_drop": max_drop}}
    try:
        return resolve_spec(raw)
    except SpecError as err:
        # data.train is a stand-in (a job needs one): its problems are the first task's, said once,
        # and each task's problems name the --tasks item the user wrote.
        raise SpecError([_as_tasks_problem(p, tasks) for p in err.problems
                         if not p.path.startswith("data.train")]) from None


def _as_tasks_problem(problem, tasks: list[str]):
    from orchestrator.spec.problems import Problem

    found = re.match(r"^forgetting\.tasks\.(\d+)\.", problem.path or "")
    if not found:
        return problem
    return Problem(f"--tasks {tasks[int(found.group(1))]}", problem.message, problem.hint)


def evaluate_standalone(spec: JobSpec, adapter: Path | None, progress=lambda _m: None) -> dict[str, Any]:
    """{"base": {task: value}, "adapted": {task: value} | None}."""
    from orchestrator.forgetting.measure import load_base_model, measure
    from orchestrator.forgetting.tasks import prepare_tasks
    from orchestrator.models.build import load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(spec.model, progress=progress)
    tokenizer = load_tokenizer(model_dir, spec.model)
    tasks = prepare_tasks(spec, tokenizer)
    measured = measure(lambda: load_base_model(model_dir, spec.model.revision, spec.model.trust_remote_code),
                       {"base": None, **({"adapted": adapter} if adapter is not None else {})}, tasks, tokenizer,
                       progress=progress)
    return {"base": measured["base"].tasks, "adapted": measured["adapted"].tasks if adapter is not None else None}
