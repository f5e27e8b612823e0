"""lm-evaluation-harness tasks as forgetting tasks.

A task entry with an `lm_eval` block is measured by lm-eval itself: its HFLM wrapper over
the model already in memory (adapters on), its task definitions (from lm-eval's registry or
a local `include_path`), its metrics. So a value here is exactly what `lm_eval --model hf`
reports for the same model, task and settings. The driver checks the task name and works
out which metric the gate reads (the task's primary metric: the first of its metric_list,
or of a group's aggregate_metric_list) before any worker starts; every rank then runs the
whole evaluation on the same documents (`limit` bounds them), which also keeps sharded
models (FSDP, ZeRO-3) in step.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from pathlib import Path
from unittest import mock
from typing import Any

from orchestrator.data.errors import DataError
from orchestrator.forgetting.metrics import higher_is_better, register
from orchestrator.spec.models import LmEvalTaskSpec
from orchestrator.spec.problems import did_you_mean

EVAL_BATCH = 16  # HFLM batch size (fixed: batching can move loglikelihoods in the last digits)


class LmEvalError(DataError):
    """An lm-eval task that cannot be measured; the message says what to do."""


def _quiet() -> None:
    """lm-eval's progress bars and notices (one is a warning about every model passed in as
    an object, which is how ftctl passes it) stay out of ftctl's output unless FTCTL_VERBOSE."""
    if os.environ.get("FTCTL_VERBOSE"):
        return
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


@functools.cache
def task_manager(include_path: str | None, defaults: bool):
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmEvalError("forgetting.tasks names an lm_eval task but lm-eval is not installed; "
                          "pip install lm-eval") from None
    _quiet()
    return TaskManager(include_path=include_path, include_defaults=defaults)


DEMO_FOLDER = "lm_eval"  # builtin:demo/lm_eval: the built-in base model's source tasks, multiple choice


def include_dir(include_path: str | None) -> str | None:
    """The folder `include_path` names, on this machine (`builtin:demo/lm_eval` is written
    into the demo data on first use)."""
    if include_path is None:
        return None
    from orchestrator.spec import paths

    if include_path.rstrip("/") == paths.DEMO_PREFIX + DEMO_FOLDER:
        return str(write_demo_tasks(paths.demo_data_dir()))
    return str(Path(include_path).expanduser().resolve())


@functools.cache
def write_demo_tasks(demo_dir: Path) -> Path:
    """lm-eval task YAMLs for the built-in base model's source tasks in multiple-choice form
    (`tiny_<task>_mc`, over the demo data's mc_<task>.jsonl), in `builtin:demo/lm_eval`. A
    task YAML names its data file by absolute path, so they are written where they are used,
    once per process."""
    import yaml

    from orchestrator.data.demo import ensure_demo_file
    from orchestrator.spec.paths import SOURCE_TASKS

    folder = demo_dir / DEMO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for task in SOURCE_TASKS:
        rows = ensure_demo_file(demo_dir / f"mc_{task}.jsonl")
        config = {
            "task": f"tiny_{task}_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(rows)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}
        text = yaml.safe_dump(config, sort_keys=False)
        target = folder / f"tiny_{task}_mc.yaml"
        if not target.is_file() or target.read_text() != text:
            staging = target.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(text)
            os.replace(staging, target)
    return folder


def manager_for(task: str, include: str | None):
    """A TaskManager that knows `task`: the local folder alone first (indexing lm-eval's own
    thousands of YAMLs takes seconds), then with lm-eval's registry."""
    if include is not None:
        local = task_manager(include, False)
        if task in local.all_tasks:
            return local
    manager = task_manager(include, True)
    if task not in manager.all_tasks:
        hint = did_you_mean(task, manager.all_tasks)
        raise LmEvalError(f"lm-eval has no task '{task}'" + (f" (nor has {include})" if include else "")
                          + (f"; {hint}" if hint else "; `lm_eval ls tasks` lists them"))
    return manager


def check_yamls(include: str) -> None:
    """Every task YAML under `include` must parse; lm-eval itself would skip a broken one
    and report its task as unknown."""
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(include).rglob("*.yaml")):
        try:
            load_yaml(path, resolve_func=False)
        except Exception as err:  # yaml errors, include cycles, non-dict documents
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LmEvalError(f"lm-eval task file {path} does not parse: {first}") from None


def primary_metric(manager, task: str) -> tuple[str, bool]:
    """(metric, higher is better) of the task's first listed metric."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[task]
    config: dict[str, Any] = {}
    if getattr(entry, "yaml_path", None):
        config = load_yaml(entry.yaml_path, resolve_func=False)
    elif isinstance(getattr(entry, "cfg", None), dict):
        config = entry.cfg
    listed = config.get("metric_list") or config.get("aggregate_metric_list") or [{"metric": "acc"}]
    first = listed[0]
    metric = first["metric"] if isinstance(first, dict) else str(first)
    direction = first.get("higher_is_better") if isinstance(first, dict) else None
    return metric, bool(direction) if direction is not None else higher_is_better(metric)


@functools.cache
def resolved_metric(task: str, include_path: str | None, metric: str | None) -> str:
    """The metric the gate reads for an lm_eval entry, its direction recorded in
    forgetting.metrics; checks the task exists (and the local YAMLs parse) on the way."""
    include = include_dir(include_path)
    if include is not None:
        check_yamls(include)
    primary, better = primary_metric(manager_for(task, include), task)
    if metric:
        primary, better = metric, higher_is_better(metric)
    register(primary, better)
    return primary


def prepare(name: str, spec: LmEvalTaskSpec):
    """The PreparedTask of a forgetting task entry with an lm_eval block."""
    from orchestrator.forgetting.tasks import PreparedTask

    metric = resolved_metric(spec.task, spec.include_path, spec.metric)
    settings = {"task": spec.task, "num_fewshot": spec.num_fewshot, "limit": spec.limit,
                "include_path": spec.include_path}
    return PreparedTask(name, metric, lm_eval=settings)


def evaluate(model, tokenizer, settings: dict[str, Any], metric: str, device) -> float:
    """The task's `metric` on `model` (any causal LM module, PEFT adapters included), as
    lm-eval computes it."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = manager_for(settings["task"], include_dir(settings["include_path"]))
    was_training = model.training
    # lm-eval's progress bars write to sys.stderr; kept out of ftctl's output unless FTCTL_VERBOSE
    bars = contextlib.nullcontext() if os.environ.get("FTCTL_VERBOSE") else contextlib.redirect_stderr(io.StringIO())
    # lm-eval returns results only where LOCAL_RANK is 0; here every rank evaluates on its own
    local_rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        with bars:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=EVAL_BATCH, device=str(device))
            _quiet()
            # lm-eval adds a description of the environment to its results by running `pip list`
            # and friends (a second per call); the metrics do not depend on it
            with mock.patch("lm_eval.evaluator.add_env_info", lambda results: None):
                out = simple_evaluate(model=lm, tasks=[settings["task"]], num_fewshot=settings["num_fewshot"],
                                      limit=settings["limit"], task_manager=manager, bootstrap_iters=0,
                                      log_samples=False)
    finally:
        model.train(was_training)
        if local_rank is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = local_rank
    return read_metric(out["results"], settings["task"], metric)


def read_metric(results: dict[str, dict[str, Any]], task: str, metric: str) -> float:
    """`metric` of `task` in lm-eval's results: "acc" reads "acc,none" (the unfiltered
    value), or the first filter's when the task filters its answers; "exact_match,strict-match"
    names one filter."""
    values = results.get(task)
    if values is None:
        raise LmEvalError(f"lm-eval returned no results for '{task}'")
    key = metric if "," in metric else f"{metric},none"
    if key not in values:
        key = next((k for k in values if k.split(",")[0] == metric and not k.endswith("_stderr")), key)
    if key not in values or not isinstance(values[key], (int, float)):
        known = sorted({k.split(",")[0] for k in values if "," in k and "_stderr" not in k})
        raise LmEvalError(f"lm-eval task '{task}' reports no metric '{metric}'; it reports {', '.join(known)}: "
                          f"set lm_eval.metric to one of them")
    return float(values[key])
