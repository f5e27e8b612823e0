"""The per-worker training loop, read top to bottom.

Runs inside each Ray Train worker. Ray has already formed the process group (gloo on
CPU, nccl on GPU); Accelerate is built on top of it (with `cpu=True` on CPU, without
which it would silently train world-size-1 replicas). Every rank computes the loss on its
own disjoint shard of each global batch; the loss is normalised by the number of label
tokens in the whole global batch, so that N workers x batch b take exactly the step that
1 worker x batch N*b takes.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.checkpoint.store import commit_checkpoint, latest_complete_checkpoint, staging_dir, verify_checkpoint
from orchestrator.data.pipeline import collate, load_prepared
from orchestrator.data.sampling import BatchPlan
from orchestrator.models.build import build_model, load_tokenizer
from orchestrator.spec.models import JobSpec
from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.training.evaluation import evaluate_forgetting, evaluate_target, sum_across_ranks, token_loss_sum
from orchestrator.training.schedule import lr_lambda
from orchestrator.training.strategies import (
    build_accelerator, full_state_dict, shard_with_fsdp, uses_deepspeed, uses_fsdp,
)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = JobSpec.model_validate(config["spec"])
    run_dir = Path(config["run_dir"])
    t, r = spec.training, spec.resources
    on_gpu = torch.cuda.is_available() and r.gpus_per_worker > 0

    # ---- process group + Accelerate ------------------------------------------------
    torch.set_num_threads(max(1, int(r.cpus_per_worker)))
    accelerator = build_accelerator(spec, on_gpu)
    deepspeed = uses_deepspeed(spec)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not deepspeed and accelerator.num_processes != world:
        raise RuntimeError(f"Accelerate sees {accelerator.num_processes} processes but the process group has "
                           f"{world}; refusing to train unsynchronised replicas")
    _seed_everything(t.seed)

    # ---- model, optimizer, schedule ------------------------------------------------
    model, params = build_model(spec, config["model_dir"], on_gpu)
    fsdp = uses_fsdp(spec)
    if fsdp:  # FSDP2 must shard before the optimizer sees the parameters
        model = shard_with_fsdp(model, spec, on_gpu)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    train_set = load_prepared(Path(config["train_cache"]))
    plan = BatchPlan(len(train_set), t.per_device_batch_size, t.grad_accum_steps, world, t.seed, spec.data.shuffle)
    total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * plan.steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, t.warmup_steps, total_steps, t.lr_schedule))
    # The scheduler stays outside `prepare`: Accelerate would step it once per process per
    # call, running the schedule `world` times too fast.
    if fsdp:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed and getattr(model, "dp_world_size", world) != world:
        raise RuntimeError(f"DeepSpeed trains over {model.dp_world_size} ranks but the process group has {world}")
    # ZeRO-3 and FSDP need every rank in every forward pass, so evaluation is not sharded there.
    shard_eval = not fsdp and not (deepspeed and (r.zero_stage or 2) == 3)
    tokenizer = load_tokenizer(config["model_dir"], spec.model)
    pad_id = int(tokenizer.pad_token_id)

    # ---- resume ----------------------------------------------------------------------
    checkpoints = run_dir / "checkpoints"
    state = {"step": 0, "samples": 0, "tokens": 0, "train_seconds": 0.0}
    resume_from = _resume_target(spec, checkpoints, rank)
    if resume_from is not None:
        state = _load_checkpoint(resume_from, accelerator, model, optimizer, scheduler, rank)

    eval_set = load_prepared(Path(config["eval_cache"])) if config.get("eval_cache") else None
    forgetting_tasks = config.get("forgetting", [])
    log = _MetricsLog(run_dir / "metrics.jsonl", enabled=rank == 0, truncate=resume_from is None,
                      tensorboard_dir=run_dir / "tensorboard" if spec.tracking.tensorboard else None,
                      mlflow=_mlflow_run(spec, config, run_dir) if spec.tracking.mlflow and rank == 0 else None)
    if rank == 0:
        _write_json(run_dir / "worker_status.json", {"phase": "baseline", "world_size": world,
                                                      "params": {"trainable": params.trainable, "total": params.total},
                                                      "total_steps": total_steps})
    target = [config["target"]] if config.get("target") else []
    target_result: dict[str, float] = {}
    if target and resume_from is None:
        target_result["base"] = evaluate_forgetting(accelerator, model, target, tokenizer, pad_id, shard_eval)["target"]
    forgetting_history: list[dict[str, Any]] = []
    if forgetting_tasks and resume_from is None:
        forgetting_history.append({"step": 0, **evaluate_forgetting(accelerator, model, forgetting_tasks, tokenizer, pad_id, shard_eval)})

    # ---- train ---------------------------------------------------------------------
    model.train()
    started = time.perf_counter() - state["train_seconds"]
    while state["step"] < total_steps:
        epoch, step_in_epoch = plan.position(state["step"])
        micro = plan.micro_batches(epoch, step_in_epoch, rank)
        batches = [collate([train_set[i] for i in idx], pad_id) for idx in micro]
        local_tokens = sum(_loss_units(b) for b in batches)
        global_tokens = _all_reduce_sum(local_tokens, accelerator.device)
        loss_sum = 0.0
        for k, batch in enumerate(batches):
            batch = {key: v.to(accelerator.device) for key, v in batch.items()}
            # DeepSpeed handles accumulation itself; FSDP2 reduces every micro-batch.
            sync = k == len(batches) - 1 or deepspeed or fsdp
            with (accelerator.no_sync(model) if not sync else nullcontext()):
                token_loss = _loss_sum(model, batch)
                # DDP and ZeRO average gradients over ranks, hence the world factor; DeepSpeed
                # also divides by its accumulation steps, hence that factor.
                scale = world * (t.grad_accum_steps if deepspeed else 1)
                accelerator.backward(token_loss * scale / max(global_tokens, 1))
            loss_sum += float(token_loss.detach())
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        grad_norm = None
        if t.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(trainable, t.max_grad_norm)  # DeepSpeed: clipped in its step
            if hasattr(norm, "full_tensor"):  # FSDP2: a sharded DTensor
                norm = norm.full_tensor()
            grad_norm = float(norm) if norm is not None else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state["step"] += 1
        state["samples"] += plan.global_batch
        state["tokens"] += int(_all_reduce_sum(sum(int(b["attention_mask"].sum()) for b in batches), accelerator.device))
        step_loss = _all_reduce_sum(loss_sum, accelerator.device) / max(global_tokens, 1)
        elapsed = time.perf_counter() - started
        state["train_seconds"] = elapsed
        record: dict[str, Any] = {}
        if state["step"] % t.log_every_steps == 0 or state["step"] == total_steps:
            record.update(step=state["step"], epoch=epoch, loss=step_loss, lr=lr,
                          tokens=state["tokens"], samples=state["samples"], elapsed_s=round(elapsed, 3),
                          tokens_per_s=round(state["tokens"] / max(elapsed, 1e-9), 1))
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
        if eval_set is not None and t.eval_every_steps and state["step"] % t.eval_every_steps == 0:
            record.update(step=state["step"], **evaluate_target(accelerator, model, eval_set, pad_id,
                                                                t.per_device_batch_size, shard_eval))
        f = spec.forgetting
        if forgetting_tasks and f.every_steps and state["step"] % f.every_steps == 0 and state["step"] < total_steps:
            forgetting_history.append({"step": state["step"],
                                       **evaluate_forgetting(accelerator, model, forgetting_tasks, tokenizer, pad_id, shard_eval)})
        if record:
            log.write(record)
        every = spec.checkpoint.every_steps
        if every and state["step"] % every == 0 and state["step"] < total_steps:
            _save_checkpoint(checkpoints, state, accelerator, model, optimizer, scheduler, config, spec)

    # ---- finish: final checkpoint, artifacts, evaluations ------------------------------
    _save_checkpoint(checkpoints, state, accelerator, model, optimizer, scheduler, config, spec)
    final: dict[str, Any] = {"step": state["step"]}
    if eval_set is not None:
        final.update(evaluate_target(accelerator, model, eval_set, pad_id, t.per_device_batch_size, shard_eval))
    if forgetting_tasks:
        forgetting_history.append({"step": state["step"], **evaluate_forgetting(accelerator, model, forgetting_tasks, tokenizer, pad_id, shard_eval)})
    if target:
        target_result["final"] = evaluate_forgetting(accelerator, model, target, tokenizer, pad_id, shard_eval)["target"]
    _save_artifact(run_dir, spec, accelerator, model)
    if rank == 0:
        _write_json(run_dir / "worker_result.json", {
            "world_size": world, "steps": state["step"], "samples_seen": state["samples"],
            "tokens_seen": state["tokens"], "train_seconds": state["train_seconds"],
            "final_loss": log.last_loss, "final_eval": final, "forgetting_history": forgetting_history,
            "params": {"trainable": params.trainable, "total": params.total},
            "resumed_from": str(resume_from) if resume_from else None,
            "target": target_result or None,
        })
    log.close()
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------- pieces


def _loss_units(batch: dict[str, torch.Tensor]) -> int:
    """What the loss is averaged over: label tokens (language modelling) or examples (head)."""
    if "label" in batch:
        return int(batch["label"].numel())
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "label" in batch:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        return torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum")
    return token_loss_sum(model, batch)


def _all_reduce_sum(value: float, device) -> float:
    return sum_across_ranks([float(value)], device)[0]


def _seed_everything(seed: int) -> None:
    # Same seed on every rank: model init (and LoRA init) must match across replicas.
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


class _MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed (rank 0 only);
    the same scalars go to TensorBoard when tracking.tensorboard is on."""

    def __init__(self, path: Path, enabled: bool, truncate: bool, tensorboard_dir: Path | None = None, mlflow=None):
        self.path, self.enabled, self.last_loss, self.mlflow = path, enabled, None, mlflow
        self.tensorboard = None
        if enabled and truncate:
            path.write_text("")
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            self.last_loss = record["loss"]
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            if self.tensorboard is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.tensorboard.add_scalar(f"train/{key}", value, record["step"])
                self.tensorboard.flush()
            if self.mlflow is not None:
                numbers = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
                self.mlflow.log_metrics(numbers, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _mlflow_run(spec: JobSpec, config: dict[str, Any], run_dir: Path):
    """Start an MLflow run on rank 0 with the resolved spec as flat params; returns the module."""
    uri = config["mlflow_tracking_uri"]
    if uri.startswith("file:"):
        # MLflow keeps the local file store working but asks for an explicit opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(spec.tracking.experiment or spec.name)
    mlflow.start_run(run_name=run_dir.name)
    flat = _flatten(spec.model_dump(mode="json"))
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    return mlflow


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _trainable_state(accelerator, model, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unwrapped = accelerator.unwrap_model(model)
    names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().contiguous() for n, t in full.items() if n in names}


def _save_checkpoint(checkpoints: Path, state, accelerator, model, optimizer, scheduler, config, spec: JobSpec) -> None:
    from safetensors.torch import save_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    staging = staging_dir(checkpoints, state["step"])
    full = full_state_dict(accelerator, model, spec)
    if rank == 0:
        staging.mkdir(parents=True, exist_ok=True)
        save_file(_trainable_state(accelerator, model, full), str(staging / "trainable.safetensors"))
        if spec.resources.strategy == "ddp":
            # Partitioned optimizer state (DeepSpeed, FSDP) is not saved yet (see README).
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        _write_json(staging / "trainer_state.json", {**state, "world_size": dist.get_world_size() if dist.is_initialized() else 1})
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), staging / f"rng-rank{rank:05d}.pt")
    accelerator.wait_for_everyone()
    if rank == 0:
        commit_checkpoint(staging, state["step"], config["spec_hash"], keep_last=spec.checkpoint.keep_last)
    accelerator.wait_for_everyone()


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _resume_target(spec: JobSpec, checkpoints: Path, rank: int) -> Path | None:
    value = spec.checkpoint.resume
    if value == "never":
        return None
    if value == "auto":
        info = latest_complete_checkpoint(checkpoints, warn=print if rank == 0 else (lambda _m: None))
        return info.path if info else None
    return verify_checkpoint(Path(value)).path


def _load_checkpoint(path: Path, accelerator, model, optimizer, scheduler, rank: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    missing = accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"checkpoint {path.name} holds weights this model does not have: {missing.unexpected_keys[:3]}")
    if not (path / "optimizer.pt").is_file():
        raise RuntimeError(f"checkpoint {path.name} has no optimizer state (DeepSpeed and FSDP checkpoints do not "
                           f"carry it yet), so it cannot be resumed exactly; start fresh with checkpoint.resume=never")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank:05d}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        random.setstate(_as_python_state(rng["python"]))
        torch.set_rng_state(rng["torch"])
    state = json.loads((path / "trainer_state.json").read_text())
    return {k: state[k] for k in ("step", "samples", "tokens", "train_seconds")}


def _as_python_state(value):
    # torch.save turns the tuple from random.getstate() into lists on some paths.
    return (value[0], tuple(value[1]), value[2])


def _save_artifact(run_dir: Path, spec: JobSpec, accelerator, model) -> None:
    accelerator.wait_for_everyone()
    full = full_state_dict(accelerator, model, spec)
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        unwrapped = accelerator.unwrap_model(model)
        target = run_dir / ("adapter" if spec.method.kind in ("lora", "qlora") else "model")
        unwrapped.save_pretrained(str(target), state_dict=full, safe_serialization=True)
    accelerator.wait_for_everyone()
