"""Scenarios that need a Ray cluster of their own (started and killed here), run by
test_cluster.py in a fresh process: `python cluster_scenarios.py two_nodes|ray_restart OUT_DIR`.
Each prints one JSON line of what it observed; the test asserts on it."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL = ["training.warmup_steps=2", "training.log_every_steps=5", "forgetting.tasks=[]", "forgetting.every_steps=null",
         "training.eval_every_steps=null", "data.eval=null", "checkpoint.every_steps=10"]
PLANTED = "hf_plantedSECRETtoken0123456789"

# A driver whose cluster is gone gives up after this long, instead of a minute.
os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"] = "8"


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def node_ids(run_dir: Path) -> list[str]:
    return sorted({json.loads(p.read_text()).get("node_id") for p in (run_dir / "workers").glob("rank-*.json")})


def two_nodes(out: Path) -> dict:
    """A 2-worker SPREAD job uses both nodes; removing the non-head node mid-run is survived
    by resuming from the latest checkpoint on what is left."""
    from ray.cluster_utils import Cluster
    from rich.console import Console

    from orchestrator.spec import load_spec
    from orchestrator.pipeline import run_job

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    run_dir = out / "spread"
    spec = load_spec(QUICKSTART, [*SMALL, "resources.workers=2", "resources.placement=spread",
                                  "training.max_steps=150", "checkpoint.max_failures=2"])
    seen: dict = {}

    def lose_a_node() -> None:
        wait_for(lambda: steps_logged(run_dir) >= 20 and len(list((run_dir / "workers").glob("rank-*.json"))) == 2,
                 240, "20 steps on 2 ranks")
        seen["nodes_before"] = node_ids(run_dir)
        seen["worker_node"] = worker.node_id
        seen["step_at_loss"] = steps_logged(run_dir)
        cluster.remove_node(worker)

    thread = threading.Thread(target=lose_a_node, daemon=True)
    thread.start()
    with open(out / "spread.log", "w") as log:
        code = run_job(spec, run_dir=run_dir, address=cluster.address, console=Console(file=log, width=160))
    thread.join(timeout=5)
    summary = json.loads((run_dir / "summary.json").read_text())
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    seen.update(code=code, summary_status=summary["status"], steps=summary["steps"], restarts=summary["restarts"],
                attempts=attempts, nodes_after=node_ids(run_dir))
    import ray

    ray.shutdown()
    cluster.shutdown()
    return seen


def ray_restart(out: Path) -> dict:
    """The whole Ray cluster dies under a running job and a queued one; a new cluster and
    controller find both records intact, re-queue the running one, which resumes from its
    checkpoint, and run the queued one. A planted HF token is used but never recorded."""
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.api import Client

    os.environ["HF_TOKEN"] = PLANTED  # the node's environment: where secrets live
    home = out / "home"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    ray.init(address=cluster.address, namespace="ftctl", log_to_driver=False)
    client = Client(home=home)
    running = client.submit(QUICKSTART, [*SMALL, "resources.workers=1", "training.max_steps=150"], priority=2)
    waiting = client.submit(QUICKSTART, [*SMALL, "resources.workers=3", "training.max_steps=20"], team="research")
    run_dir = Path(running["run_dir"])
    wait_for(lambda: steps_logged(run_dir) >= 20, 240, "20 steps")
    before = {r["id"]: r for r in client.list()}
    pid = client.status(running["id"])["pid"]
    ray.shutdown()
    cluster.shutdown()  # GCS, raylet, the controller and the job's workers all go
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             90, "the orphaned runner to exit")
    gone_at = time.time()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    ray.init(address=cluster.address, namespace="ftctl", log_to_driver=False)
    client = Client(home=home)
    after_restart = {r["id"]: r for r in client.list()}
    finals = {j: client.wait(j, timeout=400) for j in (running["id"], waiting["id"])}
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    leaks = [str(p) for p in home.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    log = (run_dir / "driver.log").read_text()
    result = {
        "before": before, "after_restart": after_restart,
        "finals": {j: {k: f[k] for k in ("state", "attempts", "reason", "token")} | {
            "events": [e["to_state"] for e in f["events"]], "steps": (f["summary"] or {}).get("steps")}
            for j, f in finals.items()},
        "running_id": running["id"], "waiting_id": waiting["id"], "attempts": attempts, "leaks": leaks,
        "credentials_line": "credentials available to this job: HF_TOKEN" in log,
        "exit_files": {p.name: json.loads(p.read_text()) for p in (run_dir / "controller").glob("exit-*.json")},
        "runner_gone_at": gone_at,
    }
    from orchestrator.api import stop_controller

    stop_controller()
    ray.shutdown()
    cluster.shutdown()
    return result


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"two_nodes": two_nodes, "ray_restart": ray_restart}[scenario](out_dir)
    print("RESULT " + json.dumps(result))
