"""Merge benchmark: ftctl's streaming adapter merge against peft's merge_and_unload.

One run builds, in a temp dir, a randomly initialised Llama-architecture base model (fp32,
saved as several safetensors shards of at most 100 MB) and a LoRA adapter on it (peft,
r=16, alpha 32, all linear layers, B non-zero), then measures, each variant in a fresh
Python process (this script with --child), the wall time of the merge work (from after the
imports to the merged model on disk) and the process's peak RSS (VmHWM), next to its RSS
right after the imports:
  (a) peft merge_and_unload (the baseline): `AutoModelForCausalLM.from_pretrained` in fp32,
      `PeftModel.from_pretrained`, `merge_and_unload()`, `save_pretrained` in 100 MB shards;
  (b) ftctl merge, weights only: `merge_weights` over the base read one tensor at a time,
      written in 100 MB shards;
  (c) ftctl merge + verify: `merge_and_verify`, the whole `ftctl merge` path (merge into a
      staging dir, logits of base + adapter vs the merged model, both in float64 on a
      random probe, manifest with the base's tree digest, rename into place).
The outputs of (a) and (b) are compared tensor by tensor (max |difference| must stay below
1e-4, else the run fails); (c)'s verification result is printed.

`merge_weights` resets the process's peak RSS (/proc/self/clear_refs) when it starts, so a
child reads VmHWM just before the merge work as well as at the end and reports the larger.

Run: python bench/bench_merge.py [--hidden 1024] [--intermediate 4096] [--layers 10] [--vocab 32000]
(BENCH_DIR=... puts the temp dir elsewhere; about 2.5 GB per run at the defaults)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

SHARD = "100MB"
VARIANTS = {
    "peft": "peft merge_and_unload (baseline)",
    "ftctl": "ftctl merge (weights only)",
    "verify": "ftctl merge + verify",
}
MiB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# child: one variant in a fresh process


def child(variant: str, base: Path, adapter: Path, out: Path) -> int:
    import importlib

    import torch  # imported before the clock starts, like everything the variant needs

    if variant in ("peft", "verify"):
        import transformers

        for module in ("peft", "transformers.models.llama.modeling_llama"):  # lazy in transformers: load now
            importlib.import_module(module)
        transformers.utils.logging.disable_progress_bar()
    if variant in ("ftctl", "verify"):
        from orchestrator.merging.adapters import load_adapter
        from orchestrator.merging.export import MergeRequest, merge_and_verify
        from orchestrator.merging.merge import merge_weights
        from orchestrator.merging.weights import base_weights, parse_size

    rss_import = _status_kib("VmRSS")
    hwm_before = _status_kib("VmHWM")
    t0 = time.perf_counter()
    extra: dict = {}
    if variant == "peft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(adapter))
        model = model.merge_and_unload()
        model.save_pretrained(str(out), max_shard_size=SHARD)
    elif variant == "ftctl":
        config = json.loads((base / "config.json").read_text())
        stats = merge_weights(base_weights(base), config, [load_adapter(adapter)], [1.0], "linear", "auto", out,
                              shard_bytes=parse_size(SHARD))
        extra = {"merge_stats": {k: v for k, v in stats.items() if k != "shards"}}
    elif variant == "verify":
        manifest = merge_and_verify(MergeRequest(adapters=[adapter], base=str(base), out=out, shard_size=SHARD))
        extra = {"verification": manifest["verification"], "merge_seconds": manifest["merge"]["seconds"],
                 "manifest_seconds": manifest["seconds"]}
    else:
        raise SystemExit(f"unknown variant {variant}")
    seconds = time.perf_counter() - t0
    hwm_end = _status_kib("VmHWM")
    print(json.dumps({"variant": variant, "seconds": seconds, "rss_after_import_kib": rss_import,
                      "hwm_before_kib": hwm_before, "hwm_end_kib": hwm_end,
                      "peak_rss_kib": max(hwm_before, hwm_end), **extra}))
    return 0


# ---------------------------------------------------------------------------------------------
# parent: build the base and the adapter, run the children, compare, print


def build(tmp: Path, args) -> tuple[Path, Path, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    base = tmp / "base"
    model.save_pretrained(str(base), max_shard_size=SHARD)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    adapter = tmp / "adapter"
    model.save_pretrained(str(adapter))
    del model
    return base, adapter, params


def run_child(variant: str, base: Path, adapter: Path, out: Path, env: dict) -> dict:
    os.sync()  # the previous variant's written shards go to disk now, not during this one's timing
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--base", str(base), "--adapter", str(adapter),
                           "--out", str(out)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    result["process_wall"] = wall
    return result


def tensor_files(model_dir: Path) -> dict[str, str]:
    from safetensors import safe_open

    where = {}
    for file in sorted(glob.glob(str(model_dir / "*.safetensors"))):
        with safe_open(file, framework="pt") as handle:
            where.update({name: file for name in handle.keys()})
    return where


def max_weight_difference(a_dir: Path, b_dir: Path) -> tuple[float, int]:
    """max |a - b| over all tensors, read one tensor at a time."""
    from safetensors import safe_open

    a_files, b_files = tensor_files(a_dir), tensor_files(b_dir)
    if a_files.keys() != b_files.keys():
        raise SystemExit(f"tensor names differ: only in peft's output {sorted(a_files.keys() - b_files.keys())[:5]}, "
                         f"only in ftctl's {sorted(b_files.keys() - a_files.keys())[:5]}")
    worst = 0.0
    for name in sorted(a_files):
        with safe_open(a_files[name], framework="pt") as ha, safe_open(b_files[name], framework="pt") as hb:
            a, b = ha.get_tensor(name), hb.get_tensor(name)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise SystemExit(f"{name}: peft {tuple(a.shape)} {a.dtype} vs ftctl {tuple(b.shape)} {b.dtype}")
        worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst, len(a_files)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.base, args.adapter, args.out)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftctl-bench-merge-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        base, adapter, params = build(tmp, args)
        shards = sorted(base.glob("*.safetensors"))
        base_bytes = sum(f.stat().st_size for f in shards)
        largest = max(f.stat().st_size for f in shards)
        adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
        print(f"base: Llama, hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, vocab "
              f"{args.vocab}: {params / 1e6:.1f} M parameters, fp32, {base_bytes / MiB:.0f} MiB in {len(shards)} "
              f"shards (largest {largest / MiB:.0f} MiB); adapter r=16 all-linear {adapter_bytes / MiB:.1f} MiB; "
              f"built in {time.perf_counter() - t0:.1f} s")

        # the base's tree digest is cached under FTCTL_HOME: keep it in the temp dir
        env = {**os.environ, "FTCTL_HOME": str(tmp / "ftctl-home")}
        results = {}
        for variant in VARIANTS:
            results[variant] = run_child(variant, base, adapter, tmp / f"out-{variant}", env)
            r = results[variant]
            print(f"  {variant}: {r['seconds']:.2f} s of merge work ({r['process_wall']:.2f} s process), "
                  f"peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB", flush=True)

        diff, n_tensors = max_weight_difference(tmp / "out-peft", tmp / "out-ftctl")
        out_shards = sorted((tmp / "out-ftctl").glob("*.safetensors"))
        verification = results["verify"]["verification"]

    print()
    print(f"{'variant':34} {'seconds':>8} {'x base':>7} {'peak RSS MiB':>13} {'x base':>7} "
          f"{'growth MiB':>11} {'after import':>13}")
    base_r = results["peft"]
    for variant, label in VARIANTS.items():
        r = results[variant]
        peak, after = r["peak_rss_kib"] / 1024, r["rss_after_import_kib"] / 1024
        print(f"{label:34} {r['seconds']:8.2f} {r['seconds'] / base_r['seconds']:6.2f}x {peak:13.0f} "
              f"{r['peak_rss_kib'] / base_r['peak_rss_kib']:6.2f}x {peak - after:11.0f} {after:13.0f}")
    print()
    print(f"base model {base_bytes / MiB:.0f} MiB fp32 ({len(shards)} shards, largest {largest / MiB:.0f} MiB); "
          f"adapter {adapter_bytes / MiB:.1f} MiB; ftctl output {len(out_shards)} shards, largest "
          f"{results['ftctl']['merge_stats']['largest_shard_bytes'] / MiB:.0f} MiB")
    print(f"peft vs ftctl merged weights: max |difference| {diff:.3g} over {n_tensors} tensors (must be < 1e-4)")
    v = results["verify"]
    print(f"ftctl merge + verify: verification max_abs_logit_diff {verification['max_abs_logit_diff']:.3g} "
          f"(tolerance {verification['tolerance']:g}, passed {verification['passed']}, in {verification['compared_in']}, "
          f"probe {verification['probe_shape']}); merge {v['merge_seconds']:.2f} s, verification "
          f"{verification['seconds']:.2f} s")
    print(f"bench took {time.perf_counter() - started:.0f} s")
    if not diff < 1e-4:
        print(f"FAIL: merged weights differ by {diff:.3g} >= 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
