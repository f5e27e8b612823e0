"""Which checkpoint a run starts from, and the restarts it went through.

A run dir may hold checkpoints of an earlier job; the newest one that verifies is taken,
and refused (with the differences) when it was saved under a spec or data that would not
resume exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec
from orchestrator.training.errors import JobFailed


def choose_resume(spec: JobSpec, run: RunDir, train_fingerprint: str, console: Console,
                  force: bool = False) -> str | None:
    """The checkpoint this run starts from (None: fresh), verified, and refused with the
    differences when it was saved under a spec or data that would not resume exactly."""
    from orchestrator.checkpoint.compat import resume_differences
    from orchestrator.checkpoint.store import (CheckpointError, latest_complete_checkpoint, list_checkpoints,
                                               read_trainer_state, restore_replaced, verify_training_checkpoint)

    value = spec.checkpoint.resume
    if value == "never":
        return None
    checkpoints = run.checkpoints
    if value == "auto":
        if checkpoints.is_dir():
            restore_replaced(checkpoints)
        info = latest_complete_checkpoint(checkpoints, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"),
                                          verify=verify_training_checkpoint)
        if info is None and spec.checkpoint.storage:
            from orchestrator.checkpoint.remote import Mirror

            with console.status(f"looking for checkpoints in {spec.checkpoint.storage}"):
                mirror = Mirror(spec.checkpoint.storage, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"))
                fetched = mirror.fetch_latest(checkpoints)
                mirror.close()
            info = verify_training_checkpoint(fetched) if fetched else None
        if info is None:
            broken = list_checkpoints(checkpoints)
            if broken:
                raise JobFailed(f"none of the {len(broken)} checkpoints in {checkpoints} is usable (see above); nothing was "
                                f"deleted. Start over with checkpoint.resume=never, or point checkpoint.resume at one")
            return None
    else:
        try:
            info = verify_training_checkpoint(Path(value))
        except CheckpointError as err:
            raise JobFailed(f"checkpoint.resume={value}: {err}") from None
    saved = read_trainer_state(info.path)
    problems = resume_differences(saved["spec"], spec.model_dump(mode="json"))
    if saved.get("data_fingerprint") != train_fingerprint:
        problems.append(f"training data fingerprint: {str(saved.get('data_fingerprint'))[:12]} -> "
                        f"{train_fingerprint[:12]} (the files or their preprocessing changed)")
    if problems and not force:
        raise JobFailed(f"{info.path.name} was saved under a job that differs in ways that break exact resume:\n  "
                        + "\n  ".join(problems) + "\nrevert them, or resume anyway with --force (the run then "
                        "continues from the saved step with the new settings)")
    for line in problems:
        console.print(f"[yellow]resuming despite:[/yellow] {line}")
    console.print(f"resuming from {info.path.name} (step {info.step})")
    return str(info.path)


def restarts(run: RunDir, job_token: str | None) -> list[dict[str, Any]]:
    """Each restart of the worker group during this job, with the step it resumed from."""
    log = run.attempts
    if job_token is None or not log.is_file():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [{"attempt": e["attempt"], "resumed_from": e["resumed_from"], "resumed_step": e["resumed_step"],
             "world_size": e["world_size"], "started_at": e["started_at"]}
            for e in entries if e.get("job") == job_token and e["attempt"] > 0]
