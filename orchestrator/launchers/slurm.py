"""Slurm: render the sbatch script for a job (a pure function of the job and options), and
submit it. The template is launch/slurm/ftctl.sbatch: a Ray head on the first node, workers on
the others, `ftctl run JOB.yaml --address HEAD_IP:PORT`, SIGTERM forwarded to the job, requeue after a preemption."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.launchers.errors import LaunchError, at_least, token
from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec

TEMPLATE = Path(__file__).resolve().parents[2] / "launch" / "slurm" / "ftctl.sbatch"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None   # default: enough for the job's workers spread over the nodes
    partition: str | None = None
    time: str | None = None            # e.g. 04:00:00
    account: str | None = None
    port: int = 0                      # 0: a free port on the head node, chosen when the job starts

    def problems(self) -> list[str]:
        """Every option that Slurm (or the script) could not use, as a sentence each."""
        found: list[str] = []
        at_least(found, "--nodes", self.nodes, 1)
        at_least(found, "--gpus-per-node", self.gpus_per_node, 0)
        at_least(found, "--cpus-per-node", self.cpus_per_node, 1)
        if not 0 <= self.port <= 65535:
            found.append(f"--port must be 0 (a free port) or a port number up to 65535 (got {self.port})")
        check_time_limit(found, "--time", self.time)
        token(found, "--partition", self.partition)
        token(found, "--account", self.account)
        return found


def check_time_limit(problems: list[str], flag: str, value: str | None) -> None:
    if value is not None and not _SLURM_TIME.match(value):
        problems.append(f"{flag} {value!r} is not a Slurm time limit: write MINUTES, HH:MM:SS or DAYS-HH:MM:SS")


_SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2}|UNLIMITED|INFINITE|unlimited|infinite)$")


def render_sbatch(spec: JobSpec, job_file: Path, overrides: list[str], run_dir: Path, ftctl_home: Path,
                  options: SlurmOptions, template: Path = TEMPLATE) -> str:
    problems = options.problems()
    if problems:
        raise LaunchError(problems)
    r = spec.resources
    cpus = options.cpus_per_node or max(1, math.ceil(r.workers * r.cpus_per_worker / options.nodes))
    if options.nodes * cpus < r.workers * r.cpus_per_worker:
        raise LaunchError(f"{options.nodes} node(s) x {cpus} CPUs cannot hold {r.workers} workers x "
                          f"{r.cpus_per_worker:g} CPUs; raise --nodes or --cpus-per-node")
    if r.gpus_per_worker and options.nodes * options.gpus_per_node < r.workers * r.gpus_per_worker:
        raise LaunchError(f"{options.nodes} node(s) x {options.gpus_per_node} GPUs cannot hold {r.workers} workers x "
                          f"{r.gpus_per_worker:g} GPUs; raise --nodes or --gpus-per-node")
    extra = "".join(f"#SBATCH {flag}\n" for flag in (
        f"--gpus-per-node={options.gpus_per_node}" if options.gpus_per_node else None,
        f"--partition={options.partition}" if options.partition else None,
        f"--time={options.time}" if options.time else None,
        f"--account={options.account}" if options.account else None) if flag)
    values = {
        "name": spec.name, "nodes": options.nodes, "cpus_per_node": cpus, "gpus_per_node": options.gpus_per_node,
        "sbatch_extra": extra, "log_dir": shlex.quote(str(RunDir(run_dir).slurm)),
        # The time-limit warning comes early enough for the job's own SIGTERM grace, plus margin.
        "signal_lead_s": int(spec.checkpoint.sigterm_grace_s) + 60,
        "ftctl_home": shlex.quote(str(ftctl_home)), "run_dir": shlex.quote(str(run_dir)),
        "job_file": shlex.quote(str(Path(job_file).resolve())), "port": options.port,
        "overrides": " ".join(shlex.quote(o) for o in overrides),
    }
    text = template.read_text()
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise LaunchError(f"{template} has placeholders this version does not fill: {', '.join(unknown)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_scrontab(name: str, cron: str, job_file: Path, overrides: list[str], spec: JobSpec,
                    ftctl_home: Path | None = None, cpus: int | None = None, time_limit: str | None = None,
                    log_dir: Path | None = None) -> str:
    """A `scrontab` entry that runs `ftctl refresh NAME` on one node at every cron slot.
    Slurm runs each slot as a batch job; FTCTL_HOME (the registry) must be on storage the
    nodes share."""
    from orchestrator.spec.paths import ftctl_home as default_home

    problems: list[str] = []
    at_least(problems, "--cpus", cpus, 1)
    check_time_limit(problems, "--time", time_limit)
    if problems:
        raise LaunchError(problems)
    r = spec.resources
    home = Path(ftctl_home or default_home()).resolve()
    logs = Path(log_dir or home / "refresh-logs").resolve()
    need = cpus or max(1, math.ceil(r.workers * r.cpus_per_worker))
    options = [f"--job-name=ftctl-refresh-{name}", f"--cpus-per-task={need}", f"--output={logs}/{name}-%j.log"]
    if r.gpus_per_worker:
        options.append(f"--gpus={math.ceil(r.workers * r.gpus_per_worker)}")
    if time_limit:
        options.append(f"--time={time_limit}")
    command = " ".join(["ftctl", "refresh", shlex.quote(name), "--job", shlex.quote(str(Path(job_file).resolve())),
                        *(shlex.quote(o) for o in overrides)])
    lines = [f"# ftctl: refresh adapter {name} at '{cron}'; install with `scrontab FILE` (keeps no other entries: "
             "merge with `scrontab -l` first)"]
    lines += [f"#SCRON {o}" for o in options]
    lines.append(f"{cron} mkdir -p {shlex.quote(str(logs))} && FTCTL_HOME={shlex.quote(str(home))} {command}")
    return "\n".join(lines)


def submit_sbatch(script: str, run_dir: Path) -> str:
    """Write the script into the run dir and sbatch it; the Slurm job ID."""
    RunDir(run_dir).slurm.mkdir(parents=True, exist_ok=True)
    path = RunDir(run_dir).slurm / "job.sbatch"
    path.write_text(script)
    try:
        done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError("sbatch is not on PATH: run on a Slurm login node, or leave out --submit to print "
                          "the script") from None
    if done.returncode != 0:
        raise LaunchError(f"sbatch refused the job: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]
