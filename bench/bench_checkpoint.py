"""Checkpoint benchmark: what a save blocks and what a restore costs, against plain safetensors.

One run measures, for the same tensors (the weights of a full fine-tune and its AdamW
moments, after one optimizer step):
  (a) blocking time of ftctl's checkpoint save (`save_training_state`: snapshot in memory,
      then written, fsynced, hashed into the manifest and renamed by a background thread)
      vs `safetensors.torch.save_file` of the same tensors into one file (the baseline);
      also the time until ftctl's checkpoint is committed (durable, hashed, renamed) vs
      save_file followed by fsync, for the whole cost;
  (b) restore time: verifying the checkpoint (sizes and sha256 of every file) and loading
      weights, optimizer, scheduler and RNG into the model (`load_training_state`) vs
      `safetensors.torch.load_file` of the baseline file.
Medians over --repeats runs (default 5, after one warm-up round), each into a fresh dir, on one process (ddp with one
worker: the shapes of a rank-0 save).

Run: python bench/bench_checkpoint.py [--hidden 2048] [--layers 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from orchestrator.checkpoint.store import verify_checkpoint  # noqa: E402
from orchestrator.checkpoint.writer import CheckpointWriter  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.training.checkpointing import load_training_state, save_training_state  # noqa: E402

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"


def build(hidden: int, layers: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(4, hidden)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def baseline_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                out[f"optim.{i}.{key}"] = value.contiguous()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    spec = load_spec(QUICKSTART, ["method.kind=full", "method.lora=null", "resources.workers=1"], check_files=False)
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = build(args.hidden, args.layers)
    tensors = baseline_tensors(model, optimizer)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"tensors: {len(tensors)}, {size / 2**20:.0f} MiB (weights + AdamW moments of "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    state = {"step": 1, "samples": 0, "tokens": 0, "train_seconds": 0.0, "position": {"epoch": 0, "offset": 0}}
    times: dict[str, list[float]] = {k: [] for k in ("plain_save", "plain_durable", "blocking", "committed", "plain_load", "restore",
                                               "verify")}
    for r in range(-1, args.repeats):  # round -1 warms up (imports, allocator) and is not counted
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            save_file(tensors, str(tmp / "plain.safetensors"))
            times["plain_save"].append(time.perf_counter() - t0)
            fd = os.open(tmp / "plain.safetensors", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            times["plain_durable"].append(time.perf_counter() - t0)

            writer = CheckpointWriter(tmp / "checkpoints", 0, 1, f"bench{r}", "bench", keep_last=2)
            t0 = time.perf_counter()
            save_training_state(writer, 1, state, accelerator, model, optimizer, scheduler, spec, {}, blocking=False)
            times["blocking"].append(time.perf_counter() - t0)
            writer.wait()
            times["committed"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            loaded = load_file(str(tmp / "plain.safetensors"))
            times["plain_load"].append(time.perf_counter() - t0)
            assert loaded.keys() == tensors.keys()

            fresh_model, fresh_opt, fresh_sched = build(args.hidden, args.layers)
            t0 = time.perf_counter()
            info = verify_checkpoint(writer.committed[-1])
            t1 = time.perf_counter()
            load_training_state(info.path, accelerator, fresh_model, fresh_opt, fresh_sched, spec)
            times["restore"].append(time.perf_counter() - t0)
            times["verify"].append(t1 - t0)
            if r < 0:
                times = {k: [] for k in times}
            for a, b in zip(model.parameters(), fresh_model.parameters()):
                assert torch.equal(a, b), "restored weights differ"
            assert torch.equal(next(iter(fresh_opt.state.values()))["exp_avg"],
                               next(iter(optimizer.state.values()))["exp_avg"]), "restored optimizer differs"

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"safetensors save_file (baseline)   {med['plain_save']:.3f} s")
    print(f"ftctl save, blocking               {med['blocking']:.3f} s  ratio {med['blocking'] / med['plain_save']:.2f}x")
    print(f"save_file + fsync (baseline)       {med['plain_durable']:.3f} s")
    print(f"ftctl save, until committed        {med['committed']:.3f} s  ratio {med['committed'] / med['plain_durable']:.2f}x "
          f"of save_file + fsync (adds sha256 manifest + rename; in the background)")
    print(f"safetensors load_file (baseline)   {med['plain_load']:.3f} s")
    print(f"ftctl restore (verify + load)      {med['restore']:.3f} s  ratio {med['restore'] / med['plain_load']:.2f}x "
          f"(of which verifying sizes and sha256: {med['verify']:.3f} s)")
    print("per repeat: " + ", ".join(f"{k}=" + "/".join(f"{x:.3f}" for x in v) for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
