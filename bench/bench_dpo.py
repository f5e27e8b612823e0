"""DPO benchmark: ftctl's DPO step against TRL's DPOTrainer, and what DPO costs the source tasks.

(a) Throughput. The same model (the built-in tiny base with LoRA r=16, alpha 32, all linear
    layers), the same pairs (builtin:demo/preference_train.jsonl), the same batch (16 pairs),
    lr, beta and steps, one process each with the same torch threads, CPU:
      ftctl   `ftctl run configs/quickstart-dpo.yaml` on 1 worker, evaluations off; its
              tokens/s from metrics.jsonl (the step loop only: Ray's start-up is not in it)
      TRL     trl.DPOTrainer.train() on the same rows; its tokens counted from the batches
              its collator makes, its time from its step callbacks
    Both skip the first --warmup steps and count tokens/s over the rest (chosen and rejected
    tokens, padding left out). Prints the ratio ftctl / TRL (goal >= 1.0).
(b) Forgetting. The quickstart (SFT, 300 steps) and the DPO quickstart, each as it is:
    every source task's drop, the target's result (SFT: exact match on data.eval; DPO: reward
    accuracy on the held-out pairs), training seconds.

Run: python bench/bench_dpo.py [--steps 40] [--warmup 5] [--threads 2] [--skip-forgetting]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from rich.console import Console  # noqa: E402

from orchestrator.pipeline import run_job  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402

ROOT = Path(__file__).parents[1]
DPO = ROOT / "configs" / "quickstart-dpo.yaml"
SFT = ROOT / "configs" / "quickstart.yaml"
TASKS = ["arithmetic", "reversal", "sorting", "kv_recall"]


def ftctl_throughput(args, out: Path) -> dict:
    spec = load_spec(DPO, [f"training.max_steps={args.steps}", "resources.workers=1",
                           f"resources.cpus_per_worker={args.threads}", "training.log_every_steps=1",
                           "training.eval_every_steps=null", "data.eval=null", "forgetting.tasks=[]",
                           "forgetting.every_steps=null", "checkpoint.every_steps=null", "training.warmup_steps=0",
                           "training.lr_schedule=constant"])
    shutil.rmtree(out, ignore_errors=True)
    code = run_job(spec, run_dir=out, console=Console(file=io.StringIO(), width=200))
    if code != 0:
        raise SystemExit(f"ftctl failed with exit {code}; see {out}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = records[args.warmup - 1], records[-1]
    return {"tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "loss": last["loss"], "spec": spec}


def trl_throughput(args, spec, out: Path) -> dict:
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback

    from orchestrator.models.build import load_tokenizer, resolve_model_dir
    from orchestrator.data.sources import open_source

    torch.set_num_threads(args.threads)
    model_dir = str(resolve_model_dir(spec.model))
    tokenizer = load_tokenizer(model_dir, spec.model)
    rows = [row.values for row in open_source(spec.data.train).read_rows() if row.values is not None]
    lora = spec.method.lora
    t = spec.training
    config = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=t.per_device_batch_size,
                           max_steps=args.steps, learning_rate=t.lr, beta=t.dpo.beta, lr_scheduler_type="constant",
                           warmup_steps=0, max_length=spec.data.max_seq_len, logging_steps=1, save_strategy="no",
                           report_to=[], use_cpu=True, seed=t.seed, max_grad_norm=t.max_grad_norm or 0.0,
                           dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules="all-linear"))
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)  # its per-step lines would drown the bench's own
    trainer.train()
    # Batches are collated ahead of use; step i trained on batch i.
    timed = sum(tokens[args.warmup:args.steps])
    return {"tokens_per_s": timed / (ends[args.steps - 1] - ends[args.warmup - 1]),
            "loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None}


def forgetting(out: Path) -> dict:
    rows = {}
    for name, path in (("sft (quickstart)", SFT), ("dpo (quickstart-dpo)", DPO)):
        run_dir = out / name.split()[0]
        shutil.rmtree(run_dir, ignore_errors=True)
        code = run_job(load_spec(path, []), run_dir=run_dir, console=Console(file=io.StringIO(), width=200))
        if code != 0:
            raise SystemExit(f"{name} failed with exit {code}; see {run_dir}")
        summary = json.loads((run_dir / "summary.json").read_text())
        report = json.loads((run_dir / "forgetting.json").read_text())
        final = summary.get("final_eval") or {}
        target = report.get("target") or {}
        rows[name] = {"drops": {t: report["tasks"][t]["drop"] for t in TASKS}, "steps": summary["steps"],
                      "train_s": summary["train_seconds"],
                      "target": (f"exact match {target['base']:.2f} -> {target['final']:.2f}"
                                 if target.get("metric") == "exact_match"
                                 else f"reward accuracy {final.get('eval_reward_accuracy', float('nan')):.2f}, "
                                      f"eval DPO loss {target.get('base', float('nan')):.3f} -> "
                                      f"{target.get('final', float('nan')):.3f}")}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-forgetting", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/dpo"))
    args = parser.parse_args()

    ours, theirs = [], []
    for i in range(args.rounds):  # alternate, so background load hits both alike
        order = ("ftctl", "trl") if i % 2 == 0 else ("trl", "ftctl")
        for who in order:
            if who == "ftctl":
                result = ftctl_throughput(args, args.out / f"ftctl-{i}")
                spec = result.pop("spec")
                ours.append(result)
            else:
                theirs.append(trl_throughput(args, spec if ours else load_spec(DPO, []), args.out / f"trl-{i}"))
            print(f"  round {i + 1} {who}: {(ours if who == 'ftctl' else theirs)[-1]['tokens_per_s']:8.0f} tok/s",
                  flush=True)
    mine = statistics.median(r["tokens_per_s"] for r in ours)
    trl_rate = statistics.median(r["tokens_per_s"] for r in theirs)
    print(f"\nDPO throughput, tiny base + LoRA r16 all-linear, batch 16 pairs, {args.steps} steps "
          f"({args.warmup} untimed), {args.threads} threads, median of {args.rounds}:")
    print(f"  ftctl {mine:8.0f} tok/s   TRL DPOTrainer {trl_rate:8.0f} tok/s   ratio {mine / trl_rate:.2f} (goal >= 1.0)")
    if not args.skip_forgetting:
        rows = forgetting(args.out / "forgetting")
        print(f"\n{'run':<22} {'steps':>5} " + " ".join(f"{t[:10]:>10}" for t in TASKS) + f" {'train s':>8}  target")
        for name, r in rows.items():
            print(f"{name:<22} {r['steps']:>5} " + " ".join(f"{r['drops'][t]:>10.3f}" for t in TASKS)
                  + f" {r['train_s']:>8.1f}  {r['target']}")
        print("drop = base exact match - final exact match on the quickstart's held-out rows (higher is worse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
