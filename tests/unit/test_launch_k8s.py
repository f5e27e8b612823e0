"""KubeRay manifests: every job file renders a RayJob (and a RayCronJob) that the real CRD
schemas accept, with GPUs, tolerations, the PVC and Secrets where they belong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.launchers.kubernetes import K8sOptions, SecretRef, k8s_name, render_manifests, to_yaml
from orchestrator.launchers.schema import crd_schema, validate_manifest
from orchestrator.spec import load_spec, resolve_spec

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "tests" / "data" / "k8s-crds"   # copies of KubeRay's CRDs (RayJob, RayCluster, RayCronJob)
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def schemas() -> dict:
    return dict(crd_schema(path) for path in sorted(CRDS.glob("*.yaml")))


def test_the_three_kuberay_kinds_are_known(schemas):
    assert set(schemas) == {"RayJob", "RayCluster", "RayCronJob"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("cron", [None, "0 3 * * *"])
def test_every_job_file_renders_manifests_the_crds_accept(config, cron, schemas):
    spec = load_spec(config, check_files=False)
    config_map, job = render_manifests(spec, K8sOptions(image="registry.example/ftctl:0.1", cron=cron))
    assert job["kind"] == ("RayCronJob" if cron else "RayJob")
    assert validate_manifest(job, schemas) == []
    # The job file travels in the ConfigMap and reads back as the same job.
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == f"{k8s_name(spec.name)}-job"
    assert resolve_spec(yaml.safe_load(config_map["data"]["job.yaml"]), check_files=False) == spec
    # The RayCluster inside validates as a RayCluster too.
    template = job["spec"]["jobTemplate"] if cron else job["spec"]
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c"},
               "spec": template["rayClusterSpec"]}
    assert validate_manifest(cluster, schemas) == []


def test_a_misspelt_field_is_caught_not_pruned(schemas):
    _, job = render_manifests(load_spec(REPO / "configs" / "quickstart.yaml", check_files=False), K8sOptions())
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 3
    job["spec"]["shutdownAfterJobFinish"] = True
    problems = validate_manifest(job, schemas)
    assert any("'replica' was unexpected" in p for p in problems)
    assert any("'shutdownAfterJobFinish' was unexpected" in p for p in problems)


def test_a_wrong_type_is_caught(schemas):
    _, job = render_manifests(load_spec(REPO / "configs" / "quickstart.yaml", check_files=False), K8sOptions())
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in p and "'two'" in p for p in validate_manifest(job, schemas))


def workers_of(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def test_gpu_workers_get_gpu_limits_and_tolerations_and_the_head_trains_nothing():
    spec = load_spec(REPO / "configs" / "llama3-8b-lora-1x8-ddp.yaml", check_files=False)
    _, job = render_manifests(spec, K8sOptions(workers=16))
    group = workers_of(job)
    pod = group["template"]["spec"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 16
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "tolerations" not in head["template"]["spec"]
    assert "resources.workers=16" in job["spec"]["entrypoint"]


def test_cpu_jobs_ask_for_no_gpus():
    _, job = render_manifests(load_spec(REPO / "configs" / "quickstart.yaml", check_files=False), K8sOptions())
    pod = workers_of(job)["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"] and "tolerations" not in pod
    assert workers_of(job)["groupName"] == "cpu-workers"


def test_credentials_come_from_secrets_and_runs_from_the_pvc():
    spec = load_spec(REPO / "configs" / "quickstart.yaml", check_files=False)
    _, job = render_manifests(spec, K8sOptions(pvc="team-runs", secrets=(SecretRef("HF_TOKEN", "hf", "token"),
                                                                         SecretRef("WANDB_API_KEY", "wandb", "key"))))
    for pod in (job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], workers_of(job)["template"]):
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
        assert "value" not in env["WANDB_API_KEY"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "team-runs"


def test_a_rayjob_resumes_in_one_run_dir_and_each_cron_run_gets_its_own():
    spec = load_spec(REPO / "configs" / "quickstart.yaml", check_files=False)
    _, job = render_manifests(spec, K8sOptions())
    assert "--run-dir /ftctl/runs/quickstart " in job["spec"]["entrypoint"]
    assert "checkpoint.resume=auto" in job["spec"]["entrypoint"] and job["spec"]["backoffLimit"] == 2
    _, cron = render_manifests(spec, K8sOptions(cron="*/30 * * * *"))
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert "--run-dir /ftctl/runs/quickstart-$(date -u +%Y%m%dT%H%M%SZ)" in cron["spec"]["jobTemplate"]["entrypoint"]


@pytest.mark.parametrize("name, expected", [("llama3-8b.lora_v2", "llama3-8b-lora-v2"), ("x" * 80, "x" * 63)])
def test_names_become_dns_labels(name, expected):
    assert k8s_name(name) == expected


def test_the_cli_prints_yaml_and_apply_needs_kubectl(capsys, monkeypatch):
    from orchestrator.cli import main

    assert main(["launch", "k8s", str(REPO / "configs" / "quickstart.yaml"), "--cron", "0 3 * * *",
                 "--secret", "HF_TOKEN=hf:token"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayCronJob"]
    assert list(yaml.safe_load_all(to_yaml(docs))) == docs  # the literal-block job file round-trips
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["launch", "k8s", str(REPO / "configs" / "quickstart.yaml"), "--apply"]) == 1
    assert "kubectl" in capsys.readouterr().err
    assert main(["launch", "k8s", str(REPO / "configs" / "quickstart.yaml"), "--secret", "HF_TOKEN"]) == 2
