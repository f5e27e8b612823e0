"""cluster/: the standing-infrastructure files parse and hold what their tools require; the
RayCluster validates against the KubeRay CRD; the Slurm dev config and launcher agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.launchers.schema import crd_schema, validate_manifest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_file_parses_and_opens_with_the_command_that_uses_it():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert docs(path), path
        assert path.read_text().startswith("# "), f"{path} should open with the command that uses it"


def test_the_standing_raycluster_validates_against_the_crd():
    schemas = dict(crd_schema(p) for p in sorted((REPO / "tests" / "data" / "k8s-crds").glob("*.yaml")))
    (cluster,) = docs(CLUSTER / "kuberay" / "raycluster.yaml")
    assert validate_manifest(cluster, schemas) == []
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    env = {e["name"]: e for e in worker["containers"][0]["env"]}
    assert "secretKeyRef" in env["HF_TOKEN"]["valueFrom"] and "value" not in env["RAY_AUTH_TOKEN"]
    assert env["RAY_AUTH_MODE"]["value"] == "token"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_ray_up_files_have_what_ray_up_requires(name):
    (config,) = docs(CLUSTER / "ray" / name)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, key
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] in ("aws", "gcp")
    gpu_nodes = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu_nodes and all(t["max_workers"] <= config["max_workers"] for t in gpu_nodes)
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--include-dashboard=false" in start


def test_kueue_queues_reference_each_other():
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs(CLUSTER / "kueue" / "queues.yaml")}
    assert all(d["apiVersion"].startswith("kueue.x-k8s.io/") for d in objects.values())
    queue = objects[("ClusterQueue", "gpu-research")]
    flavors = {f["name"] for g in queue["spec"]["resourceGroups"] for f in g["flavors"]}
    assert flavors <= {name for kind, name in objects if kind == "ResourceFlavor"}
    for group in queue["spec"]["resourceGroups"]:
        for flavor in group["flavors"]:
            assert {r["name"] for r in flavor["resources"]} == set(group["coveredResources"])
    assert objects[("LocalQueue", "research")]["spec"]["clusterQueue"] == "gpu-research"


def test_helm_values_point_the_operator_at_kueue():
    (values,) = docs(CLUSTER / "kuberay" / "values.yaml")
    assert values["batchScheduler"]["name"] == "kueue" and values["image"]["repository"]


def test_the_dev_slurm_config_has_its_placeholders_and_the_script_fills_them():
    conf = (CLUSTER / "slurm" / "slurm.conf").read_text()
    script = (CLUSTER / "slurm" / "start-dev-slurm.sh").read_text()
    assert "@HOST@" in conf and "@CPUS@" in conf
    assert "s/@HOST@/" in script and "s/@CPUS@/" in script
    assert "PartitionName=debug" in conf and "Default=YES" in conf
