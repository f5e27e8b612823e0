"""`ftctl eval`: a model, and an adapter on it, on held-out source tasks, outside any run."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.arguments import MAX_EXAMPLES, METRIC
from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console, err_console, fail, print_problems
from orchestrator.exitcodes import ExitCode


@command("eval",
         Arg("--model", default=None, help="base model: builtin:tiny-base or a local dir (default: the job's)"),
         Arg("--adapter", type=Path, default=None, help="a PEFT adapter dir (a run's adapter/)"),
         Arg("--tasks", nargs="*", default=[], metavar="[NAME=]PATH", help="held-out task files (instruction rows)"),
         Arg("--job", type=Path, default=None, help="take the tasks (and gates) from this job's forgetting section"),
         Arg("--lm-eval", default=None, dest="lm_eval", metavar="TASK[,TASK]",
             help="lm-evaluation-harness tasks or groups (arc_easy,mmlu_stem,...), scored as lm-eval scores them"),
         Arg("--include-path", default=None, help="lm-eval: a folder of local task YAMLs (builtin:demo/lm_eval: "
                                                  "the built-in base model's source tasks)"),
         Arg("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples (default: each task's own)"),
         Arg("--limit", type=int, default=None, help="lm-eval: at most N documents per task"),
         METRIC,
         MAX_EXAMPLES,
         Arg("--max-drop", type=float, default=None, help="gate: the largest allowed drop of any task"),
         Arg("--json", type=Path, default=None, dest="out", help="also write the values and report here"),
         exits="With --adapter, the base model and the adapted one are compared. Exit 0, or 4 when a"
               " task's drop exceeds --max-drop (or the job's gates).")
def cmd_eval(model: str | None, adapter: Path | None, tasks: list[str], job: Path | None, lm_eval: str | None,
             include_path: str | None, num_fewshot: int | None, limit: int | None, metric: str,
             max_examples: int | None, max_drop: float | None, out: Path | None) -> int:
    """Evaluate a model (and an adapter on it) on held-out source tasks; print the forgetting table."""
    from orchestrator.spec import SpecError

    if not tasks and job is None and not lm_eval:
        return fail("name the tasks: --tasks PATH|NAME=PATH ..., --lm-eval TASK[,TASK], or --job JOB.yaml to use "
                    "its forgetting.tasks", ExitCode.INVALID)
    if job is not None and (lm_eval or tasks):
        return fail("--job brings its own forgetting.tasks; leave out --tasks and --lm-eval", ExitCode.INVALID)
    if job is None and model is None:
        return fail("--model is needed without --job", ExitCode.INVALID)
    from orchestrator.forgetting.standalone import eval_spec, evaluate_standalone

    try:
        lm_tasks = [{"task": t.strip(), "include_path": include_path, "num_fewshot": num_fewshot, "limit": limit}
                    for t in (lm_eval or "").split(",") if t.strip()]
        spec = eval_spec(model, tasks, job, metric, max_examples, max_drop, lm_tasks)
    except SpecError as err:
        print_problems(job or Path("--tasks"), err)
        return ExitCode.INVALID
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        return fail(f"{adapter} is not a PEFT adapter dir (no adapter_config.json)", ExitCode.INVALID)
    from orchestrator.data.errors import DataError
    from orchestrator.forgetting.gates import check_gates, gates_of
    from orchestrator.forgetting.report import build_forgetting_report, forgetting_table
    from orchestrator.models.build import ModelError

    try:
        with console.status("evaluating") as status:
            values = evaluate_standalone(spec, adapter, progress=status.update)
    except (ModelError, DataError) as err:
        return fail(escape(str(err)))
    after = values["adapted"] or values["base"]
    report = build_forgetting_report(spec, [{"step": 0, **values["base"]}, {"step": 1, **after}])
    title = f"{spec.model.path}" + (f" + {adapter}" if adapter else "") + ": held-out source tasks"
    console.print(forgetting_table(report, title=title))
    trips = check_gates(gates_of(spec.forgetting), values["base"], after, 1) if adapter else []
    if out is not None:
        out.write_text(json.dumps({"model": spec.model.path, "adapter": str(adapter) if adapter else None,
                                   **values, "report": report, "tripped": [t.as_dict() for t in trips]}, indent=2))
    for trip in trips:
        err_console.print(f"[red]✗ gate:[/red] {trip.task} {trip.metric} {trip.base:.3f} -> {trip.value:.3f} "
                          f"(drop {trip.drop:.3f} > max_drop {trip.max_drop:g})")
    return ExitCode.GATE if trips else ExitCode.OK


@command("repair",
         Arg("run_dir", type=Path, metavar="RUN_DIR", help="a finished run dir (its adapter/ or model/ is repaired)"),
         Arg("--max-drop", type=float, default=None,
             help="the drop allowed on every source task (default: the job's forgetting.repair.max_drop, else each "
                  "task's max_drop)"),
         exits="Interpolates between the base and the run's trained weights, keeps the largest alpha whose every "
               "source-task drop is within its max_drop, and makes those weights the run's artifact (the trained ones "
               "move to adapter.unrepaired/ or model.unrepaired/; a second repair starts from them). Exit 0 when "
               "repaired, 2 when the run cannot be repaired (nothing is changed), 1 on failure.")
def cmd_repair(run_dir: Path, max_drop: float | None) -> int:
    """Repair a finished run's forgetting by interpolating toward the base model."""
    from orchestrator.forgetting.repair import RepairError, repair_finished_run

    if max_drop is not None and max_drop < 0:
        return fail("--max-drop must be >= 0", ExitCode.INVALID)
    try:
        repair_finished_run(run_dir, max_drop, console)
    except RepairError as err:
        return fail(f"cannot repair {run_dir}: {err}", ExitCode.INVALID)
    return ExitCode.OK
