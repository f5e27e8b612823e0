"""Clusters of their own: a 2-worker SPREAD job over two Ray nodes surviving the loss of one,
and the controller surviving the death of the whole Ray cluster (records intact, the running
job re-queued and resumed from its checkpoint, a planted credential never recorded). Each
scenario runs in a fresh process (cluster_scenarios.py) so it can start and kill Ray freely."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = Path(__file__).with_name("cluster_scenarios.py")


def scenario(name: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(SCENARIOS), name, str(out)], capture_output=True, text=True,
                          timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def test_a_spread_job_uses_both_nodes_and_survives_losing_one(tmp_path):
    seen = scenario("two_nodes", tmp_path)
    assert len(seen["nodes_before"]) == 2 and seen["worker_node"] in seen["nodes_before"]  # one rank per node
    assert seen["code"] == 0 and seen["summary_status"] == "succeeded" and seen["steps"] == 150
    # The loss was survived by restarting from a checkpoint, on the node that is left.
    (restart,) = seen["restarts"]
    assert restart["resumed_step"] >= 10 and restart["resumed_step"] % 10 == 0
    assert seen["nodes_after"] == [n for n in seen["nodes_before"] if n != seen["worker_node"]]


def test_the_controller_survives_a_ray_restart_without_losing_or_duplicating_jobs(tmp_path):
    seen = scenario("ray_restart", tmp_path)
    running, waiting = seen["running_id"], seen["waiting_id"]
    before, after = seen["before"], seen["after_restart"]
    assert set(before) == set(after) == {running, waiting}
    for job_id in before:  # every record intact
        for key in ("seq", "name", "team", "priority", "submitted_at", "run_dir", "cpus"):
            assert after[job_id][key] == before[job_id][key], key
    assert before[running]["state"] == "RUNNING" and before[waiting]["state"] == "QUEUED"
    final = seen["finals"][running]
    assert final["state"] == "SUCCEEDED" and final["steps"] == 150 and final["attempts"] == 2
    assert final["events"] == ["QUEUED", "STARTING", "RUNNING", "RETRYING", "QUEUED", "STARTING", "RUNNING",
                               "SUCCEEDED"]
    assert seen["attempts"][-1]["resumed_step"] >= 10  # resumed from its latest good checkpoint
    # The first runner died with its cluster: it may have had time to record its exit, but only as
    # a failure, and before the second runner started (one runner at a time).
    exits = seen["exit_files"]
    assert set(exits) <= {"exit-1.json", "exit-2.json"} and exits["exit-2.json"]["code"] == 0
    if "exit-1.json" in exits:
        assert exits["exit-1.json"]["code"] != 0
        assert exits["exit-1.json"]["at"] <= seen["runner_gone_at"]  # before the new cluster existed
    assert seen["finals"][waiting]["state"] == "SUCCEEDED" and seen["finals"][waiting]["attempts"] == 1
    # The planted HF token reached the job from the node's environment, and was written nowhere.
    assert seen["credentials_line"] and seen["leaks"] == []
