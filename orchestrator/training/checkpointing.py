"""What a training checkpoint holds for each strategy, and how it comes back.

Every checkpoint has:
  trainable.safetensors   the trainable weights (only the adapter for lora/qlora)
  scheduler.pt            LR scheduler state
  scaler.pt               fp16 grad scaler state (fp16 only)
  trainer_state.json      step, samples, tokens, data position, world size, spec,
                          data fingerprint, forgetting history so far
  rng-rank<N>.pt          python, numpy, torch and CUDA RNG of every rank
and the optimizer state through each strategy's own API:
  ddp        optimizer.pt (replicated; rank 0 saves it)
  fsdp       optimizer.pt, gathered to a full state dict by torch.distributed.checkpoint's
             state-dict API and scattered back on load
  deepspeed  deepspeed/state/, the engine's own save_checkpoint (one optimizer partition
             per rank; frozen weights excluded), loaded back by load_checkpoint through a
             weights-only loader
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.checkpoint.state import load_tensors, restore_rng, rng_state, snapshot
from orchestrator.checkpoint.store import CheckpointError, read_trainer_state
from orchestrator.forgetting.watch import STATE_KEYS
from orchestrator.checkpoint.writer import CheckpointWriter
from orchestrator.spec.models import JobSpec
from orchestrator.training.strategies import full_state_dict

DS_TAG = "state"


@dataclass(frozen=True)
class TrainerState:
    """trainer_state.json: where training stood at a checkpoint, and under which job."""

    step: int
    samples: int
    tokens: int
    train_seconds: float
    position: dict[str, Any]  # the data sampler's position
    world_size: int
    global_batch: int
    spec: dict[str, Any]
    spec_hash: str
    job: str  # the job token that wrote it
    data_fingerprint: str
    eval_base: dict[str, float] | None = None
    forgetting: dict[str, Any] = field(default_factory=dict)  # the ForgettingWatch's state_dict()

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "forgetting"}
        return {**out, **self.forgetting}  # flat, as checkpoints have always been

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainerState":
        names = {f.name for f in fields(cls)} - {"forgetting"}
        return cls(**{k: data[k] for k in names if k in data},
                   forgetting={k: data[k] for k in STATE_KEYS if k in data})


def save_training_state(writer: CheckpointWriter, step: int, trainer_state: TrainerState, accelerator, model,
                        optimizer, scheduler, spec: JobSpec, metrics: dict[str, float] | None,
                        blocking: bool) -> None:
    """Every rank calls this at the same step; it returns once the state is snapshotted
    (or, with `blocking`, once it is on disk and committed)."""
    from safetensors.torch import save_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    if writer.saved(step):
        # Already saved (a gate tripped on a checkpoint step, so the final save is that one):
        # every rank decides the same, so no collective below is entered by only some ranks.
        writer.save(step, {}, metrics, blocking=blocking)
        _after_blocking(blocking)
        return
    strategy = spec.resources.strategy
    staging = writer.staging(step)
    full = full_state_dict(accelerator, model, spec)  # collective where weights are sharded
    optim_full = None
    if strategy == "deepspeed":
        model.save_checkpoint(str(staging / "deepspeed"), tag=DS_TAG, save_latest=False,
                              exclude_frozen_parameters=True)
    elif strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_full = get_optimizer_state_dict(model, _inner(optimizer),
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    files: dict[str, Any] = {}
    if rank == 0:
        weights = snapshot(_trainable(accelerator, model, full))
        files["trainable.safetensors"] = lambda path: save_file(weights, str(path))
        if strategy == "ddp":
            optim_full = optimizer.state_dict()
        if optim_full is not None:
            files["optimizer.pt"] = _torch_file(snapshot(optim_full))
        files["scheduler.pt"] = _torch_file(scheduler.state_dict())
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None:
            files["scaler.pt"] = _torch_file(snapshot(scaler.state_dict()))
        text = json.dumps(trainer_state.to_json(), indent=1)
        files["trainer_state.json"] = lambda path: path.write_text(text)
    files[f"rng-rank{rank:05d}.pt"] = _torch_file(rng_state())
    writer.save(step, files, metrics, blocking=blocking)
    _after_blocking(blocking)


def _after_blocking(blocking: bool) -> None:
    """A blocking save returns on every rank only once rank 0 has committed it, so whatever
    follows (a rollback reading the checkpoints, the driver reading the result) sees it."""
    if blocking and dist.is_initialized():
        dist.barrier()


def load_training_state(path: Path, accelerator, model, optimizer, scheduler, spec: JobSpec) -> TrainerState:
    """Restore a verified checkpoint into this rank; returns its trainer state."""
    from safetensors.torch import load_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    state = TrainerState.from_json(read_trainer_state(path))
    strategy = spec.resources.strategy
    if strategy != "ddp" and state.world_size != world:
        raise CheckpointError(f"{path.name} was saved by {state.world_size} {strategy} workers and this run has "
                              f"{world}; only ddp checkpoints can be resumed with a different worker count")
    if strategy == "deepspeed":
        _load_deepspeed(path, model)
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        if strategy == "fsdp":
            _load_fsdp(path, model, optimizer, weights, rank)
        else:
            result = accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
            if result.unexpected_keys:
                raise CheckpointError(f"{path.name} holds weights this model does not have: {result.unexpected_keys[:3]}")
            optimizer.load_state_dict(load_tensors(path / "optimizer.pt"))
    scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(load_tensors(path / "scaler.pt"))
    rng_file = path / f"rng-rank{rank:05d}.pt"
    if rng_file.is_file():  # a rank added by a resume with more workers keeps its seeded streams
        restore_rng(load_tensors(rng_file))
    return state


# ------------------------------------------------------------------------- pieces


def _torch_file(value: Any):
    return lambda path: torch.save(value, path)


def _inner(optimizer):
    """The torch optimizer under Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _trainable(accelerator, model, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unwrapped = accelerator.unwrap_model(model)
    names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    return {n: t.contiguous() for n, t in full.items() if n in names}


def _load_fsdp(path: Path, model, optimizer, weights: dict[str, torch.Tensor], rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    # Rank 0 reads the files and broadcasts; the other ranks receive their shards.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights if rank == 0 else {}, options=options)
    optim = load_tensors(path / "optimizer.pt") if rank == 0 else {}
    set_optimizer_state_dict(model, _inner(optimizer), optim, options=options)


# Classes DeepSpeed puts in its optimizer files; the only ones the loader allows.
def _deepspeed_allowed() -> tuple:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address)


class _WeightsOnlyEngine:
    """DeepSpeed's checkpoint engine with its `load` replaced by a weights-only one."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load(self, path, map_location=None):
        return load_tensors(Path(path), _deepspeed_allowed())


def _load_deepspeed(path: Path, engine) -> None:
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyEngine(original)
    try:
        loaded, _client = engine.load_checkpoint(str(path / "deepspeed"), tag=DS_TAG, load_module_strict=False,
                                                 load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        engine.checkpoint_engine = original
    if loaded is None:
        raise CheckpointError(f"{path.name}: DeepSpeed found no state under deepspeed/{DS_TAG}")
