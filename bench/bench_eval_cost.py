"""What measuring forgetting costs at the default cadence: native tasks vs lm-eval tasks.

Runs `ftctl run configs/quickstart.yaml` (its default cadence: forgetting.every_steps 100 over
300 steps, so the base model, steps 100 and 200, and the end) three ways, one after the other:

  none     forgetting.tasks=[]                                   (the baseline: training alone)
  native   the quickstart's own four exact-match source tasks (100 rows each)
  lm_eval  instead, only the lm-eval task configs/quickstart-lm-eval.yaml adds
           (tiny_reversal_mc, 100 documents, 4 choices each)

and prints, from each run's summary.json, the seconds spent evaluating forgetting, their share
of the training time proper (summary `forgetting_eval_share`), and the wall time against the
baseline run's. The built-in model trains a step in tens of milliseconds, so on it any
evaluation is large next to training; the share is the number to read on a real model.

Run: python bench/bench_eval_cost.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def run(name: str, steps: int, overrides: list[str], work: Path) -> dict:
    run_dir = work / name
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--run-dir", str(run_dir), str(QUICKSTART),
           f"training.max_steps={steps}", "checkpoint.every_steps=null", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_eval_cost: the {name} run failed (exit {done.returncode}):\n{done.stdout[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    lm_task = "forgetting.tasks=[{name: reversal_mc, lm_eval: {task: tiny_reversal_mc, " \
              "include_path: 'builtin:demo/lm_eval', limit: 100}}]"
    with tempfile.TemporaryDirectory(prefix="ftctl-bench-eval-") as tmp:
        work = Path(tmp)
        base = run("none", args.steps, ["forgetting.tasks=[]", "forgetting.every_steps=null"], work)
        native = run("native", args.steps, [], work)
        lm = run("lm_eval", args.steps, [lm_task], work)
    print(f"bench_eval_cost: quickstart, {args.steps} steps, forgetting every 100 steps, 2 CPU workers")
    print(f"{'tasks':10} {'train s':>8} {'eval s':>8} {'eval share':>11} {'wall s':>8} {'wall ratio':>11}")
    for name, s in (("none", base), ("native", native), ("lm_eval", lm)):
        print(f"{name:10} {s['train_seconds']:8.1f} {s.get('forgetting_eval_seconds') or 0:8.1f} "
              f"{s.get('forgetting_eval_share') or 0:10.2f}x {s['wall_seconds']:8.1f} "
              f"{s['wall_seconds'] / base['wall_seconds']:10.2f}x")
    print(json.dumps({"native_share": native.get("forgetting_eval_share"), "lm_eval_share": lm.get("forgetting_eval_share"),
                      "native_eval_s": native.get("forgetting_eval_seconds"),
                      "lm_eval_eval_s": lm.get("forgetting_eval_seconds")}))


if __name__ == "__main__":
    main()
