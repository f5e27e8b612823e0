"""Training-engine benchmark: `ftctl run` against a plain Accelerate loop, and QLoRA memory.

Prints ratios against plain baselines measured in the same run:
  (a) training tokens/s of `ftctl run configs/quickstart.yaml` (LoRA r=16 all-linear on the
      built-in tiny base, demo target task, batch 16 per worker, 2 CPU workers over gloo)
      vs `bench/plain_accelerate_loop.py` started by `accelerate launch` with the same
      model, data, method, batch, schedule shape, threads and worker count (goal >= 0.95).
      Both count only the training steps: ftctl's figure is `tokens / elapsed_s` of the
      last metrics.jsonl record; the plain loop times its own step loop the same way.
  (b) wall time from launching `ftctl run` to the first optimizer step (the first record
      in metrics.jsonl, `training.log_every_steps=1`, polled every 20 ms) vs from launching
      `accelerate launch` to the plain loop's first optimizer step (a timestamp it prints),
      with a breakdown of where ftctl's start-up goes (run dir files, Ray's session logs).
      Forgetting and target evaluations are switched off so only start-up is measured.
  (c) bytes of model weights: the tiny base as `build_model` loads it for qlora (bitsandbytes
      NF4, double quantisation) vs fp16 full weights, for the quantised linear layers
      (goal <= 0.35x) and for the whole model; and `estimate_memory`'s weights figure for
      Llama-3-8B (configs/llama3-8b-qlora-1gpu.yaml) as qlora vs bf16 full.

A third run per round, a diagnostic without a goal, splits the throughput gap: ftctl's own
`train_loop_per_worker`, given the config `ftctl run` builds, over a gloo group formed by
torchrun instead of Ray (so: ftctl's loop without Ray's processes around it).

The runs alternate for --rounds rounds (default 2; the order is reversed every other
round), so background load hits all alike; the per-round numbers are printed too, with the
load average. The tiny base and the data cache are made before anything is timed. Takes
about 4-5 minutes on 2 cores.

Run: python bench/bench_engine.py [--rounds N] [--steps N] [--no-diagnostic]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
LLAMA_QLORA = ROOT / "configs" / "llama3-8b-qlora-1gpu.yaml"
RAY_TMP = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
POLL_S = 0.02
TIMEOUT_S = 300  # per launched job


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # embedded local Ray, as in the quickstart
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _free_port() -> int:
    # An explicit free port: torch's default 29500 may be in use by another job's launcher.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, what: str, log_path: Path, timeout: float | None = None) -> None:
    """Wait for a launched job; past the time limit, stop its process group and give up."""
    try:
        proc.wait(timeout=TIMEOUT_S if timeout is None else timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(f"bench_engine: {what} did not finish within {TIMEOUT_S} s; its output ends:\n"
                 f"{log_path.read_text()[-3000:]}")


def _exe(name: str) -> str:
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench_engine: `{name}` is not on PATH (pip install -e . first)")
    return found


# ------------------------------------------------------------------- (a) + (b): ftctl


def run_ftctl(steps: int, work: Path, tag: str) -> dict:
    """Launch `ftctl run`, watch its run dir, return timings and throughput."""
    run_dir = work / f"ftctl-{tag}"
    overrides = [f"training.max_steps={steps}", "forgetting.tasks=[]", "forgetting.every_steps=null",
                 "data.eval=null", "training.eval_every_steps=null", "checkpoint.every_steps=null",
                 "training.log_every_steps=1"]
    cmd = [_exe("ftctl"), "run", str(QUICKSTART), *overrides, "--run-dir", str(run_dir)]
    log_path = work / f"ftctl-{tag}.log"
    metrics = run_dir / "metrics.jsonl"
    seen: dict[str, float] = {}
    size, cpu_first, cpu_last = -1, {}, {}
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while proc.poll() is None:
            if time.time() - t0 > TIMEOUT_S:
                _wait(proc, "ftctl run", log_path, timeout=0)
            now = time.time()
            if "job_yaml" not in seen and (run_dir / "job.yaml").is_file():
                seen["job_yaml"] = now
            if "worker_status" not in seen and (run_dir / "worker_status.json").is_file():
                seen["worker_status"] = now
            if "first_step" not in seen and metrics.is_file() and metrics.stat().st_size > 0:
                seen["first_step"] = now
                cpu_first = _cpu_snapshot()
            if "first_step" in seen and "last_step" not in seen and metrics.stat().st_size != size:
                size = metrics.stat().st_size
                text = metrics.read_text()
                lines = text[: text.rfind("\n")].splitlines()
                if lines and json.loads(lines[-1]).get("step") == steps:
                    seen["last_step"] = now
                    cpu_last = _cpu_snapshot()
            time.sleep(POLL_S)
        t_end = time.time()
    if proc.returncode != 0 or "first_step" not in seen:
        tail = log_path.read_text()[-3000:]
        sys.exit(f"bench_engine: ftctl run failed (exit {proc.returncode}); its output ends:\n{tail}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last = [r for r in records if "tokens" in r][-1]
    result = {
        "t_launch": t0, "t_end": t_end, "pid": proc.pid, **{f"t_{k}": v for k, v in seen.items()},
        "steps": last["step"], "tokens": last["tokens"], "train_seconds": last["elapsed_s"],
        "tokens_per_s": last["tokens"] / last["elapsed_s"], "first_step_s": seen["first_step"] - t0,
        "first_record_elapsed_s": records[0]["elapsed_s"], "wall_s": t_end - t0,
        "final_loss": last["loss"],
    }
    result["ray"] = _ray_timeline(proc.pid)
    if cpu_first and cpu_last:
        result["cpu"] = _cpu_split(cpu_first, cpu_last, proc.pid, seen["last_step"] - seen["first_step"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _cpu_snapshot() -> dict[int, tuple[int, float, int, str]]:
    """(parent pid, CPU seconds used so far, nice, name) of every process on the machine."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1: stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, int(fields[16]), name)
    return out


def _cpu_split(a: dict, b: dict, root: int, window: float) -> dict:
    """CPU seconds used between two snapshots by this run's training workers, by the rest of
    this run (driver, Ray's daemons and actors), and by everything else on the machine."""

    def ours(pid: int) -> bool:
        for _ in range(64):
            if pid == root:
                return True
            if pid not in b or pid <= 1:
                return False
            pid = b[pid][0]
        return False

    split = {"workers": 0.0, "ray_rest": 0.0, "other": 0.0, "window": window,
             "capacity": window * (os.cpu_count() or 1), "worker_nice": set()}
    for pid, (_ppid, cpu, nice, name) in b.items():
        used = cpu - (a[pid][1] if pid in a else 0.0)  # a process that started in the window: all of it
        if ours(pid):
            if "RayTrainWorker" in name or "RayTrainWo" in name:
                split["workers"] += used
                split["worker_nice"].add(nice)
            else:
                split["ray_rest"] += used
        else:
            split["other"] += used
    split["idle"] = max(0.0, split["capacity"] - split["workers"] - split["ray_rest"] - split["other"])
    split["worker_nice"] = sorted(split["worker_nice"])
    return split


def _ray_timeline(pid: int) -> dict[str, float]:
    """Timestamps from the Ray session this ftctl process started (empty when not found)."""
    out: dict[str, float] = {}
    sessions = sorted(glob.glob(str(RAY_TMP / f"session_*_{pid}")))
    if not sessions:
        return out
    session = Path(sessions[-1])
    m = re.match(r"session_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6})_\d+$", session.name)
    if m:  # ray.init picks the session name (local time) as it starts
        out["session_created"] = datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S_%f").timestamp()
    logs = session / "logs"
    driver = sorted(logs.glob(f"python-core-driver-*_{pid}.log"))
    if driver:  # the driver's core worker: ray.init has started the node and is connecting
        first = driver[0].read_text(errors="replace").split("\n", 1)[0]
        m = re.match(r"\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})", first)
        if m:
            out["driver_connected"] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    for path in sorted((logs / "train").glob("ray-train-sys-controller-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg, ts = rec.get("message", ""), rec.get("timestamp_ns", 0) / 1e9
            if "controller_init" not in out:
                out["controller_init"] = ts
            if msg.startswith("Attempting to start training worker group"):
                out["group_start"] = ts
            elif "worker actors created in" in msg:
                out["group_actors"] = ts
            elif "Train context initialized on workers" in msg:
                out["group_context"] = ts
            elif "Train function launched on workers" in msg:
                out["group_launched"] = ts
    return out


def startup_breakdown(r: dict) -> list[tuple[str, float | None]]:
    """Consecutive phases from launch to the first optimizer step, in seconds."""
    ray = r["ray"]
    marks = [
        ("CLI start + validation (run dir written)", r.get("t_job_yaml")),
        ("driver: resolve model, data cache, import ray", ray.get("session_created")),
        ("ray.init: local node (GCS, raylet, agents)", ray.get("driver_connected")),
        ("TorchTrainer + Train controller actor", ray.get("group_start")),
        ("worker group: 2 actor processes", ray.get("group_actors")),
        ("worker group: gloo process group", ray.get("group_context")),
        ("worker group: ship + launch train fn", ray.get("group_launched")),
        ("workers: imports, Accelerate, model + LoRA", r.get("t_worker_status")),
        ("first optimizer step (+ metrics write)", r.get("t_first_step")),
    ]
    out, prev = [], r["t_launch"]
    for name, t in marks:
        if t is None or t < prev - 0.5:  # missing, or the logs' clock disagrees: fold into the next phase
            out.append((name, None))
            continue
        out.append((name, t - prev))
        prev = t
    return out


# ------------------------------------------------- (a) diagnostic: ftctl's loop, no Ray


def _overridden_quickstart(steps: int) -> dict:
    """The job `run_ftctl` runs, with the same overrides, as a dict."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["training"].update(max_steps=steps, log_every_steps=1, eval_every_steps=None)
    raw["forgetting"] = {**raw.get("forgetting", {}), "tasks": [], "every_steps": None}
    raw["data"]["eval"] = None
    raw["checkpoint"]["every_steps"] = None
    return raw


def loop_worker(run_dir: str, steps: int) -> None:
    """Entry point under torch.distributed.run: ftctl's own `train_loop_per_worker`, given the
    config `ftctl run` would give it, over a gloo group formed by torchrun instead of Ray."""
    import torch.distributed as dist
    from rich.console import Console

    from orchestrator.spec.models import JobSpec
    from orchestrator.training.loop import train_loop_per_worker
    from orchestrator.training.prepare import prepare_job

    dist.init_process_group("gloo")
    from orchestrator.rundir import RunDir

    spec = JobSpec.model_validate(_overridden_quickstart(steps))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    config = None
    for rank in range(dist.get_world_size()):  # one rank at a time: the data cache is written once
        if dist.get_rank() == rank:
            config = prepare_job(spec, RunDir(Path(run_dir)), Console(quiet=True))
        dist.barrier()
    train_loop_per_worker(config.to_json())
    dist.destroy_process_group()


def run_loop_no_ray(steps: int, job: dict, work: Path, tag: str) -> dict:
    run_dir = work / f"loop-{tag}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(job["resources"]["workers"]),
           "--master_port", str(_free_port()), str(Path(__file__).resolve()), "--_loop-worker", str(run_dir),
           "--steps", str(steps)]
    log_path = work / f"loop-{tag}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _wait(proc, "ftctl loop under torchrun", log_path)
    metrics = run_dir / "metrics.jsonl"
    if proc.returncode != 0 or not metrics.is_file():
        sys.exit(f"bench_engine: ftctl's loop under torchrun failed (exit {proc.returncode}); its output ends:\n"
                 f"{log_path.read_text()[-3000:]}")
    last = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()][-1]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tokens": last["tokens"], "train_seconds": last["elapsed_s"],
            "tokens_per_s": last["tokens"] / last["elapsed_s"]}


# ---------------------------------------------------------------- (a) + (b): baseline


def run_plain(steps: int, job: dict, work: Path, tag: str) -> dict:
    t = job["training"]
    out_file = work / f"plain-{tag}.json"
    # `accelerate launch --cpu` uses its single-process launcher (world size 1), so the
    # multi-process launcher (torch.distributed.run underneath) is asked for; the script
    # itself builds Accelerator(cpu=True), which runs MULTI_CPU over gloo.
    cmd = [_exe("accelerate"), "launch", "--multi_gpu", "--num_processes", str(job["resources"]["workers"]),
           "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "bench" / "plain_accelerate_loop.py"), "--steps", str(steps),
           "--batch-size", str(t["per_device_batch_size"]), "--lr", str(t["lr"]),
           "--warmup", str(t.get("warmup_steps", 0)), "--seed", str(t.get("seed", 0)),
           "--threads", str(int(job["resources"].get("cpus_per_worker", 1))),
           "--max-seq-len", str(job["data"]["max_seq_len"]), "--data", job["data"]["train"]["path"],
           "--out", str(out_file)]
    log_path = work / f"plain-{tag}.log"
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _wait(proc, "plain loop", log_path)
        t_end = time.time()
    if proc.returncode != 0 or not out_file.is_file():
        sys.exit(f"bench_engine: plain loop failed (exit {proc.returncode}); its output ends:\n"
                 f"{log_path.read_text()[-3000:]}")
    r = json.loads(out_file.read_text())
    if r["world_size"] != job["resources"]["workers"]:
        sys.exit(f"bench_engine: the plain loop ran with world size {r['world_size']}")
    r.update(t_launch=t0, wall_s=t_end - t0, first_step_s=r["t_first_step"] - t0)
    return r


# ------------------------------------------------------------------------ (c) memory


def bench_memory() -> dict:
    import torch
    from bitsandbytes.nn import Linear4bit

    from orchestrator.models.build import build_model
    from orchestrator.models.memory import NF4_BYTES_PER_PARAM, QUANT_CONSTANT_BYTES, estimate_memory
    from orchestrator.models.shape import block_linears, model_shape
    from orchestrator.models.tiny.build import ensure_tiny_base
    from orchestrator.spec.models import JobSpec

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model_dir = str(ensure_tiny_base())
    raw = yaml.safe_load(QUICKSTART.read_text())
    q_raw = {**raw, "method": {"kind": "qlora", "lora": raw["method"]["lora"],
                               "quantization": {"quant_type": "nf4", "double_quant": True,
                                                "compute_dtype": "bfloat16"}}}
    f_raw = {**raw, "method": {"kind": "full"}, "model": {**raw["model"], "dtype": "float16"}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = build_model(JobSpec.model_validate(q_raw), model_dir, on_gpu=False)
        fmodel, _ = build_model(JobSpec.model_validate(f_raw), model_dir, on_gpu=False)

    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    # Quantised linears: the packed 4-bit weights (what get_memory_footprint counts) plus
    # their quantisation constants (absmax, nested absmax, code tables; not parameters, so
    # get_memory_footprint leaves them out), shared tensors counted once.
    seen: set[tuple[int, int]] = set()

    def tensor_bytes(value) -> int:
        if torch.is_tensor(value):
            key = (value.data_ptr(), value.nbytes)
            if key in seen:
                return 0
            seen.add(key)
            return value.nbytes
        if hasattr(value, "absmax"):  # a nested QuantState
            return sum(tensor_bytes(v) for v in vars(value).values())
        return 0

    q_linear_names, q_linear_params, q_consts = [], 0, 0
    for name, module in qmodel.named_modules():
        if isinstance(module, Linear4bit):
            q_linear_names.append(name.replace("base_model.model.", "").replace(".base_layer", ""))
            q_linear_params += nbytes(module.parameters(recurse=False))
            q_consts += sum(tensor_bytes(v) for v in vars(module.weight.quant_state).values())
    fp16_modules = dict(fmodel.named_modules())
    f_linear = sum(nbytes(fp16_modules[n].parameters(recurse=False)) for n in q_linear_names)
    lora_bytes = nbytes(p for n, p in qmodel.named_parameters() if "lora_" in n)
    q_whole = qmodel.get_memory_footprint() - lora_bytes + q_consts
    f_whole = fmodel.get_memory_footprint()
    non_linear_params = sum(p.numel() for p in fmodel.parameters()) - sum(
        p.numel() for n in q_linear_names for p in fp16_modules[n].parameters(recurse=False))
    q_whole_16 = q_linear_params + q_consts + 2 * non_linear_params  # same, with the rest in 16 bits

    llama_raw = yaml.safe_load(LLAMA_QLORA.read_text())
    llama_q = JobSpec.model_validate(llama_raw)
    llama_f = JobSpec.model_validate({**llama_raw, "method": {"kind": "full"}})
    shape = model_shape(llama_q.model.path)
    est_q, est_f = estimate_memory(llama_q, shape).weights, estimate_memory(llama_f, shape).weights
    lin = shape.num_layers * sum(a * b for a, b in block_linears(shape).values())
    return {
        "n_linear": len(q_linear_names), "q_linear_params": q_linear_params, "q_consts": q_consts,
        "f_linear": f_linear, "q_whole": q_whole, "q_whole_16": q_whole_16, "f_whole": f_whole,
        "lora_bytes": lora_bytes, "q_footprint_raw": qmodel.get_memory_footprint(),
        "est_q": est_q, "est_f": est_f, "llama_linear_fraction": lin / (est_f / 2),
        "llama_linear_ratio": (NF4_BYTES_PER_PARAM + QUANT_CONSTANT_BYTES[True]) / 2,
        "tiny_non_linear_fraction": non_linear_params / sum(p.numel() for p in fmodel.parameters()),
    }


def warm_caches(job: dict) -> None:
    """Build (or find) the tiny base and tokenise the training data before anything is timed,
    so neither side pays for a first-use build."""
    from transformers import AutoTokenizer

    from orchestrator.data.pipeline import prepare_dataset
    from orchestrator.models.tiny.build import ensure_tiny_base
    from orchestrator.spec.models import DataSourceSpec, DataSpec

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_base()))
    source = DataSourceSpec(path=job["data"]["train"]["path"], format="instruction")
    prepare_dataset(source, DataSpec(train=source, max_seq_len=job["data"]["max_seq_len"]), tokenizer)


# ------------------------------------------------------------------------------ main


def _fmt_s(x: float | None) -> str:
    return "    n/a" if x is None else f"{x:7.2f}"


def _goal(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description="ftctl run vs a plain Accelerate loop; QLoRA weight bytes")
    ap.add_argument("--rounds", type=int, default=2, help="alternating ftctl / plain rounds (default 2)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--no-diagnostic", action="store_true",
                    help="skip the extra run of ftctl's loop under torchrun without Ray")
    ap.add_argument("--_loop-worker", dest="loop_worker", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop_worker:
        loop_worker(args.loop_worker, args.steps)
        return

    job = yaml.safe_load(QUICKSTART.read_text())
    lora, t, r = job["method"].get("lora", {}), job["training"], job["resources"]
    assert job["method"]["kind"] == "lora" and lora.get("r") == 16 and lora.get("alpha") == 32 \
        and lora.get("target_modules") == "all-linear" and not lora.get("dropout"), \
        "the plain loop hard-codes LoRA r=16, alpha 32, all-linear, no dropout: update it with the quickstart"
    assert t.get("lr_schedule", "cosine") == "cosine" and r.get("strategy", "ddp") == "ddp"

    load0 = os.getloadavg()
    t_bench = time.time()
    work = Path(tempfile.mkdtemp(prefix="ftctl-bench-engine-"))
    print(f"bench_engine: {args.rounds} round(s) of plain loop, "
          f"{'' if args.no_diagnostic else 'ftctl loop without Ray, '}ftctl run; {args.steps} steps each, "
          f"{r['workers']} workers x batch {t['per_device_batch_size']}; work dir {work}", flush=True)
    warm_caches(job)
    ftctl_runs, plain_runs, loop_runs = [], [], []
    try:
        for i in range(args.rounds):
            order = ["plain"] + ([] if args.no_diagnostic else ["loop"]) + ["ftctl"]
            for which in (order if i % 2 == 0 else order[::-1]):
                if which == "loop":
                    loop_runs.append(run_loop_no_ray(args.steps, job, work, str(i)))
                    print(f"  round {i + 1} ftctl loop, no Ray: {loop_runs[-1]['tokens_per_s']:7.0f} tok/s", flush=True)
                elif which == "plain":
                    plain_runs.append(run_plain(args.steps, job, work, str(i)))
                    p = plain_runs[-1]
                    print(f"  round {i + 1} plain: {p['tokens_per_s']:7.0f} tok/s, first step {p['first_step_s']:.1f} s",
                          flush=True)
                else:
                    ftctl_runs.append(run_ftctl(args.steps, work, str(i)))
                    f = ftctl_runs[-1]
                    print(f"  round {i + 1} ftctl: {f['tokens_per_s']:7.0f} tok/s, first step {f['first_step_s']:.1f} s, "
                          f"wall {f['wall_s']:.1f} s", flush=True)
        mem = bench_memory()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()

    # ---- (a) throughput: all rounds pooled (total tokens / total training seconds)
    f_tps = sum(x["tokens"] for x in ftctl_runs) / sum(x["train_seconds"] for x in ftctl_runs)
    p_tps = sum(x["tokens"] for x in plain_runs) / sum(x["train_seconds"] for x in plain_runs)
    tps_ratio = f_tps / p_tps
    # ---- (b) start-up: median over rounds
    f_first = statistics.median(x["first_step_s"] for x in ftctl_runs)
    p_first = statistics.median(x["first_step_s"] for x in plain_runs)

    print()
    print("(a) training throughput (training steps only; 2 workers, gloo, LoRA r=16 all-linear, batch 16/worker)")
    for i, (f, p) in enumerate(zip(ftctl_runs, plain_runs)):
        print(f"    round {i + 1}: ftctl {f['tokens']:6d} tok / {f['train_seconds']:6.2f} s = {f['tokens_per_s']:6.0f} tok/s"
              f"   plain {p['tokens']:6d} tok / {p['train_seconds']:6.2f} s = {p['tokens_per_s']:6.0f} tok/s"
              f"   ratio {f['tokens_per_s'] / p['tokens_per_s']:.2f}")
    print(f"plain accelerate loop     {p_tps:8.0f} tok/s  (baseline)")
    print(f"ftctl run                 {f_tps:8.0f} tok/s  ratio {tps_ratio:5.2f}x  goal >= 0.95: {_goal(tps_ratio >= 0.95)}")
    for i, f in enumerate(ftctl_runs):
        c = f.get("cpu")
        if c:
            print(f"    round {i + 1} ftctl, CPU-seconds over its {c['window']:.1f} s of training steps "
                  f"({c['capacity']:.1f} available): training workers {c['workers']:.1f} (nice {c['worker_nice']}), "
                  f"rest of the run (driver, Ray) {c['ray_rest']:.1f}, rest of the machine {c['other']:.1f}, "
                  f"idle {c['idle']:.1f}")
    if loop_runs:
        l_tps = sum(x["tokens"] for x in loop_runs) / sum(x["train_seconds"] for x in loop_runs)
        rounds = "  ".join(f"{x['tokens_per_s']:.0f}" for x in loop_runs)
        print(f"  diagnostic: ftctl's train_loop_per_worker under torchrun, no Ray: {l_tps:8.0f} tok/s  ratio "
              f"{l_tps / p_tps:5.2f}x of plain (rounds: {rounds})")

    print()
    print("(b) launch -> first optimizer step (wall clock, nothing subtracted)")
    for i, (f, p) in enumerate(zip(ftctl_runs, plain_runs)):
        print(f"    round {i + 1}: ftctl {f['first_step_s']:6.2f} s (whole run {f['wall_s']:5.1f} s)"
              f"   plain {p['first_step_s']:6.2f} s (whole run {p['wall_s']:5.1f} s)")
    print(f"accelerate launch (plain) {p_first:8.2f} s  (baseline)")
    print(f"ftctl run                 {f_first:8.2f} s  ratio {f_first / p_first:5.2f}x  (Ray start-up expected to cost; no goal)")
    print("  ftctl start-up breakdown (median over rounds, s):")
    phases = [startup_breakdown(x) for x in ftctl_runs]
    for k, (name, _) in enumerate(phases[0]):
        vals = [ph[k][1] for ph in phases if ph[k][1] is not None]
        print(f"    {name:46s} {_fmt_s(statistics.median(vals) if vals else None)}")
    p = plain_runs[0] if len(plain_runs) == 1 else sorted(plain_runs, key=lambda x: x["first_step_s"])[len(plain_runs) // 2]
    print("  plain loop breakdown (median round, s):")
    print(f"    {'accelerate launch -> script first line':46s} {_fmt_s(p['t_start'] - p['t_launch'])}")
    print(f"    {'imports (torch, accelerate, peft, transformers)':46s} {_fmt_s(p['t_imports'] - p['t_start'])}")
    print(f"    {'gloo process group (Accelerator)':46s} {_fmt_s(p['t_group'] - p['t_imports'])}")
    print(f"    {'data cache, model + LoRA, prepare':46s} {_fmt_s(p['t_setup'] - p['t_group'])}")
    print(f"    {'first optimizer step':46s} {_fmt_s(p['t_first_step'] - p['t_setup'])}")

    print()
    print("(c) bytes of model weights: tiny base, qlora (NF4, double quant, via build_model) vs fp16 full")
    q_lin = mem["q_linear_params"] + mem["q_consts"]
    lin_ratio = q_lin / mem["f_linear"]
    print(f"fp16 linear layers ({mem['n_linear']})    {mem['f_linear']:10,d} B  (baseline)")
    print(f"qlora linear layers       {q_lin:10,d} B  ratio {lin_ratio:5.3f}x  goal <= 0.35: {_goal(lin_ratio <= 0.35)}"
          f"   ({mem['q_linear_params']:,} B packed 4-bit + {mem['q_consts']:,} B quant constants)")
    print(f"  packed weights only     {mem['q_linear_params']:10,d} B  ratio {mem['q_linear_params'] / mem['f_linear']:5.3f}x"
          f"  (what get_memory_footprint counts)")
    print(f"fp16 whole model          {mem['f_whole']:10,d} B  (baseline, get_memory_footprint)")
    print(f"qlora whole model         {mem['q_whole']:10,d} B  ratio {mem['q_whole'] / mem['f_whole']:5.3f}x"
          f"  (as built: quant constants in; embeddings + norms, {100 * mem['tiny_non_linear_fraction']:.0f}% of the parameters, "
          f"in fp32 after prepare_model_for_kbit_training; LoRA {mem['lora_bytes']:,} B left out)")
    print(f"  same, rest in 16-bit    {mem['q_whole_16']:10,d} B  ratio {mem['q_whole_16'] / mem['f_whole']:5.3f}x")
    GiB = 1024**3
    print(f"Llama-3-8B estimate_memory weights: bf16 full {mem['est_f'] / GiB:6.2f} GiB (baseline), "
          f"qlora {mem['est_q'] / GiB:5.2f} GiB  ratio {mem['est_q'] / mem['est_f']:5.3f}x"
          f"  (block linears are {100 * mem['llama_linear_fraction']:.0f}% of the parameters; "
          f"linears alone {mem['llama_linear_ratio']:5.3f}x)")

    print()
    print(f"load average (1 min) {load0[0]:.2f} at start, {load1[0]:.2f} at end; {os.cpu_count()} cores; "
          f"bench took {time.time() - t_bench:.0f} s")


if __name__ == "__main__":
    main()
