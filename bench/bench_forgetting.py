"""Forgetting experiment: what each method and mitigation costs the source tasks.

On the built-in tiny base model and the demo target task (the quickstart job: 300 steps,
2 CPU workers, source tasks evaluated every 100 steps on 200 held-out rows each), one
command trains:
  lora          the quickstart as it is (the baseline the ratios are taken against)
  lora+replay   the same, with 20% of the training rows replayed from the base model's own
                training data (data.replay, all four source tasks)
  full          full fine-tuning (lr 1e-3)
  full+l2sp=X   the same with L2-SP toward the base weights (training.l2sp, each --l2sp value)
and prints per run: target-task exact match gain, each source task's drop (base - final
exact match), the mean drop and its ratio to lora's, training seconds and their ratio,
and the share of time spent evaluating forgetting.

Run: python bench/bench_forgetting.py [--steps 300] [--l2sp 1 10] [--replay 0.2]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from rich.console import Console  # noqa: E402

from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.pipeline import run_job  # noqa: E402

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
TASKS = ["arithmetic", "reversal", "sorting", "kv_recall"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--l2sp", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--replay", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("bench-runs/forgetting"))
    args = parser.parse_args()

    replay = ("data.replay={ratio: %g, sources: [%s]}"
              % (args.replay, ", ".join(f"{{path: 'builtin:demo/replay_{t}.jsonl'}}" for t in TASKS)))
    full = ["method.kind=full", "method.lora=null", "training.lr=1e-3"]
    runs = {"lora": [], "lora+replay": [replay], "full": full,
            **{f"full+l2sp={x:g}": [*full, f"training.l2sp={x}"] for x in args.l2sp}}
    results = {}
    for name, overrides in runs.items():
        spec = load_spec(QUICKSTART, [f"training.max_steps={args.steps}", *overrides])
        run_dir = args.out / name.replace("+", "-").replace("=", "")
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of an earlier one
        print(f"running {name} ...", flush=True)
        code = run_job(spec, run_dir=run_dir, console=Console(file=io.StringIO(), width=200))
        if code != 0:
            print(f"{name} failed with exit {code}; see {run_dir}")
            return 1
        summary = json.loads((run_dir / "summary.json").read_text())
        report = json.loads((run_dir / "forgetting.json").read_text())
        results[name] = {
            "target_gain": report["target"]["final"] - report["target"]["base"],
            "drops": {t: report["tasks"][t]["drop"] for t in TASKS},
            "train_s": summary["train_seconds"],
            "eval_share": summary["forgetting_eval_share"],
        }
    base = results["lora"]
    base_drop = sum(base["drops"].values()) / len(TASKS)
    header = f"{'run':<14} {'target gain':>11} " + " ".join(f"{t[:10]:>10}" for t in TASKS) + \
        f" {'mean drop':>9} {'x lora':>7} {'train s':>8} {'x lora':>7} {'eval share':>10}"
    print(header)
    for name, r in results.items():
        mean = sum(r["drops"].values()) / len(TASKS)
        print(f"{name:<14} {r['target_gain']:>+11.3f} " + " ".join(f"{r['drops'][t]:>10.3f}" for t in TASKS)
              + f" {mean:>9.3f} {mean / max(base_drop, 1e-9):>7.2f} {r['train_s']:>8.1f}"
              + f" {r['train_s'] / base['train_s']:>7.2f} {r['eval_share']:>10.1%}")
    print("drop = base exact match - final exact match on 200 held-out rows per source task (higher is worse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
