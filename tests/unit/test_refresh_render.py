"""Refreshes without a long-running controller: the RayCronJob (checked against KubeRay's CRD)
and the scrontab entry that run `ftctl refresh NAME`; and the job a refresh runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from orchestrator.launchers.kubernetes import K8sOptions, render_manifests
from orchestrator.launchers.schema import crd_schema, validate_manifest
from orchestrator.launchers.slurm import render_scrontab
from orchestrator.refresh.jobs import check_refreshable, refresh_spec
from orchestrator.spec.paths import absolute_paths
from orchestrator.spec import load_spec, resolve_spec

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "configs" / "refresh-nightly.yaml"
CRDS = REPO / "tests" / "data" / "k8s-crds"


def test_the_raycronjob_runs_a_refresh_and_the_crd_accepts_it():
    schemas = dict(crd_schema(path) for path in sorted(CRDS.glob("*.yaml")))
    spec = load_spec(JOB, check_files=False)
    _, cron_job = render_manifests(spec, K8sOptions(cron="0 3 * * *", refresh="nightly-shift"))
    assert cron_job["kind"] == "RayCronJob" and validate_manifest(cron_job, schemas) == []
    assert cron_job["spec"]["schedule"] == "0 3 * * *"
    entrypoint = shlex.split(cron_job["spec"]["jobTemplate"]["entrypoint"].replace("$(", "").replace(")", ""))
    assert entrypoint[:5] == ["ftctl", "refresh", "nightly-shift", "--job", "/etc/ftctl/job.yaml"]
    assert "--address" in entrypoint and "auto" in entrypoint


def test_the_scrontab_entry_runs_the_refresh_at_the_cron_with_the_registry_on_shared_storage(tmp_path):
    spec = load_spec(JOB, check_files=False)
    text = render_scrontab("nightly-shift", "0 3 * * *", JOB, ["training.max_steps=50"], spec,
                           ftctl_home=tmp_path / "shared", time_limit="01:00:00")
    lines = text.splitlines()
    options = [line.split(" ", 1)[1] for line in lines if line.startswith("#SCRON ")]
    assert options == ["--job-name=ftctl-refresh-nightly-shift", "--cpus-per-task=1",
                       f"--output={tmp_path / 'shared' / 'refresh-logs'}/nightly-shift-%j.log", "--time=01:00:00"]
    (entry,) = [line for line in lines if not line.startswith("#")]
    assert entry.split()[:5] == ["0", "3", "*", "*", "*"]
    command = shlex.split(entry.split(None, 5)[5])
    assert f"FTCTL_HOME={tmp_path / 'shared'}" in command
    at = command.index("ftctl")
    assert command[at:] == ["ftctl", "refresh", "nightly-shift", "--job", str(JOB), "training.max_steps=50"]


def test_render_refuses_a_job_with_nothing_to_gate_on(capsys):
    from orchestrator.cli import main

    code = main(["schedule", "render", "q", "--cron", "0 3 * * *", "--job", str(REPO / "configs" / "quickstart.yaml"),
                 "--target", "slurm"])
    assert code == 2 and "no forgetting gate" in capsys.readouterr().err
    assert main(["schedule", "render", "q", "--cron", "0 3 * * 9", "--job", str(JOB), "--target", "k8s"]) == 2


def test_check_refreshable_names_each_missing_piece():
    spec = resolve_spec({"name": "x", "method": {"kind": "full"},
                         "data": {"train": {"path": "builtin:demo/target_train.jsonl"}}})
    problems = check_refreshable(spec)
    assert len(problems) == 3
    assert "method.kind is full" in problems[0] and "data.eval" in problems[1] and "forgetting gate" in problems[2]
    assert check_refreshable(load_spec(JOB, check_files=False)) == []


def test_a_refresh_job_freezes_the_glob_and_warm_starts_from_the_promoted_version(tmp_path):
    from types import SimpleNamespace

    data = tmp_path / "data" / "nightly"
    data.mkdir(parents=True)
    for day in ("02", "01"):
        (data / f"2026-11-{day}.jsonl").write_text('{"prompt": "shift ab=", "response": "bc"}\n')
    adapter = tmp_path / "v1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    spec = absolute_paths(load_spec(JOB, check_files=False).model_dump(mode="json"), tmp_path)
    assert spec["data"]["train"]["path"] == str(tmp_path / "data/nightly/*.jsonl")
    first = refresh_spec(spec, "nightly", None).model_dump(mode="json")
    assert first["name"] == "nightly" and first["method"]["lora"]["init_adapter"] is None
    assert first["promotion"] | {} == {**first["promotion"], "adapter": "nightly", "auto": True, "parent": None}
    assert first["data"]["train"]["files"] == [str(data / "2026-11-01.jsonl"), str(data / "2026-11-02.jsonl")]
    head = SimpleNamespace(version=4, adapter=str(adapter))
    later = refresh_spec(spec, "nightly", head).model_dump(mode="json")
    assert later["method"]["lora"]["init_adapter"] == str(adapter) and later["promotion"]["parent"] == 4
    assert spec["data"]["train"].get("files") is None  # the stored job is left as it was


def test_a_refresh_with_no_data_yet_says_so(tmp_path):
    from orchestrator.data.errors import DataError

    spec = absolute_paths(load_spec(JOB, check_files=False).model_dump(mode="json"), tmp_path)
    with pytest.raises(DataError, match="no data file matches"):
        refresh_spec(spec, "nightly", None)


def test_a_glob_is_valid_before_its_files_arrive_but_must_name_a_data_format(tmp_path):
    from orchestrator.spec import SpecError

    raw = {"name": "x", "data": {"train": {"path": str(tmp_path / "later" / "*.jsonl")}}}
    assert resolve_spec(raw).data.train.path.endswith("*.jsonl")
    raw["data"]["train"]["path"] = str(tmp_path / "later" / "*")
    with pytest.raises(SpecError, match="data file suffix"):
        resolve_spec(raw)
    raw["data"]["train"] = {"path": str(tmp_path / "*.jsonl"), "files": [str(tmp_path / "gone.jsonl")]}
    with pytest.raises(SpecError, match="no longer exists"):
        resolve_spec(raw)


def test_the_history_of_a_version_no_gate_judged_comes_from_its_job(store, capsys):
    from orchestrator.cli.adapter_history import history
    from orchestrator.store.registry import Registry

    registry = Registry(store)
    record = {"artifacts": {"adapter": "/runs/a/adapter"}, "data": {"files": None},
              "job": {"final_eval": {"eval_loss": 2.5},
                      "forgetting_tasks": {"reversal": {"metric": "exact_match", "base": 1.0, "final": 0.75}}}}
    registry.register("hand", record, None, "/runs/a")
    (row,) = history(registry, "hand")
    assert row["verdict"] == "registered" and row["target"] == 2.5 and not row["current"]
    assert row["tasks"] == {"reversal": 0.75} and row["drift"] == {"reversal": -0.25}
