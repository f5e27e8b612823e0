"""`ftctl launch slurm --submit` against a real single-node Slurm (cluster/slurm/, started by
.ci/run as root): the job runs on a Ray cluster the sbatch script starts, and a SIGTERM to the
batch script reaches the job, which checkpoints, is requeued and resumes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL = ["training.warmup_steps=2", "resources.workers=1", "forgetting.tasks=[]", "forgetting.every_steps=null",
         "training.eval_every_steps=null", "data.eval=null", "checkpoint.every_steps=10", "training.log_every_steps=5"]


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (apt-get install slurm-wlm munge; cluster/slurm/start-dev-slurm.sh)"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if done.returncode != 0 or not re.search(r"idle|mixed|allocated|completing", done.stdout):
        return f"no Slurm node is up ({(done.stderr or done.stdout).strip()[:200]}); run cluster/slurm/start-dev-slurm.sh"
    return None


pytestmark = pytest.mark.skipif(_slurm_problem() is not None, reason=str(_slurm_problem()))


def submit(tmp_path: Path, capsys, *overrides: str) -> tuple[str, Path]:
    run_dir = tmp_path / "run"
    assert main(["launch", "slurm", str(QUICKSTART), *SMALL, *overrides, "--nodes", "1",
                 "--run-dir", str(run_dir), "--submit"]) == 0
    job_id = re.search(r"Slurm job (\d+)", capsys.readouterr().out).group(1)
    return job_id, run_dir


def job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def wait_done(job_id: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"Slurm job {job_id} did not end in {timeout}s: {job_state(job_id)}")


def slurm_log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "slurm").glob("*.out")))


def test_a_job_runs_on_ray_inside_a_slurm_allocation(tmp_path, capsys):
    job_id, run_dir = submit(tmp_path, capsys, "training.max_steps=30")
    state = wait_done(job_id, 420)
    log = slurm_log(run_dir)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["steps"] == 30
    assert "all 1 node(s) joined the Ray cluster" in log and "job exit code 0" in log
    assert (run_dir / "slurm" / "job.sbatch").read_text().startswith("#!/bin/bash")


def test_sigterm_reaches_the_job_which_checkpoints_requeues_and_resumes(tmp_path, capsys):
    job_id, run_dir = submit(tmp_path, capsys, "training.max_steps=400")
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.jsonl").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 15):
        assert time.monotonic() < deadline, slurm_log(run_dir)[-3000:]
        time.sleep(1)
    # What Slurm does before a time limit (--signal=B:TERM) or a preemption: SIGTERM to the batch script.
    subprocess.run(["scancel", "--batch", "--signal=TERM", job_id], check=True)
    deadline = time.monotonic() + 240
    while "requeueing" not in slurm_log(run_dir):
        assert time.monotonic() < deadline, slurm_log(run_dir)[-3000:]
        time.sleep(1)
    # Slurm holds a requeued job for a while (BeginTime); not what is under test here.
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
    state = wait_done(job_id, 600)
    log = slurm_log(run_dir)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-3000:]
    assert "asking the job to checkpoint and stop" in log and "requeueing" in log
    assert "(restart 1)" in log  # Slurm started it again
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["steps"] == 400
    assert summary["resumed_from"] and int(summary["resumed_from"].rsplit("-", 1)[1]) >= 10
