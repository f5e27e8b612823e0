"""Refresh benchmark: what scheduled, gated refreshes cost, and what the warm start buys.

One run measures:
  1. Scheduler overhead inside the controller (no Ray, fake launcher, file-backed store):
       (a) a `Controller.tick()` with --schedules (default 1,000) schedules, none due, vs the
           same tick with no schedule (baseline): what every 0.25 s loop pays;
       (b) --due (default 100) schedules firing at once (`fire_schedules`, the firing part
           of a tick; each builds its refresh job: resolve the job, snapshot the data glob,
           queue it in the firing's transaction): time per firing.
  2. One refresh night on the built-in tiny base model (configs/refresh-nightly.yaml, local
     Ray, 1 worker), in order:
       - night 1: v1 from fresh weights on file 1;
       - night 2: v2 warm-started from v1, on files 1+2 (--steps each);
       - baseline, same run: a cold job, the same job as night 2 from fresh weights.
     Reported:
       - the gate measurement (base + previous + new version on data.eval and every
         forgetting task, one process) as a share of the refresh's wall time;
       - target eval loss of the warm-started v2 vs the cold retrain, both after --steps steps.

Run: python bench/bench_refresh.py [--schedules 1000] [--due 100] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from orchestrator.controller.core import Controller  # noqa: E402
from orchestrator.spec.paths import absolute_paths  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.store.jobs import SQLiteJobStore  # noqa: E402
from orchestrator.store.resources import Resources  # noqa: E402

JOB = Path(__file__).parents[1] / "configs" / "refresh-nightly.yaml"


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class NoLaunch:
    """No job is started here: the bench times the scheduler, not the jobs."""

    def launch(self, record):
        raise RuntimeError("not in this benchmark")

    def adopt(self, record):
        return None


def tick_ms(ctl: Controller, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        ctl.tick()
        out.append((time.perf_counter() - started) * 1000)
    return out


def scheduler_overhead(n_schedules: int, n_due: int, work: Path) -> dict:
    rows = work / "data"
    rows.mkdir()
    (rows / "a.jsonl").write_text('{"prompt": "shift ab=", "response": "bc"}\n')
    spec = absolute_paths(load_spec(JOB, check_files=False).model_dump(mode="json"), work)
    spec["data"]["train"]["path"] = str(rows / "*.jsonl")
    start = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc).timestamp()
    capacity = lambda: Resources(1, 0)  # noqa: E731

    def controller(name: str) -> tuple[Controller, Clock]:
        clock = Clock(start)
        return Controller(SQLiteJobStore(work / f"{name}.db"), NoLaunch(), capacity, work / "runs", clock=clock), clock

    bare, _ = controller("bare")
    busy, clock = controller("busy")
    for i in range(n_schedules):
        # Minute m of hour 03..22: none due at 02:00.
        busy.schedules.add(f"s{i:05d}", f"{i % 60} {3 + i % 20} * * *", spec, now=clock())
    base_ms = tick_ms(bare, 50)
    with_ms = tick_ms(busy, 50)
    firing, fclock = controller("firing")
    for i in range(n_due):
        firing.schedules.add(f"d{i:05d}", "0 3 * * *", spec, now=fclock())
    fclock.t = datetime(2026, 11, 1, 3, 0, 10, tzinfo=timezone.utc).timestamp()
    started = time.perf_counter()
    fired = firing.fire_schedules()  # the firing part of a tick (the rest would start the jobs)
    fire_s = time.perf_counter() - started
    assert len(fired) == n_due, len(fired)
    return {"schedules": n_schedules, "tick_ms_no_schedules": statistics.median(base_ms),
            "tick_ms_with_schedules": statistics.median(with_ms),
            "tick_ms_with_schedules_p99": sorted(with_ms)[int(0.99 * (len(with_ms) - 1))],
            "due": n_due, "fire_ms_per_schedule": fire_s * 1000 / n_due}


def refresh_night(steps: int, work: Path) -> dict:
    from rich.console import Console

    from orchestrator.data.demo import ensure_demo_file
    from orchestrator.refresh.jobs import refresh_spec
    from orchestrator.refresh.promote import open_registry
    from orchestrator.spec import resolve_spec
    from orchestrator.spec.paths import demo_data_dir
    from orchestrator.pipeline import run_job

    rows = ensure_demo_file(demo_data_dir() / "target_train.jsonl").read_text().splitlines(keepends=True)
    nightly = work / "data" / "nightly"
    nightly.mkdir(parents=True)
    (nightly / "1.jsonl").write_text("".join(rows[:400]))
    spec = absolute_paths(load_spec(JOB, [f"training.max_steps={steps}"], check_files=False).model_dump(mode="json"),
                          work)
    store = str(work / "home" / "controller" / "jobs.db")
    registry = open_registry(store)
    console = Console(file=open(work / "log.txt", "w"), width=160)
    results = {}
    for night in (1, 2):
        if night == 2:
            (nightly / "2.jsonl").write_text("".join(rows[400:800]))
        job = refresh_spec(spec, "bench", registry.head("bench"))
        run_dir = work / f"night{night}"
        started = time.perf_counter()
        assert run_job(job, run_dir=run_dir, console=console, store=store) == 0
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
        results[night] = {"wall_s": wall, "train_s": summary["train_seconds"],
                          "measure_s": summary["promotion"]["measure_seconds"],
                          "verdict": summary["promotion"]["verdict"],
                          "eval_loss": summary["promotion"]["measured"]["candidate"]["target"]}
    # Baseline: the same job as night 2 (same files, same steps), from fresh weights, not gated.
    cold = json.loads(json.dumps(spec))
    cold["data"]["train"]["files"] = sorted(str(p) for p in nightly.glob("*.jsonl"))
    cold["promotion"] = {"adapter": "bench-cold"}
    cold_dir = work / "cold"
    assert run_job(resolve_spec(cold), run_dir=cold_dir, console=console, store=store) == 0
    cold_eval = json.loads((cold_dir / "summary.json").read_text())["final_eval"]["eval_loss"]
    promotion = json.loads((work / "night1" / "promotion.json").read_text())
    return {"nights": results, "cold_eval_loss": cold_eval, "base_eval_loss": promotion["measured"]["base"]["target"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sched").mkdir()
        s = scheduler_overhead(args.schedules, args.due, work / "sched")
        print(f"tick, no schedules (baseline):   {s['tick_ms_no_schedules']:.2f} ms median")
        print(f"tick, {s['schedules']} schedules, none due: {s['tick_ms_with_schedules']:.2f} ms median, "
              f"{s['tick_ms_with_schedules_p99']:.2f} ms p99 "
              f"({s['tick_ms_with_schedules'] / s['tick_ms_no_schedules']:.1f}x baseline)")
        print(f"firing {s['due']} due schedules in one tick: {s['fire_ms_per_schedule']:.2f} ms per firing")
        r = refresh_night(args.steps, work / "night")
        for night, n in r["nights"].items():
            print(f"night {night}: {n['verdict']}, wall {n['wall_s']:.1f} s, training {n['train_s']:.1f} s, "
                  f"gate measurement {n['measure_s']:.1f} s ({n['measure_s'] / n['wall_s']:.0%} of wall)")
        warm = r["nights"][2]["eval_loss"]
        base = r["base_eval_loss"]
        print(f"eval loss after {args.steps} steps on files 1+2: warm start from v1 {warm:.4f} vs cold retrain "
              f"{r['cold_eval_loss']:.4f} (base model {base:.4f}); loss reduction from base: warm "
              f"{base - warm:.3f} vs cold {base - r['cold_eval_loss']:.3f} "
              f"({(base - warm) / (base - r['cold_eval_loss']):.2f}x)")


if __name__ == "__main__":
    main()
