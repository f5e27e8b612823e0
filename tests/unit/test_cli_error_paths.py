"""Every refused command says what to do in one line and never prints a traceback (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
REFRESH_JOB = ROOT / "configs" / "refresh-nightly.yaml"


def refused(capsys, *argv: str, code: int = 2) -> str:
    assert main(list(argv)) == code
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return out.err


def test_slurm_launch_with_no_nodes_is_refused(capsys):
    err = refused(capsys, "launch", "slurm", str(QUICKSTART), "--nodes", "0")
    assert "--nodes must be at least 1 (got 0)" in err


def test_slurm_launch_lists_every_bad_option_at_once(capsys):
    err = refused(capsys, "launch", "slurm", str(QUICKSTART), "--nodes", "-1", "--time", "4h",
                  "--partition", "gpu; rm -rf /", "--port", "70000")
    for words in ("--nodes must be at least 1", "--time '4h' is not a Slurm time limit", "--partition",
                  "--port must be 0"):
        assert words in err


def test_k8s_launch_refuses_negative_sizes_and_a_bad_cron(capsys):
    err = refused(capsys, "launch", "k8s", str(QUICKSTART), "--workers", "-3", "--gpus-per-worker", "-1",
                  "--cron", "banana")
    assert "--workers must be at least 1 (got -3)" in err
    assert "--gpus-per-worker must be at least 0 (got -1)" in err
    assert "--cron: cron 'banana': expected 5 fields" in err
    assert "replicas" not in capsys.readouterr().out


def test_k8s_launch_refuses_names_kubernetes_would_refuse(capsys):
    err = refused(capsys, "launch", "k8s", str(QUICKSTART), "--namespace", "Team_A", "--pvc", "my pvc",
                  "--secret", "1BAD=hf-token:token")
    assert "--namespace 'Team_A'" in err and "--pvc 'my pvc'" in err and "'1BAD' is not an environment" in err


@pytest.mark.parametrize("name", ["../evil", "a/b", "Nightly"])
def test_schedule_render_refuses_a_name_that_is_not_a_job_name(capsys, tmp_path, monkeypatch, name):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    err = refused(capsys, "schedule", "render", name, "--cron", "0 3 * * *", "--job", str(REFRESH_JOB),
                  "--target", "slurm")
    assert f"schedule name {name!r} is not usable" in err
    assert not (tmp_path / "home").exists() and not (tmp_path / "evil").exists()


def test_schedule_render_refuses_a_bad_slurm_time_and_cpus(capsys):
    err = refused(capsys, "schedule", "render", "nightly", "--cron", "0 3 * * *", "--job", str(REFRESH_JOB),
                  "--target", "slurm", "--cpus", "0", "--time", "soon")
    assert "--cpus must be at least 1 (got 0)" in err and "--time 'soon'" in err


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_resume_on_fewer_than_one_worker_is_refused(capsys, tmp_path, workers):
    err = refused(capsys, "resume", str(tmp_path), "--workers", workers)
    assert f"--workers must be at least 1 (got {workers})" in err


def test_eval_names_the_tasks_item_that_is_wrong_once(capsys, tmp_path):
    err = refused(capsys, "eval", "--model", "builtin:tiny-base", "--tasks", str(tmp_path / "nope.jsonl"))
    assert "data.train" not in err
    assert err.count("does not exist") == 1 and f"--tasks {tmp_path / 'nope.jsonl'}" in err


def test_run_refuses_a_model_dir_with_only_pickle_weights_before_ray_starts(capsys, tmp_path):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    refused(capsys, "run", str(QUICKSTART), f"model.path={model}", "--run-dir", str(tmp_path / "run"), code=1)
    run = tmp_path / "run"
    assert not (run / "ray").exists() and not (run / "worker_status.json").exists()  # no worker ever started
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "pickle files (pytorch_model.bin)" in summary["error"]
    assert "safe_serialization=True" in summary["error"]


def test_validate_a_directory_says_it_is_one(capsys, tmp_path):
    err = refused(capsys, "validate", str(tmp_path))
    assert "is a directory, not a job file" in err


def test_a_self_referencing_alias_in_an_override_is_refused_by_every_command(capsys):
    for argv in (["validate", str(QUICKSTART)], ["estimate", str(QUICKSTART)], ["run", str(QUICKSTART)],
                 ["launch", "slurm", str(QUICKSTART)], ["launch", "k8s", str(QUICKSTART)]):
        err = refused(capsys, *argv, "description=&a [*a]")
        assert "alias that refers to itself" in err, argv
