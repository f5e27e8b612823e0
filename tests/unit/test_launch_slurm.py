"""The sbatch script `ftctl launch slurm` renders: Slurm directives from the job and options,
a script bash accepts, quoting that survives odd overrides, and refusals that say why."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from orchestrator.launchers.slurm import LaunchError, SlurmOptions, render_sbatch
from orchestrator.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LLAMA = REPO / "configs" / "llama3-8b-lora-1x8-ddp.yaml"


def render(job: Path, overrides=(), **options) -> str:
    spec = load_spec(job, list(overrides), check_files=False)
    return render_sbatch(spec, job, list(overrides), Path("/shared/runs/r1"), Path("/shared/home"),
                         SlurmOptions(**options))


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", script, flags=re.M))


def test_a_cpu_job_on_one_node():
    script = render(QUICKSTART)
    d = directives(script)
    assert d["nodes"] == "1" and d["cpus-per-task"] == "2"  # 2 workers x 1 CPU
    assert "requeue" in d and d["signal"] == "B:TERM@120"  # sigterm_grace_s 60 + 60 s margin
    assert d["output"] == "/shared/runs/r1/slurm/%x-%j.out"
    assert "gpus-per-node" not in d and "partition" not in d
    assert f'job_file={QUICKSTART.resolve()}' in script and "export FTCTL_HOME=/shared/home" in script
    assert "{{" not in script


def test_a_gpu_job_over_two_nodes_with_partition_time_and_account():
    script = render(LLAMA, ["resources.workers=16"], nodes=2, gpus_per_node=8, partition="a100", time="04:00:00",
                    account="ml")
    d = directives(script)
    assert (d["nodes"], d["gpus-per-node"], d["partition"], d["time"], d["account"]) == ("2", "8", "a100",
                                                                                         "04:00:00", "ml")
    assert d["cpus-per-task"] == "64"  # 16 workers x 8 CPUs over 2 nodes


def test_the_script_is_valid_bash_even_with_awkward_overrides():
    script = render(QUICKSTART, ["description=it's a \"test\" $(rm -rf /)", "training.max_steps=20",
                                 "training.warmup_steps=2"])
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    line = next(l for l in script.splitlines() if l.startswith("ftctl run "))
    assert "'description=it'\"'\"'s a \"test\" $(rm -rf /)'" in line  # single-quoted: nothing expands


def test_sigterm_is_forwarded_and_a_preempted_job_requeues_itself():
    script = render(QUICKSTART)
    assert re.search(r"trap '.*kill -TERM \"\$job_pid\"' TERM", script)
    assert 'if [ "$code" -eq 75 ]' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert "export RAY_AUTH_MODE=token" in script and "--include-dashboard=false" in script


@pytest.mark.parametrize("options, words", [
    ({"nodes": 1, "cpus_per_node": 1}, "cannot hold 2 workers x 1 CPUs"),
    ({"nodes": 1, "gpus_per_node": 4}, "cannot hold 8 workers x 1 GPUs"),
])
def test_an_allocation_too_small_for_the_job_is_refused(options, words):
    job = QUICKSTART if "cpus_per_node" in options else LLAMA
    with pytest.raises(LaunchError, match=re.escape(words)):
        render(job, **options)


def test_the_cli_prints_the_script_and_submit_needs_sbatch(capsys, monkeypatch, tmp_path):
    from orchestrator.cli import main

    assert main(["launch", "slurm", str(QUICKSTART), "--nodes", "1", "--run-dir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.startswith("#!/bin/bash")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["launch", "slurm", str(QUICKSTART), "--run-dir", str(tmp_path / "r"), "--submit"]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
