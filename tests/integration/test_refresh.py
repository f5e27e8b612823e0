"""Three nightly refreshes of an adapter on the tiny base model, fired by the controller's
scheduler under a clock the test moves (configs/refresh-nightly.yaml):

- night 1: new target rows; the first version, from fresh weights, beats the base model on
  the target and keeps every source task: promoted;
- night 2: more rows; warm-started from v1, beats v1: promoted;
- the controller is down for two nights (a new controller on the same store comes back;
  the missed slots are caught up once, never twice);
- night 3: rows that answer `rev` prompts with the input unchanged arrive; the refresh
  breaks the reversal source task beyond its gate and is not promoted: v2 stays.
The runners are real processes running the real job; history and lineage are checked exactly.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "configs" / "refresh-nightly.yaml"
DAY = 86400.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def slot(day: int) -> float:
    return datetime(2026, 11, day, 3, 0, tzinfo=timezone.utc).timestamp()


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def demo_rows(name: str) -> list[dict]:
    from orchestrator.data.demo import ensure_demo_file
    from orchestrator.spec.paths import demo_data_dir

    return [json.loads(line) for line in ensure_demo_file(demo_data_dir() / name).read_text().splitlines()]


def run_until_idle(ctl, timeout: float = 420.0) -> None:
    """Tick the controller (the clock stands still) until no job is queued or running."""
    import time

    from orchestrator.store.states import JobState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ctl.tick()
        if not ctl.store.list([JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.RETRYING]):
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs still active after {timeout}s: {[r.as_dict() for r in ctl.store.list()]}")


@pytest.fixture
def make_controller(local_ray, tmp_path):
    import ray

    from orchestrator.controller.core import Controller, SubprocessLauncher
    from orchestrator.store.jobs import SQLiteJobStore
    from orchestrator.store.resources import Resources

    db = tmp_path / "home" / "controller" / "jobs.db"
    address = ray.get_runtime_context().gcs_address

    def make(clock: Clock) -> Controller:
        return Controller(SQLiteJobStore(db), SubprocessLauncher(str(db), address), lambda: Resources(3, 0),
                          tmp_path / "runs", clock=clock)

    return make


def test_three_refreshes_promote_twice_then_refuse_the_one_that_breaks_a_source_task(tmp_path, make_controller):
    from orchestrator.spec.paths import absolute_paths
    from orchestrator.spec import load_spec

    nightly = tmp_path / "data" / "nightly"
    nightly.mkdir(parents=True)
    target = demo_rows("target_train.jsonl")
    write_rows(nightly / "2026-11-01.jsonl", target[:400])
    spec = absolute_paths(load_spec(JOB).model_dump(mode="json"), tmp_path)  # data/nightly/*.jsonl under tmp_path
    clock = Clock(slot(1) - 3600)
    ctl = make_controller(clock)
    ctl.schedules.add("nightly", "0 3 * * *", spec, missed="catch-up", now=clock())

    assert ctl.tick()["fired"] == []  # 02:00: nothing is due yet
    clock.t = slot(1) + 20
    (first,) = ctl.tick()["fired"]
    write_rows(nightly / "2026-11-02.jsonl", target[400:800])  # lands after night 1 fired: night 2's data
    run_until_idle(ctl)

    clock.t = slot(2) + 20
    (second,) = ctl.tick()["fired"]
    run_until_idle(ctl)

    # The controller goes away for two nights; bad rows arrive meanwhile.
    reversal = demo_rows("replay_reversal.jsonl")
    write_rows(nightly / "2026-11-03.jsonl", [{"prompt": r["prompt"], "response": r["prompt"][4:-1]} for r in reversal])
    clock.t = slot(4) + 5 * 3600
    restarted = make_controller(clock)
    (third,) = restarted.tick()["fired"]
    assert restarted.tick()["fired"] == [] and make_controller(clock).tick()["fired"] == []  # no slot fires twice
    run_until_idle(restarted)

    # ---- jobs and firings
    jobs = {r.id: r for r in restarted.store.list()}
    assert set(jobs) == {first, second, third} and all(r.state.value == "SUCCEEDED" for r in jobs.values())
    firings = restarted.schedules.firings("nightly")
    assert [(f["slot"], f["kind"], f["job_id"], f["missed"]) for f in firings] == [
        (slot(1), "scheduled", first, 0), (slot(2), "scheduled", second, 0), (slot(4), "catch-up", third, 2)]

    # ---- registry: versions, lineage, verdicts, what each was made from
    registry = restarted.registry
    v1, v2, v3 = registry.versions("nightly")
    assert [(v.version, v.parent, v.job_id, v.verdict) for v in (v1, v2, v3)] == [
        (1, None, first, "promoted"), (2, 1, second, "promoted"), (3, 2, third, "rejected")]
    assert registry.head("nightly").version == 2 and registry.lineage("nightly", 3) == [3, 2, 1]
    assert v1.record["init_adapter"] is None
    assert v2.record["init_adapter"] == v1.adapter and v3.record["init_adapter"] == v2.adapter
    files = [str(nightly / f"2026-11-0{d}.jsonl") for d in (1, 2, 3)]
    assert [v.record["data"]["files"] for v in (v1, v2, v3)] == [files[:1], files[:2], files]
    assert len({v.record["data"]["content"] for v in (v1, v2, v3)}) == 3
    assert len({v.record["base"]["digest"] for v in (v1, v2, v3)}) == 1
    assert len({v.record["spec_hash"] for v in (v1, v2, v3)}) == 3

    # ---- the gates: measured values, each version against the one it had to beat
    m1, m2, m3 = (v.record["measured"] for v in (v1, v2, v3))
    assert "previous" not in m1 and m1["candidate"]["target"] < m1["base"]["target"]
    for m in (m2, m3):  # the base model, measured the same way every night
        assert m["base"]["tasks"] == m1["base"]["tasks"]
        assert m["base"]["target"] == pytest.approx(m1["base"]["target"], abs=1e-9)
    # A version's values, measured again the next night as "previous", are the same numbers.
    assert m2["previous"]["tasks"] == m1["candidate"]["tasks"]
    assert m2["previous"]["target"] == pytest.approx(m1["candidate"]["target"], abs=1e-9)
    assert m3["previous"]["target"] == pytest.approx(m2["candidate"]["target"], abs=1e-9)
    assert m2["candidate"]["target"] < m1["candidate"]["target"]
    assert all(g["passed"] for g in v1.record["gates"] + v2.record["gates"])
    failed = {g["gate"]: g for g in v3.record["gates"] if not g["passed"]}
    assert set(failed) == {"reversal vs base", "reversal vs previous"}
    drop = m1["base"]["tasks"]["reversal"] - m3["candidate"]["tasks"]["reversal"]
    assert failed["reversal vs base"]["value"] == pytest.approx(drop) and drop > 0.15
    assert "reversal vs base" in v3.reason and "drop" in v3.reason
    events = registry.events("nightly")
    assert [(e["action"], e["from_version"], e["to_version"]) for e in events] == [
        ("register", None, 1), ("promote", None, 1), ("register", None, 2), ("promote", 1, 2),
        ("register", None, 3), ("reject", 2, 3)]
    summary = json.loads((Path(v3.run_dir) / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["promotion"]["verdict"] == "rejected"

    # ---- the history as users see it, and what they can do with it
    home = tmp_path / "home"
    out = tmp_path / "show.json"
    plot = tmp_path / "drift.png"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["adapters", "show", "nightly", "--home", str(home), "--json", "--plot", str(plot)]) == 0
    shown = json.loads(buffer.getvalue())
    out.write_text(buffer.getvalue())
    assert [(r["version"], r["parent"], r["verdict"], r["current"]) for r in shown["versions"]] == [
        (1, None, "promoted", False), (2, 1, "promoted", True), (3, 2, "rejected", False)]
    assert shown["versions"][2]["drift"]["reversal"] == pytest.approx(-drop)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["adapters", "rollback", "nightly", "--home", str(home), "--reason", "test"]) == 0
    assert registry.head("nightly").version == 1
    assert main(["adapters", "promote", "nightly", "3", "--home", str(home)]) == 2  # rejected: needs --force
    assert main(["adapters", "promote", "nightly", "2", "--home", str(home)]) == 0
    assert registry.head("nightly").version == 2
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["adapters", "diff", "nightly", "2", "3", "--home", str(home), "--json"]) == 0
    diff = json.loads(buffer.getvalue())
    assert diff["data_files"] == {"only_a": [], "only_b": [files[2]]} and diff["base_same"]
    assert diff["spec"]["method.lora.init_adapter"] == [v1.adapter, v2.adapter]
    assert diff["weights"]["relative_change"] > 0


def test_schedules_through_the_controller_actor(local_ray, tmp_path, monkeypatch):
    """The SDK / CLI path: add, list, show, pause, resume, run-now, remove, over Ray. The
    runner's no-op seam stands in for training (the three cycles above train for real)."""
    from orchestrator.api import Client, stop_controller

    (tmp_path / "data" / "nightly").mkdir(parents=True)
    write_rows(tmp_path / "data" / "nightly" / "a.jsonl", [{"prompt": "shift ab=", "response": "bc"}])
    monkeypatch.chdir(tmp_path)  # the job's relative glob is taken from here, when the schedule is added
    stop_controller()
    try:
        client = Client(home=tmp_path / "home", noop_seconds=0.2)
        added = client.schedule_add("nightly", "0 3 1 1 *", JOB, ["training.max_steps=5"], missed="skip")
        assert added["next_slot"] > added["created_at"] and added["missed"] == "skip"
        with pytest.raises(Exception, match="exists"):
            client.schedule_add("nightly", "0 3 * * *", JOB)
        with pytest.raises(ValueError, match="no forgetting gate"):
            client.schedule_add("other", "0 3 * * *", REPO / "configs" / "quickstart.yaml")
        assert [s["name"] for s in client.schedules()] == ["nightly"]
        assert client.schedule_pause("nightly")["paused"] and client.schedule("nightly")["next_slot"] is None
        assert not client.schedule_pause("nightly", False)["paused"]
        job_id = client.schedule_run_now("nightly")
        final = client.wait(job_id, timeout=60)
        assert final["state"] == "SUCCEEDED" and final["name"] == "nightly"
        spec = client.status(job_id)
        (firing,) = client.schedule("nightly")["firings"]
        assert firing["kind"] == "manual" and firing["job_id"] == job_id and "first version" in firing["note"]
        assert main(["schedule", "show", "nightly"]) == 0 and main(["schedule", "list"]) == 0
        # A firing that finds no data queues nothing, and run-now says so with exit 1.
        (tmp_path / "data" / "nightly" / "a.jsonl").unlink()
        assert main(["schedule", "run-now", "nightly"]) == 1
        assert client.schedule("nightly")["firings"][-1]["job_id"] is None
        assert main(["schedule", "remove", "nightly"]) == 0
        assert client.schedules() == [] and main(["schedule", "remove", "nightly"]) == 2
        assert spec["id"] == job_id
    finally:
        stop_controller()


def test_a_warm_start_loads_every_adapter_weight_and_refuses_one_that_does_not_fit(tmp_path):
    import torch

    from orchestrator.models.build import ModelError, build_model, resolve_model_dir
    from orchestrator.spec import resolve_spec

    def spec(**lora):
        return resolve_spec({"name": "w", "data": {"train": {"path": "builtin:demo/target_train.jsonl"}},
                             "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8, **lora}}})

    model_dir = resolve_model_dir(spec().model)
    trained, _ = build_model(spec(), model_dir, on_gpu=False)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_" in name:
                p.normal_()  # lora_B starts at zero: make every factor non-trivial
    trained.save_pretrained(str(tmp_path / "v1"))
    warm, _ = build_model(spec(init_adapter=str(tmp_path / "v1")), model_dir, on_gpu=False)
    saved = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in warm.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and len(saved) > 0
    assert all(torch.equal(saved[n], loaded[n]) and loaded[n].requires_grad for n in saved)
    with pytest.raises(ModelError, match="r=4 but this job sets 8"):
        build_model(spec(r=8, init_adapter=str(tmp_path / "v1")), model_dir, on_gpu=False)
    with pytest.raises(ModelError, match="adapts other modules"):
        build_model(spec(target_modules=["q_proj"], init_adapter=str(tmp_path / "v1")), model_dir, on_gpu=False)


def test_ftctl_refresh_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # data/nightly/ does not exist here
    assert main(["refresh", "nightly", "--job", str(JOB), "--home", str(tmp_path / "home")]) == 1
    assert "no data file matches" in capsys.readouterr().err
    assert main(["refresh", "q", "--job", str(REPO / "configs" / "quickstart.yaml")]) == 2
    assert "no forgetting gate" in capsys.readouterr().err
