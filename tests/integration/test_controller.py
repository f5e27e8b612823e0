"""The control plane on a local Ray: submit / list / status / logs / cancel / resume, priorities
and FIFO, concurrent small jobs, a killed controller, a lost runner, and 200 concurrent
submissions. Scheduling tests use the runner's no-op seam (a real subprocess per job that
sleeps and succeeds); the others run the real tiny-model job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL = ["resources.workers=1", "training.warmup_steps=2", "training.log_every_steps=5", "forgetting.tasks=[]",
         "forgetting.every_steps=null", "training.eval_every_steps=null", "data.eval=null"]


@pytest.fixture
def controller(local_ray, tmp_path):
    """A fresh controller (one per cluster) with its own FTCTL_HOME; stopped afterwards."""
    from orchestrator.api import Client, stop_controller

    def make(**options):
        stop_controller()
        return Client(home=tmp_path / "home", **options)

    yield make
    stop_controller()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def steps_logged(run_dir: str) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def states_of(status: dict) -> list[str]:
    return [e["to_state"] for e in status["events"]]


def test_submit_status_logs_cancel_and_resume_a_real_job(controller, capsys):
    client = controller()
    code = main(["submit", str(QUICKSTART), *SMALL, "training.max_steps=200", "checkpoint.every_steps=10",
                 "--priority", "3"])
    said = capsys.readouterr()
    assert code == 0, said.err
    job_id = said.out.strip()  # stdout holds the ID alone; the sentence goes to stderr
    assert job_id.startswith("quickstart-") and "QUEUED" in said.err
    status = client.status(job_id)
    assert status["priority"] == 3 and status["cpus"] == 1.0
    wait_for(lambda: steps_logged(client.status(job_id)["run_dir"]) >= 12, 180, "12 logged steps")

    assert main(["list", "--json"]) == 0
    listing = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listing[job_id]["state"] == "RUNNING"
    assert main(["list"]) == 0
    assert job_id in capsys.readouterr().out  # the table keeps IDs whole
    assert main(["cancel", job_id]) == 0
    final = client.wait(job_id, timeout=120)
    assert final["state"] == "CANCELLED" and final["reason"] == "cancelled on request"
    summary = final["summary"]
    assert summary["status"] == "preempted" and summary["checkpoint"]  # SIGTERM saved a checkpoint first
    saved = int(Path(summary["checkpoint"]).name.split("-")[1])
    assert saved >= 10

    # Re-queued under the same ID, it continues from that checkpoint and finishes.
    assert main(["resume", job_id]) == 0
    assert "re-queued" in capsys.readouterr().out
    done = client.wait(job_id, timeout=240)
    assert done["state"] == "SUCCEEDED", done
    assert done["summary"]["steps"] == 200 and done["summary"]["resumed_from"].endswith(f"step-{saved:08d}")
    assert states_of(done)[-4:] == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    assert main(["status", job_id]) == 0
    assert "CANCELLED" in capsys.readouterr().out  # the history keeps the cancel
    assert main(["logs", job_id]) == 0
    log = capsys.readouterr().out
    assert "preempted at step" in log and "200 steps on 1 worker(s)" in log  # both attempts' output

    # Unknown IDs get a sentence, not a traceback.
    assert main(["status", "no-such-job"]) == 2
    assert "no job" in capsys.readouterr().err


def test_priorities_fifo_concurrency_and_rejection(controller):
    client = controller(noop_seconds=2.5)
    one = ["resources.workers=1"]
    blockers = [client.submit(QUICKSTART, one) for _ in range(3)]  # the cluster has 3 CPUs
    wait_for(lambda: all(client.status(j["id"])["state"] == "RUNNING" for j in blockers), 30, "3 jobs at once")
    low = client.submit(QUICKSTART, one, priority=0)
    high = client.submit(QUICKSTART, one, priority=5)
    high2 = client.submit(QUICKSTART, one, priority=5)
    whole = client.submit(QUICKSTART, ["resources.workers=3"], priority=1)
    too_big = client.submit(QUICKSTART, ["resources.workers=4"], priority=9)
    assert too_big["state"] == "REJECTED" and "needs 4 CPU" in too_big["reason"] and "3 CPU" in too_big["reason"]
    # While the blockers run, nothing else has its full resources.
    assert {client.status(j["id"])["state"] for j in (low, high, high2, whole)} == {"QUEUED"}
    finals = {j["id"]: client.wait(j["id"], timeout=60) for j in (*blockers, low, high, high2, whole)}
    assert all(f["state"] == "SUCCEEDED" for f in finals.values())
    started = {k: f["started_at"] for k, f in finals.items()}
    # Priority first, FIFO within it: high, high2 (together), then whole (3 CPUs, alone), then low.
    assert started[high["id"]] <= started[high2["id"]] < started[whole["id"]] < started[low["id"]]
    ended = {k: f["finished_at"] for k, f in finals.items()}
    assert started[whole["id"]] >= max(ended[high["id"]], ended[high2["id"]])  # never on partial resources
    assert started[low["id"]] >= ended[whole["id"]]  # no overtaking the waiting 3-CPU job


def test_a_killed_controller_adopts_its_running_jobs_and_runs_none_twice(controller):
    import ray

    from orchestrator.api import controller as controller_handle

    client = controller(noop_seconds=6)
    jobs = [client.submit(QUICKSTART, ["resources.workers=1"]) for _ in range(4)]  # 3 run, 1 waits
    wait_for(lambda: sum(client.status(j["id"])["state"] == "RUNNING" for j in jobs) == 3, 30, "3 running")
    pid_before = client.info()["pid"]
    ray.kill(controller_handle(start=False), no_restart=False)  # Ray restarts it; it reconciles
    # ray.kill returns before the old process is gone: wait for the new one to answer.
    info = wait_for(lambda: (_info_or_none(client) or {}).get("pid") not in (None, pid_before) and client.info(),
                    60, "the restarted controller")
    assert info["pid"] != pid_before
    finals = [client.wait(j["id"], timeout=60) for j in jobs]
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * 4
    for final in finals:
        assert final["attempts"] == 1 and states_of(final).count("STARTING") == 1  # no second start
        exits = sorted(p.name for p in (Path(final["run_dir"]) / "controller").glob("exit-*.json"))
        assert exits == ["exit-1.json"]


def _info_or_none(client):
    try:
        return client.info()
    except Exception:
        return None


def test_a_lost_runner_is_requeued_and_resumes_from_its_checkpoint(controller):
    client = controller()
    job = client.submit(QUICKSTART, [*SMALL, "training.max_steps=100", "checkpoint.every_steps=10"])
    run_dir = job["run_dir"]
    wait_for(lambda: steps_logged(run_dir) >= 15, 180, "15 logged steps")
    pid = client.status(job["id"])["pid"]
    os.killpg(pid, signal.SIGKILL)  # the runner and its process group vanish without an exit code
    final = client.wait(job["id"], timeout=300)
    assert final["state"] == "SUCCEEDED", final
    assert final["attempts"] == 2 and "RETRYING" in states_of(final)
    retry = next(e for e in final["events"] if e["to_state"] == "RETRYING")
    assert "runner was lost" in retry["reason"]
    assert not (Path(run_dir) / "controller" / "exit-1.json").exists()  # the lost runner never reported
    attempts = [json.loads(line) for line in (Path(run_dir) / "attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["resumed_step"] >= 10, attempts
    assert final["summary"]["steps"] == 100


def test_200_concurrent_submissions_all_end_accounted_for(controller):
    client = controller(noop_seconds=0.0)
    ids: list[str] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        for _ in range(n):
            record = client.submit(QUICKSTART, ["resources.workers=1", "resources.cpus_per_worker=0.25"],
                                   priority=len(ids) % 3)
            with lock:
                ids.append(record["id"])

    threads = [threading.Thread(target=submit, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 200
    finals = [client.wait(i, timeout=300, poll_s=0.5) for i in ids]
    assert [f["state"] for f in finals].count("SUCCEEDED") == 200
    assert all(f["attempts"] == 1 and states_of(f).count("STARTING") == 1 for f in finals)
    assert len(client.list()) == 200
    for f in finals:
        assert [p.name for p in (Path(f["run_dir"]) / "controller").glob("exit-*.json")] == ["exit-1.json"]


def test_what_the_controller_refuses_is_one_line_without_a_traceback(controller, capsys, tmp_path, monkeypatch):
    controller(noop_seconds=0.5)
    refresh_job = str(REPO / "configs" / "refresh-nightly.yaml")
    cases = [(["status", "nope"], "no job 'nope'"), (["cancel", "nope"], "no job 'nope'"),
             (["schedule", "show", "a-b"], "no schedule named 'a-b'"),
             (["schedule", "add", "a/b", "--cron", "0 3 * * *", "--job", refresh_job], "schedule name 'a/b'")]
    assert main(["schedule", "add", "twice", "--cron", "0 3 * * *", "--job", refresh_job]) == 0
    cases.append((["schedule", "add", "twice", "--cron", "0 4 * * *", "--job", refresh_job], "twice"))
    capsys.readouterr()
    for argv, words in cases:
        assert main(argv) == 2, argv
        out = capsys.readouterr()
        assert words in out.err, (argv, out.err)
        assert "Traceback" not in out.err + out.out and "File \"" not in out.err, argv
        assert len(out.err.strip().splitlines()) == 1, (argv, out.err)


def test_submit_stores_data_paths_resolved_where_it_was_validated(controller, tmp_path, monkeypatch):
    """The controller runs jobs from its own directory: a relative path must not reach it."""
    from orchestrator.builtin.demo_data import write_demo_data
    from orchestrator.store.jobs import SQLiteJobStore, store_file

    client = controller(noop_seconds=0.5)
    write_demo_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    record = client.submit(QUICKSTART, [*SMALL, "data.train.path=data/target_train.jsonl"])
    stored = SQLiteJobStore(store_file(tmp_path / "home")).get(record["id"]).spec
    assert stored["data"]["train"]["path"] == str(tmp_path / "data" / "target_train.jsonl")
    assert client.wait(record["id"], timeout=60)["state"] == "SUCCEEDED"
