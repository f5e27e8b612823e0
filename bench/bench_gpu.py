"""Training throughput on one GPU: ftctl's engine vs a plain PyTorch loop vs transformers' Trainer.

    python bench/bench_gpu.py [--methods full,lora,qlora] [--steps 15] [--warmup 3] [--batch B]
    python bench/bench_gpu.py --cpu-smoke        # the whole path on CPU with a tiny model
    EXTRA="python bench/bench_gpu.py" bash .gpu/check.sh   # on the GPU machine

A ~1B Llama-shaped random-init model (bf16, seq 2048) and random-word text rows, packed. For
each method, the same model, data, batch, precision (bf16 autocast), AdamW at a constant
lr 1e-4 and clipping run three ways, each in its own process: `ftctl run` on a job file
(tokens/s from the run's metrics.jsonl, Ray start and model load excluded), a plain loop,
and Trainer; all three keep packed examples apart by position ids (KV cache off), so each gets
whatever attention kernel transformers picks for that (ftctl may pick flex or flash-attn).
MFU = (6 N + 12 L d seq) x tokens/s over the GPU's dense bf16 peak. Peak memory is the most
nvidia-smi saw in use during each process (ftctl's includes Ray's CUDA context). Without CUDA
it says so in one line and exits 0. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (SXM)
IGNORE = -100
BIG = dict(hidden=2048, inter=5632, layers=16, heads=16, kv_heads=16, vocab=32000, seq=2048)
TINY = dict(hidden=64, inter=128, layers=2, heads=4, kv_heads=2, vocab=1000, seq=128)


def make(d: Path, shape: dict, rows_tokens: int) -> int:
    """Random-init Llama + word-level tokenizer (1 word = 1 token) + text rows; returns N."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    (d / "model").mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(len(specials), shape["vocab"])])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(d / "model"))
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["inter"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=shape["seq"],
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(d / "model"), safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    rng, written, seq = random.Random(0), 0, shape["seq"]
    with open(d / "train.jsonl", "w") as f:
        while written < rows_tokens:
            length = rng.randint(seq // 4, seq + seq // 2)
            f.write(json.dumps({"text": " ".join(f"w{rng.randrange(4, shape['vocab'])}" for _ in range(length))}) + "\n")
            written += min(length + 2, seq)
    return n


def packed_rows(d: Path, seq: int) -> list[dict[str, list[int]]]:
    """bos + words + eos per text row, laid end to end and cut every `seq` tokens; positions
    restart at each example; an example's first token is never a target."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d / "model"))
    rows, cur = [], {"input_ids": [], "labels": [], "position_ids": []}
    for line in (d / "train.jsonl").read_text().splitlines():
        ids = ([tok.bos_token_id] + tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
               + [tok.eos_token_id])[:seq]
        labels, start = [IGNORE] + ids[1:], 0
        while start < len(ids):
            take = min(seq - len(cur["input_ids"]), len(ids) - start)
            cur["input_ids"] += ids[start:start + take]
            cur["labels"] += labels[start:start + take]
            cur["position_ids"] += range(take)
            start += take
            if len(cur["input_ids"]) == seq:
                rows.append(cur)
                cur = {"input_ids": [], "labels": [], "position_ids": []}
    return rows


def load_for(method: str, model_dir: str, on_gpu: bool):
    """The model as each baseline trains it, in ftctl's precision bf16: fp32 weights (the master
    copy) under bf16 autocast for full, a bf16 frozen base for lora; PEFT LoRA r=16 on all
    linear layers without dropout for lora and qlora (ftctl's defaults); NF4 double-quant base
    for qlora. The KV cache is off, so packed rows' position ids keep examples apart."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.bfloat16 if on_gpu and method != "full" else torch.float32}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    return model if method == "qlora" else model.to("cuda" if on_gpu else "cpu")


def plain(a) -> dict:
    """AdamW under bf16 autocast, loss = summed token CE / label tokens, clip 1.0."""
    import torch

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    rows = packed_rows(Path(a.dir), a.seq)
    model = load_for(a.method, str(Path(a.dir) / "model"), on_gpu).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    order = random.Random(0).sample(range(len(rows)), len(rows))

    def step(i: int) -> int:
        batch = [rows[order[(i * a.batch + k) % len(rows)]] for k in range(a.batch)]
        t = {k: torch.tensor([r[k] for r in batch], device=device) for k in batch[0]}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            logits = model(input_ids=t["input_ids"], position_ids=t["position_ids"]).logits
            labels = t["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                     labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
        (loss / max(int((labels != IGNORE).sum()), 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t["input_ids"].numel()

    return timed(step, a.warmup, a.steps, on_gpu)


def trainer(a) -> dict:
    """transformers' Trainer, same model, rows, batch, optimizer, schedule and clipping."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    on_gpu = torch.cuda.is_available()
    rows = packed_rows(Path(a.dir), a.seq)
    model = load_for(a.method, str(Path(a.dir) / "model"), on_gpu)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_gpu:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(Path(a.dir) / f"trainer-{a.method}"), per_device_train_batch_size=a.batch,
                             max_steps=a.warmup + a.steps, learning_rate=1e-4, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=on_gpu, use_cpu=not on_gpu,
                             logging_steps=10**6, save_strategy="no", report_to=[], dataloader_num_workers=0,
                             remove_unused_columns=False, seed=0)
    collate = lambda batch: {k: torch.tensor([r[k] for r in batch]) for k in ("input_ids", "labels", "position_ids")}  # noqa: E731
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    seconds = marks[-1] - marks[a.warmup - 1]
    return {"tokens_per_s": round(a.steps * a.batch * a.seq / seconds, 1), "steps": a.steps,
            "seconds": round(seconds, 3), "torch_peak_gib": peak_gib(on_gpu)}


def timed(step, warmup: int, steps: int, on_gpu: bool) -> dict:
    import torch

    for i in range(warmup):
        step(i)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started, tokens = time.perf_counter(), 0
    for i in range(warmup, warmup + steps):
        tokens += step(i)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": round(tokens / seconds, 1), "steps": steps, "seconds": round(seconds, 3),
            "torch_peak_gib": peak_gib(on_gpu)}


def peak_gib(on_gpu: bool) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None


def ftctl(a, d: Path, method: str, on_gpu: bool) -> dict:
    """`ftctl run` on a job file; tokens/s between the last warm-up step and the last step."""
    run_dir = d / f"ftctl-{method}"
    shutil.rmtree(run_dir, ignore_errors=True)
    job = {"name": f"bench-{method}", "model": {"path": str(d / "model")}, "method": {"kind": method},
           "data": {"train": {"path": str(d / "train.jsonl"), "format": "text"}, "max_seq_len": a.seq, "packing": True},
           "training": {"max_steps": a.warmup + a.steps, "per_device_batch_size": a.batch, "lr": 1.0e-4,
                        "lr_schedule": "constant", "warmup_steps": 0, "precision": "bf16" if on_gpu else "fp32",
                        "log_every_steps": 1, "seed": 0, "kernels": a.kernels},
           "resources": {"workers": 1, "gpus_per_worker": int(on_gpu), "cpus_per_worker": 2 if a.cpu_smoke else 4},
           "checkpoint": {"keep_last": 1}}
    (d / f"job-{method}.yaml").write_text(json.dumps(job))  # JSON is YAML
    out = watch([sys.executable, "-m", "orchestrator.cli", "run", str(d / f"job-{method}.yaml"),
                 "--run-dir", str(run_dir)], on_gpu, a.timeout)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    if len(records) <= a.warmup:
        return {**out, "error": f"ftctl run logged {len(records)} steps; see {run_dir}"}
    first, last = records[a.warmup - 1], records[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    kernels = next((line for line in out.pop("lines") if "kernels:" in line), None)
    return {**out, "tokens_per_s": round((last["tokens"] - first["tokens"]) / seconds, 1), "steps": len(records) - a.warmup,
            "seconds": round(seconds, 3), "kernels": kernels}


def watch(cmd: list[str], on_gpu: bool, timeout: int) -> dict:
    """Run a command, sampling the GPU memory in use every 0.5 s; its last TP line parsed."""
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.5):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout.split()
                peak[0] = max(peak[0], float(used[0]) / 1024) if used else peak[0]
            except (OSError, subprocess.SubprocessError, ValueError):
                return

    if on_gpu:
        threading.Thread(target=sample, daemon=True).start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text, rc = str(err.stdout or "") + str(err.stderr or ""), 124
    done.set()
    lines = text.splitlines()
    result = next((json.loads(line[3:]) for line in reversed(lines) if line.startswith("TP ")), {})
    if rc != 0:
        result["error"] = f"exit {rc}: " + " | ".join(lines[-3:])[-400:]
    return {**result, "rc": rc, "smi_peak_gib": round(peak[0], 2) if on_gpu else None, "lines": lines}


def flops_per_token(n_params: int, shape: dict) -> float:
    return 6 * n_params + 12 * shape["layers"] * shape["hidden"] * shape["seq"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="full,lora,qlora")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing starts")
    ap.add_argument("--batch", type=int, default=0, help="rows per step (default: by GPU memory)")
    ap.add_argument("--kernels", default="auto", choices=["auto", "liger", "none"], help="ftctl's training.kernels")
    ap.add_argument("--dir", default="", help="work dir (default: a fresh temp dir)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per run")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, few steps, on CPU")
    ap.add_argument("--child", choices=["plain", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("TP " + json.dumps({"plain": plain, "trainer": trainer}[a.child](a)), flush=True)
        return 0

    import torch

    on_gpu = torch.cuda.is_available() and not a.cpu_smoke
    if not on_gpu and not a.cpu_smoke:
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device visible; run it on a GPU machine "
                                                      "(or --cpu-smoke to check the code path on CPU)"}))
        return 0
    shape = TINY if a.cpu_smoke else BIG
    if a.cpu_smoke:
        a.steps, a.warmup, a.batch = min(a.steps, 3), min(a.warmup, 2), a.batch or 2
        a.methods = ",".join(m for m in a.methods.split(",") if m != "qlora")  # bitsandbytes 4-bit needs CUDA
    gpu = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if on_gpu else 0
    a.batch = a.batch or (8 if gib >= 120 else 4 if gib >= 60 else 1)
    a.seq = shape["seq"]
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    d = Path(a.dir or os.environ.get("TMPDIR", "/tmp")) / f"ftctl-bench-gpu-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_params = make(d, shape, rows_tokens=(a.warmup + a.steps + 2) * a.batch * a.seq * 2)
    per_token = flops_per_token(n_params, shape)
    print(f"model: {n_params / 1e9:.3f}B params, seq {a.seq}, batch {a.batch}, on {gpu} ({time.perf_counter() - t0:.0f}s)",
          flush=True)

    results: dict = {}
    for method in a.methods.split(","):
        child = [sys.executable, __file__, "--dir", str(d), "--method", method, "--seq", str(a.seq),
                 "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        runs = {"ftctl": ftctl(a, d, method, on_gpu),
                "plain": watch(child + ["--child", "plain"], on_gpu, a.timeout),
                "trainer": watch(child + ["--child", "trainer"], on_gpu, a.timeout)}
        base = runs["plain"].get("tokens_per_s")
        for name, run in runs.items():
            run.pop("lines", None)
            tps = run.get("tokens_per_s")
            run["mfu"] = round(per_token * tps / peak, 4) if tps and peak else None
            run["vs_plain"] = round(tps / base, 3) if tps and base else None
            print(f"{method:6s} {name:8s} {tps or 0:>10,.0f} tokens/s  MFU {run['mfu']}  vs plain {run['vs_plain']}  "
                  f"peak {run.get('smi_peak_gib')} GiB  {run.get('error', '')}", flush=True)
        results[method] = runs
    if not a.dir:
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"bench": "gpu", "device": gpu, "n_params": n_params, "seq": a.seq, "batch": a.batch,
                      "peak_flops": peak, "flops_per_token": per_token, "seconds": round(time.perf_counter() - t0, 1),
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
