"""`ftctl launch slurm` and `ftctl launch k8s`: render the job for a cluster scheduler, and submit it."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.cli.arguments import JOB_FILE, OVERRIDES, load_job
from orchestrator.cli.command import Arg, Group, command
from orchestrator.cli.output import console, fail, refuse
from orchestrator.exitcodes import ExitCode

LAUNCH = Group("launch", "Render (and submit) the job for a cluster scheduler.", metavar="TARGET")


@command("slurm", JOB_FILE, OVERRIDES,
         Arg("--nodes", type=int, default=1),
         Arg("--gpus-per-node", type=int, default=0),
         Arg("--cpus-per-node", type=int, default=None, help="default: enough for the job's workers"),
         Arg("--partition", default=None),
         Arg("--time", default=None, help="time limit, e.g. 04:00:00 (the job checkpoints before it)"),
         Arg("--account", default=None),
         Arg("--port", type=int, default=0, help="Ray head port (default: a free one, chosen at start)"),
         Arg("--run-dir", type=Path, default=None,
             help="default runs/<name>-<timestamp> (on a shared file system)"),
         Arg("--submit", action="store_true", help="sbatch it (default: print the script)"),
         group=LAUNCH)
def cmd_launch_slurm(job: Path, overrides: list[str], nodes: int, gpus_per_node: int, cpus_per_node: int | None,
                     partition: str | None, time: str | None, account: str | None, port: int, run_dir: Path | None,
                     submit: bool) -> int:
    """Render the job as an sbatch script (Ray head + workers on the allocation, then ftctl run);
    print it, or submit it with --submit."""
    from orchestrator.launchers.slurm import LaunchError, SlurmOptions, render_sbatch, submit_sbatch
    from orchestrator.pipeline import default_run_dir
    from orchestrator.spec.paths import ftctl_home

    spec = load_job(job, overrides)
    if spec is None:
        return ExitCode.INVALID
    run_dir = (run_dir or default_run_dir(spec)).resolve()
    options = SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node,
                           partition=partition, time=time, account=account, port=port)
    try:
        script = render_sbatch(spec, job, overrides, run_dir, ftctl_home(), options)
        if not submit:
            sys.stdout.write(script)
            return ExitCode.OK
        job_id = submit_sbatch(script, run_dir)
    except LaunchError as err:
        return refuse(err.problems)
    console.print(f"Slurm job {job_id}: run dir {run_dir}; log {run_dir / 'slurm'}/{spec.name}-{job_id}.out")
    return ExitCode.OK


@command("k8s", JOB_FILE, OVERRIDES,
         Arg("--image", default="ftctl:latest", help="container image with ftctl installed"),
         Arg("--namespace", default="default"),
         Arg("--workers", type=int, default=None, help="worker pods (default: resources.workers)"),
         Arg("--gpus-per-worker", type=float, default=None, help="default: resources.gpus_per_worker"),
         Arg("--pvc", default="ftctl-runs", help="PersistentVolumeClaim for run dirs and checkpoints"),
         Arg("--cron", default=None, help='a schedule such as "0 3 * * *": render a RayCronJob'),
         Arg("--secret", action="append", default=[], dest="secrets", metavar="ENV=SECRET:KEY",
             help="an env var from a Secret key (default HF_TOKEN=hf-token:token; repeatable)"),
         Arg("--apply", action="store_true", help="pipe the manifests to kubectl apply"),
         group=LAUNCH)
def cmd_launch_k8s(job: Path, overrides: list[str], image: str, namespace: str, workers: int | None,
                   gpus_per_worker: float | None, pvc: str, cron: str | None, secrets: list[str], apply: bool) -> int:
    """Render the job as KubeRay manifests (a ConfigMap with the job file and a RayJob, or a
    RayCronJob with --cron); print them, or pipe them to kubectl with --apply."""
    import shutil
    import subprocess

    from orchestrator.launchers.errors import LaunchError
    from orchestrator.launchers.kubernetes import K8sOptions, SecretRef, render_manifests, to_yaml

    spec = load_job(job, overrides, check_files=False)  # the files live on the cluster
    if spec is None:
        return ExitCode.INVALID
    refs = []
    for item in secrets:
        env, _, ref = item.partition("=")
        secret, _, key = ref.partition(":")
        if not (env and secret and key):
            return fail(f"--secret {item!r}: write ENV=SECRET:KEY, e.g. HF_TOKEN=hf-token:token", ExitCode.INVALID)
        refs.append(SecretRef(env, secret, key))
    options = K8sOptions(image=image, namespace=namespace, workers=workers, gpus_per_worker=gpus_per_worker,
                         pvc=pvc, cron=cron, **({"secrets": tuple(refs)} if refs else {}))
    try:
        text = to_yaml(render_manifests(spec, options))
    except LaunchError as err:
        return refuse(err.problems)
    if not apply:
        sys.stdout.write(text)
        return ExitCode.OK
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return fail("--apply needs kubectl on PATH; without --apply the manifests are printed")
    return subprocess.run([kubectl, "apply", "-f", "-"], input=text, text=True).returncode
