"""Which Ray each command uses, with real Ray clusters and the real `ftctl` program:

- beside an unrelated Ray cluster (its own temp dir, its own session), the control plane
  starts, uses and stops a head of its own and leaves the other alone; `ftctl run` uses a
  private instance and leaves it alone too;
- after ftctl's head is killed with SIGKILL, `controller start` finds out in seconds, starts a
  fresh head, and a job that was queued runs once;
- `id=$(ftctl submit ...)` then `ftctl status "$id"` works: stdout holds the ID alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import raycluster
from tests.integration.test_controller import wait_for

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL = ["resources.workers=1", "training.max_steps=6", "training.warmup_steps=2", "training.log_every_steps=2",
         "forgetting.tasks=[]", "forgetting.every_steps=null", "training.eval_every_steps=null", "data.eval=null",
         "merge.enabled=false"]
RAY_NOISE = ("Token authentication", "Traceback", "gcs_client.cc", "Started a local Ray instance")


def ftctl(env: dict, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def quiet(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`done`, after checking that none of Ray's own lines reached the user's terminal."""
    for noise in RAY_NOISE:
        assert noise not in done.stdout + done.stderr, (noise, done.stdout, done.stderr)
    return done


@pytest.fixture
def env(tmp_path):
    values = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FTCTL_VERBOSE")}
    values["FTCTL_HOME"] = str(tmp_path / "home")
    yield values
    head = raycluster.read_head(tmp_path / "home")
    if head is not None:  # a failed test must not leave its head running
        raycluster.stop_group(head.pid, grace_s=5)


@pytest.fixture
def foreign(tmp_path):
    """An unrelated Ray cluster: `ray start --head` in a session and temp dir of its own."""
    temp_dir = Path("/tmp") / f"foreign-ray-{os.getpid()}"
    port = raycluster.free_port()
    process = subprocess.Popen(
        [*raycluster.ray_command(), "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={port}",
         "--include-dashboard=false", "--disable-usage-stats", f"--dashboard-agent-listen-port={raycluster.free_port()}",
         f"--ray-client-server-port={raycluster.free_port()}", "--num-cpus=1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    address = wait_for(lambda: (temp_dir / "ray_current_cluster").is_file()
                       and (temp_dir / "ray_current_cluster").read_text().strip(), 90, "the foreign head")
    wait_for(lambda: raycluster.answers(address, timeout=1), 30, "the foreign GCS")
    members = raycluster.group_members(process.pid)
    yield address, process.pid, members
    raycluster.stop_group(process.pid, grace_s=5)


def state_of(env: dict, job_id: str) -> dict:
    done = ftctl(env, "status", job_id, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_control_plane_and_run_use_their_own_ray_beside_a_foreign_cluster(env, foreign, tmp_path):
    foreign_address, foreign_pgid, foreign_members = foreign

    # `ftctl run` beside it: a private instance, a one-line note which Ray, and success.
    run = ftctl(env, "run", str(QUICKSTART), *SMALL, "--run-dir", str(tmp_path / "run"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Ray: a private local instance for this run" in run.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "succeeded"

    start = quiet(ftctl(env, "controller", "start"))
    assert start.returncode == 0, start.stderr
    ray_info = json.loads(start.stdout)["ray"]
    assert ray_info["started_by_ftctl"] and ray_info["address"] != foreign_address
    assert "started ftctl's local Ray head" in start.stderr

    submitted = quiet(ftctl(env, "submit", str(QUICKSTART), *SMALL))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"quickstart-[0-9a-f]{8}", job_id), submitted.stdout  # the ID alone, for $(...)
    assert f"{job_id}: QUEUED" in submitted.stderr

    status = quiet(ftctl(env, "status", job_id))
    assert status.returncode == 0 and job_id in status.stdout
    listed = quiet(ftctl(env, "list", "--json"))
    assert job_id in {r["id"] for r in json.loads(listed.stdout)}
    final = wait_for(lambda: (s := state_of(env, job_id))["state"] in ("SUCCEEDED", "FAILED") and s, 240, "the job")
    assert final["state"] == "SUCCEEDED", final

    stopped = quiet(ftctl(env, "controller", "stop", "--ray"))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped ftctl's local Ray head" in stopped.stdout
    assert raycluster.read_head(Path(env["FTCTL_HOME"])) is None
    assert not raycluster.answers(ray_info["address"], timeout=1)
    after = ftctl(env, "list")
    assert after.returncode == 1 and "ftctl's Ray cluster is not running" in after.stderr

    # The foreign cluster saw none of it: every process of it still runs, its GCS answers.
    assert raycluster.answers(foreign_address)
    assert set(foreign_members) <= set(raycluster.group_members(foreign_pgid))


def test_a_killed_head_is_replaced_within_a_minute_and_a_queued_job_runs_once(env):
    home = Path(env["FTCTL_HOME"])
    # A one-CPU head and a controller whose runners stand in for jobs (sleep 30 s, succeed):
    # the first job holds the CPU, the second waits in the queue.
    bootstrap = ("from orchestrator import api; api.connect(num_cpus=1); "
                 "from orchestrator.api import Client; c = Client(noop_seconds=30); "
                 f"print(c.submit({str(QUICKSTART)!r}, ['resources.workers=1'])['id'])")
    made = subprocess.run([sys.executable, "-c", bootstrap], env=env, capture_output=True, text=True, timeout=180,
                          cwd=REPO)
    assert made.returncode == 0, made.stderr
    holder = made.stdout.strip().splitlines()[-1]
    queued_id = ftctl(env, "submit", str(QUICKSTART), *SMALL).stdout.strip()
    assert state_of(env, holder)["state"] == "RUNNING" and state_of(env, queued_id)["state"] == "QUEUED"

    head = raycluster.read_head(home)
    os.killpg(head.pid, signal.SIGKILL)
    wait_for(lambda: not raycluster.group_members(head.pid), 30, "the head's processes to go")

    began = time.monotonic()
    refused = ftctl(env, "list", timeout=60)
    assert refused.returncode == 1 and "no longer answers; run `ftctl controller start`" in refused.stderr
    restarted = quiet(ftctl(env, "controller", "start", "--num-cpus", "2", timeout=120))
    assert restarted.returncode == 0, restarted.stderr
    assert time.monotonic() - began < 60
    assert "no longer answers; cleaning it up and starting a fresh one" in restarted.stderr
    fresh = raycluster.read_head(home)
    assert fresh.pid != head.pid and fresh.address != head.address

    final = wait_for(lambda: (s := state_of(env, queued_id))["state"] in ("SUCCEEDED", "FAILED") and s, 240,
                     "the queued job")
    assert final["state"] == "SUCCEEDED" and final["attempts"] == 1, final
    exits = sorted(p.name for p in (Path(final["run_dir"]) / "controller").glob("exit-*.json"))
    assert exits == ["exit-1.json"]  # it ran once
    assert wait_for(lambda: state_of(env, holder)["state"] == "SUCCEEDED", 60, "the adopted stand-in job")
    assert ftctl(env, "controller", "stop", "--ray").returncode == 0
