"""KubeRay manifests for a job, rendered by pure functions (dicts); applying them is separate.

A job becomes a ConfigMap holding its resolved job file and a RayJob whose RayCluster has a
CPU head (where `ftctl run` drives the job) and a worker group sized from the job's
resources, with GPU tolerations, a PVC for checkpoints and run dirs, and credentials from
Kubernetes Secrets (secretKeyRef, never literal values). With a cron schedule the RayJob
spec is wrapped in a RayCronJob.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.launchers.errors import DNS_LABEL, DNS_SUBDOMAIN, LaunchError, at_least, cron, token
from orchestrator.spec.models import NAME_PATTERN, JobSpec

RUNS_MOUNT = "/ftctl"            # the PVC: FTCTL_HOME (caches) and run dirs live here
CONFIG_MOUNT = "/etc/ftctl"      # the ConfigMap with job.yaml


@dataclass(frozen=True)
class SecretRef:
    """An environment variable filled from a Kubernetes Secret's key."""
    env: str
    secret: str
    key: str


@dataclass(frozen=True)
class K8sOptions:
    image: str = "ftctl:latest"
    namespace: str = "default"
    workers: int | None = None            # default: the job's resources.workers
    gpus_per_worker: float | None = None  # default: the job's resources.gpus_per_worker
    cpus_per_worker: float | None = None
    memory_per_worker: str = "32Gi"
    pvc: str = "ftctl-runs"
    cron: str | None = None
    refresh: str | None = None            # an adapter name: run `ftctl refresh NAME` (gated promotion) instead
    secrets: tuple[SecretRef, ...] = field(default_factory=lambda: (SecretRef("HF_TOKEN", "hf-token", "token"),))
    ttl_seconds_after_finished: int = 3600
    backoff_limit: int = 2                # RayJob retries (each resumes from the PVC's checkpoints)

    def problems(self) -> list[str]:
        """Every option the cluster would refuse (or render into nonsense), as a sentence each."""
        found: list[str] = []
        at_least(found, "--workers", self.workers, 1)
        at_least(found, "--gpus-per-worker", self.gpus_per_worker, 0)
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            found.append(f"cpus per worker must be positive (got {self.cpus_per_worker:g})")
        at_least(found, "ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0)
        at_least(found, "backoff_limit", self.backoff_limit, 0)
        token(found, "--image", self.image)
        if not DNS_LABEL.match(self.namespace):
            found.append(f"--namespace {self.namespace!r} is not a Kubernetes namespace name "
                         "(lowercase letters, digits and '-', at most 63)")
        if not DNS_SUBDOMAIN.match(self.pvc):
            found.append(f"--pvc {self.pvc!r} is not a PersistentVolumeClaim name (lowercase letters, digits, '-' and '.')")
        if not _QUANTITY.match(self.memory_per_worker):
            found.append(f"memory per worker {self.memory_per_worker!r} is not a Kubernetes quantity such as 32Gi")
        cron(found, "--cron", self.cron)
        for ref in self.secrets:
            if not _ENV.match(ref.env):
                found.append(f"--secret {ref.env}=...: {ref.env!r} is not an environment variable name")
            if not DNS_SUBDOMAIN.match(ref.secret):
                found.append(f"--secret {ref.env}={ref.secret}:{ref.key}: {ref.secret!r} is not a Secret name")
            if not _SECRET_KEY.match(ref.key):
                found.append(f"--secret {ref.env}={ref.secret}:{ref.key}: {ref.key!r} is not a Secret key")
        if self.refresh is not None and not re.match(NAME_PATTERN, self.refresh):
            found.append(f"refresh name {self.refresh!r} is not an adapter name (lowercase letters, digits, "
                         "'.', '_' and '-')")
        return found


_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def k8s_name(name: str, suffix: str = "") -> str:
    """A DNS-1123 label from a job name (lowercase alphanumerics and '-', at most 63)."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "job"
    return (base[: 63 - len(suffix)].rstrip("-") + suffix)[:63]


def render_manifests(spec: JobSpec, options: K8sOptions) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] or, with a cron schedule, [ConfigMap, RayCronJob]; LaunchError
    listing every problem with the options."""
    problems = options.problems()
    if problems:
        raise LaunchError(problems)
    name = k8s_name(spec.name)
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": k8s_name(spec.name, "-job"), "namespace": options.namespace, "labels": _labels(spec)},
        "data": {"job.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)},
    }
    job_spec = rayjob_spec(spec, options)
    if options.cron:
        main = {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
                "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(spec)},
                "spec": {"schedule": options.cron, "jobTemplate": job_spec}}
    else:
        main = {"apiVersion": "ray.io/v1", "kind": "RayJob",
                "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(spec)},
                "spec": job_spec}
    return [config_map, main]


def rayjob_spec(spec: JobSpec, options: K8sOptions) -> dict[str, Any]:
    r = spec.resources
    workers = options.workers or r.workers
    gpus = r.gpus_per_worker if options.gpus_per_worker is None else options.gpus_per_worker
    cpus = options.cpus_per_worker or r.cpus_per_worker
    # A RayJob's retries share its run dir and resume from its checkpoints. Each scheduled run
    # of a RayCronJob gets a run dir of its own (stamped when its entrypoint starts), so a
    # new run never "resumes" the finished one before it.
    stamp = "-$(date -u +%Y%m%dT%H%M%SZ)" if options.cron else ""
    run_dir = f"{RUNS_MOUNT}/runs/{spec.name}{stamp}"
    # The job file's worker count follows the worker group; resume=auto continues from the PVC.
    sizing = (f"resources.workers={workers} resources.gpus_per_worker={gpus:g} resources.cpus_per_worker={cpus:g} "
              f"checkpoint.resume=auto --run-dir {run_dir} --address auto")
    entrypoint = (f"ftctl refresh {options.refresh} --job {CONFIG_MOUNT}/job.yaml {sizing}" if options.refresh
                  else f"ftctl run {CONFIG_MOUNT}/job.yaml {sizing}")
    return {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
        "backoffLimit": options.backoff_limit,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": {
            "headGroupSpec": {
                # The head drives the job (ftctl run) and trains nothing: no CPUs for Ray tasks.
                "rayStartParams": {"num-cpus": "0"},
                "template": _pod(spec, options, "ray-head", {"cpu": "2", "memory": "8Gi"}, gpus=0),
            },
            "workerGroupSpecs": [{
                "groupName": "gpu-workers" if gpus else "cpu-workers",
                "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                "rayStartParams": {},
                "template": _pod(spec, options, "ray-worker",
                                 {"cpu": f"{cpus:g}", "memory": options.memory_per_worker}, gpus=gpus),
            }],
        },
    }


def _pod(spec: JobSpec, options: K8sOptions, container: str, resources: dict[str, str], gpus: float) -> dict:
    limits = dict(resources)
    if gpus:
        limits["nvidia.com/gpu"] = str(int(gpus)) if float(gpus).is_integer() else f"{gpus:g}"
    env = [{"name": "FTCTL_HOME", "value": f"{RUNS_MOUNT}/home"}] + [
        {"name": s.env, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key}}} for s in options.secrets]
    pod: dict[str, Any] = {
        "metadata": {"labels": _labels(spec)},
        "spec": {
            "containers": [{
                "name": container, "image": options.image,
                "resources": {"requests": dict(resources), "limits": limits},
                "env": env,
                "volumeMounts": [{"name": "runs", "mountPath": RUNS_MOUNT},
                                 {"name": "job", "mountPath": CONFIG_MOUNT, "readOnly": True},
                                 {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": options.pvc}},
                        {"name": "job", "configMap": {"name": k8s_name(spec.name, "-job")}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
    }
    if gpus:
        pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def _labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ftctl", "ftctl/job": k8s_name(spec.name)}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    # Multi-line strings (the embedded job file) as readable literal blocks.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)
