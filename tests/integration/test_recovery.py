"""A job killed at any moment finishes as if nothing happened.

Each case runs the job once uninterrupted, then again with a worker SIGKILLed between
two checkpoints (Ray restarts the worker group, which resumes from the latest good
checkpoint) or with the driver SIGTERMed (it saves, exits 75, and `ftctl resume`
finishes the job). Per-step losses and final weights must match the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.test_run import QUICKSTART, run

REPO = Path(__file__).parents[2]
# Periodic checkpoints at EVERY and 2 * EVERY, the final one at STEPS. Interruptions come
# after step INTERRUPT_AFTER: past the MIDDLE checkpoint, 5 steps before the next one.
EVERY = 7
STEPS = 2 * EVERY + 2
MIDDLE = f"step-{EVERY:08d}"  # the checkpoint the resume tests start from
INTERRUPT_AFTER = EVERY + 2
COMMON = ["training.warmup_steps=5", "training.log_every_steps=1", f"training.max_steps={STEPS}",
          f"checkpoint.every_steps={EVERY}", "checkpoint.keep_last=5", "checkpoint.max_failures=2", "data.eval=null",
          "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null"]
CASES = {
    "lora-ddp": [],
    "full-ddp": ["method.kind=full", "method.lora=null", "training.lr=1e-3"],
    "lora-zero2": ["resources.strategy=deepspeed", "resources.zero_stage=2"],
}
SHARDED = {
    "lora-zero3": ["resources.strategy=deepspeed", "resources.zero_stage=3"],
    "lora-fsdp": ["resources.strategy=fsdp"],
}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict:
    artifact = run_dir / "adapter" / "adapter_model.safetensors"
    return load_file(str(artifact if artifact.is_file() else run_dir / "model" / "model.safetensors"))


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = metrics(run_dir), metrics(reference)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], abs=1e-5)
    a, b = weights(run_dir), weights(reference)
    assert a.keys() == b.keys() and a
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key


def wait_for_step(run_dir: Path, step: int, timeout: float = 240, committed: str | None = None) -> int:
    """The latest logged step once it is `step` or later (and, with `committed`, once that
    checkpoint is committed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and (committed is None or (run_dir / "checkpoints" / committed / "manifest.json").is_file()):
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            if lines:
                try:
                    last = json.loads(lines[-1])["step"]
                except ValueError:
                    last = 0
                if last >= step:
                    return last
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} never reached step {step}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, local_ray):
    """Uninterrupted runs, made on first use."""
    made: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in made:
            code, run_dir, log = run(tmp_path_factory.mktemp("ref"), case, *COMMON, *{**CASES, **SHARDED}[case])
            assert code == 0, log
            assert json.loads((run_dir / "summary.json").read_text())["restarts"] == [], "the reference was interrupted"
            made[case] = run_dir
        return made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_a_sigkilled_worker_is_restarted_and_the_run_ends_exactly_as_an_uninterrupted_one(case, tmp_path, reference):
    killed: dict[str, int] = {}

    def kill_rank_1() -> None:
        run_dir = tmp_path / "killed"
        # The MIDDLE checkpoint is committed: the restart has something to resume from.
        killed["at"] = wait_for_step(run_dir, INTERRUPT_AFTER, committed=MIDDLE)
        pid = json.loads((run_dir / "workers" / "rank-00001.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    code, run_dir, log = run(tmp_path, "killed", *COMMON, *CASES[case])
    killer.join(timeout=5)
    assert code == 0, log
    assert "pid" in killed, "the worker was never killed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert len(summary["restarts"]) == 1, summary["restarts"]
    restart = summary["restarts"][0]
    # killed after step INTERRUPT_AFTER: between the checkpoints of steps EVERY and 2 * EVERY (or just after 2 * EVERY)
    assert restart["resumed_step"] in (EVERY, 2 * EVERY) and restart["resumed_step"] <= killed["at"], (restart, killed)
    assert restart["resumed_from"].endswith(f"step-{restart['resumed_step']:08d}")
    assert json.loads((run_dir / "workers" / "rank-00001.json").read_text())["pid"] != killed["pid"]
    assert_same_run(run_dir, reference(case))


def remove_checkpoints_after_middle(run_dir: Path) -> None:
    late = [f"step-{2 * EVERY:08d}", f"step-{STEPS:08d}"]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [MIDDLE, *late]
    for name in late:
        shutil.rmtree(run_dir / "checkpoints" / name)


def ftctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def test_sigterm_saves_within_the_grace_period_exits_75_and_resume_is_exact(tmp_path, reference):
    import ray

    address = ray.get_runtime_context().gcs_address
    run_dir = tmp_path / "preempted"
    mirror = tmp_path / "bucket"
    overrides = [*COMMON, "checkpoint.sigterm_grace_s=30", f"checkpoint.storage={mirror.as_uri()}"]
    proc = subprocess.Popen(ftctl("run", str(QUICKSTART), *overrides, "--run-dir", str(run_dir), "--address", address),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        at = wait_for_step(run_dir, INTERRUPT_AFTER)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    took = time.time() - signalled
    assert proc.returncode == 75, out
    assert took < 30, f"took {took:.1f}s to stop"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted"
    saved = Path(summary["checkpoint"])
    step = json.loads((saved / "manifest.json").read_text())["step"]
    assert at <= step < STEPS, (at, step)  # saved at the step it was on, not the last periodic one
    assert summary["preemption"]["stopped_after_s"] < 30
    assert f"ftctl resume {run_dir}" in out.replace("\n", "")
    # Resume on a "fresh machine": no local checkpoints, only the mirror's copies.
    assert (mirror / saved.name / "manifest.json").is_file()
    shutil.rmtree(run_dir / "checkpoints")

    resumed = subprocess.run(ftctl("resume", str(run_dir), "--address", address), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {saved.name}" in resumed.stdout
    assert (run_dir / "checkpoints" / saved.name / "manifest.json").is_file()  # fetched back
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["resumed_from"] == str(saved)
    assert_same_run(run_dir, reference("lora-ddp"))


def test_a_ddp_run_resumes_on_one_worker_with_the_global_batch_kept(tmp_path, reference):
    from orchestrator.cli import main

    ref = reference("lora-ddp")
    run_dir = tmp_path / "reshard"
    shutil.copytree(ref, run_dir)
    remove_checkpoints_after_middle(run_dir)  # as if it had stopped after step EVERY
    assert main(["resume", str(run_dir), "--workers", "1"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1
    assert summary["resumed_from"].endswith(MIDDLE)
    # 1 worker x 2 accumulation sees the examples 2 workers x 1 did: the same steps, up to summation order
    got, want = metrics(run_dir), metrics(ref)
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], abs=1e-4)
    a, b = weights(run_dir), weights(ref)
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-4, key


@pytest.mark.parametrize("case", list(SHARDED))
def test_a_sharded_run_resumed_from_a_middle_checkpoint_ends_exactly_as_an_uninterrupted_one(case, tmp_path, reference):
    from orchestrator.cli import main

    ref = reference(case)
    run_dir = tmp_path / case
    shutil.copytree(ref, run_dir)
    remove_checkpoints_after_middle(run_dir)
    if case.endswith("zero3"):  # the optimizer partitions come through DeepSpeed's own files
        assert list((run_dir / "checkpoints" / MIDDLE / "deepspeed").rglob("*optim_states.pt"))
    assert main(["resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith(MIDDLE) and summary["world_size"] == 2
    assert_same_run(run_dir, ref)
