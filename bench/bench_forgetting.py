"""Forgetting experiment: what each method and mitigation costs the source tasks.

On the built-in tiny base model and the demo target task (the quickstart job: 300 steps,
2 CPU workers, source tasks evaluated every 50 steps on 100 held-out rows each, the live KL
meter every 25 steps on 16 training rows), one command trains:
  lora              the quickstart as it is (the baseline the ratios are taken against)
  lora+replay       20% of the training rows replayed from the base model's own training
                    data (data.replay, all four source tasks): needs source data
  lora+repair       then repair by interpolation to --max-drop on every source task
  lora+kl=B         KL to the base during training (training.kl_to_base, each --kl value)
  lora+kl=B+repair  both
  full              full fine-tuning (lr 1e-3)
  full+l2sp=X       the same with L2-SP toward the base weights (training.l2sp, each --l2sp value)
  full+repair       full fine-tuning, then repair by interpolation
and prints per run: target-task exact match gain and its share of lora's, each source
task's drop (base - final exact match; after a repair, of the repaired artifact), the worst
drop, whether the goal holds (no source data, every drop <= --max-drop, >= 95% of lora's
gain), the repair's alpha, training seconds (repair seconds apart) and their ratio to lora's;
then how well the live KL meter tracks the measured drops (Pearson and Spearman correlation
of KL with the mean source-task drop at every step where both were measured, over all runs).

Run: python bench/bench_forgetting.py [--steps 300] [--kl 0.5 2] [--l2sp 1 10] [--max-drop 0.02]
     [--only lora lora+repair ...]
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
SOURCE_DATA = {"lora+replay"}  # rows that use the base model's own training data


def runs(args) -> dict[str, list[str]]:
    replay = ("data.replay={ratio: %g, sources: [%s]}"
              % (args.replay, ", ".join(f"{{path: 'builtin:demo/replay_{t}.jsonl'}}" for t in TASKS)))
    repair = f"forgetting.repair={{max_drop: {args.max_drop}}}"
    full = ["method.kind=full", "method.lora=null", "training.lr=1e-3"]
    out = {"lora": [], "lora+replay": [replay], "lora+repair": [repair]}
    for beta in args.kl:
        out[f"lora+kl={beta:g}"] = [f"training.kl_to_base={beta}"]
        out[f"lora+kl={beta:g}+repair"] = [f"training.kl_to_base={beta}", repair]
    out["full"] = full
    out.update({f"full+l2sp={x:g}": [*full, f"training.l2sp={x}"] for x in args.l2sp})
    out["full+repair"] = [*full, repair]
    return {k: v for k, v in out.items() if not args.only or k in args.only}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kl", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--l2sp", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--replay", type=float, default=0.2)
    parser.add_argument("--max-drop", type=float, default=0.02)
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (by name)")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/forgetting"))
    args = parser.parse_args()

    common = [f"training.max_steps={args.steps}", "forgetting.every_steps=50", "forgetting.kl_every_steps=25"]
    results = {}
    for name, overrides in runs(args).items():
        spec = load_spec(QUICKSTART, [*common, *overrides])
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
            "repair_s": (summary.get("repair") or {}).get("seconds"),
            "alpha": (summary.get("repair") or {}).get("alpha"),
            "meter": meter_pairs(report),
        }
    base = results.get("lora")
    print(f"\n{'run':<18} {'target gain':>11} {'x lora':>6} " + " ".join(f"{t[:10]:>10}" for t in TASKS)
          + f" {'worst':>6} {'goal':>5} {'alpha':>6} {'train s':>8} {'x lora':>7} {'repair s':>8}")
    for name, r in results.items():
        worst = max(r["drops"].values())
        share = r["target_gain"] / base["target_gain"] if base and base["target_gain"] else float("nan")
        goal = name not in SOURCE_DATA and worst <= args.max_drop + 1e-9 and share >= 0.95
        print(f"{name:<18} {r['target_gain']:>+11.3f} {share:>6.2f} "
              + " ".join(f"{r['drops'][t]:>10.3f}" for t in TASKS)
              + f" {worst:>6.3f} {'yes' if goal else 'no':>5} {'' if r['alpha'] is None else format(r['alpha'], 'g'):>6}"
              + f" {r['train_s']:>8.1f} {r['train_s'] / base['train_s'] if base else float('nan'):>7.2f}"
              + f" {'' if r['repair_s'] is None else format(r['repair_s'], '.1f'):>8}")
    print(f"drop = base exact match - final exact match of the job's artifact on 100 held-out rows per source task "
          f"(higher is worse); goal: no source data, every drop <= {args.max_drop:g}, >= 95% of lora's target gain")
    pairs = [p for r in results.values() for p in r["meter"]]
    if len(pairs) >= 3:
        kl, drop = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"live KL meter vs mean source-task drop at the same steps ({len(pairs)} points over {len(results)} "
              f"runs, before any repair): Pearson {pearson(kl, drop):.2f}, Spearman {pearson(ranks(kl), ranks(drop)):.2f}")
    return 0


def meter_pairs(report) -> list[tuple[float, float]]:
    """(KL, mean source-task drop) at each step where both were measured during training."""
    kl = {e["step"]: e["value"] for e in (report.get("kl") or {}).get("evals", [])}
    by_step: dict[int, list[float]] = {}
    for task in TASKS:
        entry = report["tasks"][task]
        for e in entry["evals"][1:]:
            by_step.setdefault(e["step"], []).append(entry["base"] - e["value"])
    return [(kl[s], sum(d) / len(d)) for s, d in sorted(by_step.items()) if s in kl and len(d) == len(TASKS)]


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


if __name__ == "__main__":
    sys.exit(main())
