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
import os
import random
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.checkpoint.store import (Best, CheckpointError, list_checkpoints, read_trainer_state, step_of,
                                           verify_training_checkpoint)
from orchestrator.checkpoint.writer import CheckpointWriter
from orchestrator.data.pipeline import load_prepared
from orchestrator.data.sampling import BatchPlan, DataPosition
from orchestrator.forgetting.evaluate import evaluate_target, evaluate_tasks
from orchestrator.forgetting.watch import ForgettingWatch
from orchestrator.jsonfile import write_json
from orchestrator.models.build import build_model, load_tokenizer
from orchestrator.models.divergence import BaseModel, KLMeter, loss_and_kl_sums
from orchestrator.models.preference import STATS as DPO_STATS, Reference, dpo_sums, reference_table
from orchestrator.models.kernels import adapters_under_autocast, input_casts_skipped, token_loss_fn
from orchestrator.models.loss import token_loss_sum
from orchestrator.ranks import sum_across_ranks
from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec
from orchestrator.training.feed import BatchFeed
from orchestrator.training.tallies import StepTallies
from orchestrator.training.checkpointing import TrainerState, load_training_state, save_training_state
from orchestrator.training.metrics_log import MetricsLog, mlflow_run
from orchestrator.training.schedule import lr_lambda
from orchestrator.training.worker_io import WorkerConfig, WorkerResult
from orchestrator.training.strategies import (
    build_accelerator, full_state_dict, shard_with_fsdp, uses_deepspeed, uses_fsdp,
)

def train_loop_per_worker(config_json: dict[str, Any]) -> None:
    config = WorkerConfig.from_json(config_json)
    spec = JobSpec.model_validate(config.spec)
    run = RunDir(Path(config.run_dir))
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
    engine: list[str] = []  # what the model was built with: attention, kernels, compile
    model, params = build_model(spec, config.model_dir, on_gpu, engine)
    fsdp = uses_fsdp(spec)
    if fsdp:  # FSDP2 must shard before the optimizer sees the parameters
        model = shard_with_fsdp(model, spec, on_gpu)
    trainable = [p for p in model.parameters() if p.requires_grad]
    l2sp = _L2SP(trainable, t.l2sp) if t.l2sp else None  # the base weights, before any resume
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    train_set = load_prepared(Path(config.train_cache))
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
    loss_fn = token_loss_fn(accelerator.unwrap_model(model))  # Liger's fused loss where build_model installed it
    autocast_adapters = adapters_under_autocast(model, spec)
    tokenizer = load_tokenizer(config.model_dir, spec.model)
    pad_id = int(tokenizer.pad_token_id)
    # KL to the base (training.kl_to_base) and the live KL meter (forgetting.kl_every_steps):
    # both read the base while the weights are still the base's, before any resume.
    frozen_base = _frozen_base_copy(spec, config.model_dir, on_gpu, accelerator.device) \
        if t.kl_to_base and spec.method.kind in ("full", "freeze") else None
    unwrapped = accelerator.unwrap_model(model)
    kl_base = BaseModel(unwrapped, frozen_base) if t.kl_to_base else None
    kl_meter = None
    if spec.forgetting.kl_every_steps:
        kl_meter = KLMeter(unwrapped, _kl_probe(train_set, spec, pad_id), accelerator.device,
                           spec.method.kind in ("lora", "qlora"), shard_eval,
                           base=BaseModel(unwrapped, frozen_base) if frozen_base is not None else None)
        kl_meter.snapshot()
    # DPO's reference: the base with adapters disabled, or for full/freeze the base's
    # log-probabilities of every pair, taken now (a resumed run takes them again from the
    # base weights, before its checkpoint is loaded).
    dpo = t.dpo if t.objective == "dpo" else None
    eval_set = load_prepared(Path(config.eval_cache)) if config.eval_cache else None
    train_table = eval_table = None
    if dpo is not None and spec.method.kind in ("full", "freeze"):
        train_table = reference_table(unwrapped, train_set, pad_id, t.per_device_batch_size, accelerator.device,
                                      shard_eval)
        if eval_set is not None:
            eval_table = reference_table(unwrapped, eval_set, pad_id, t.per_device_batch_size, accelerator.device,
                                         shard_eval)
    reference = Reference.of(unwrapped, train_table) if dpo is not None else None

    def evaluate_eval() -> dict[str, float]:
        return evaluate_target(accelerator, model, eval_set, pad_id, t.per_device_batch_size, shard_eval, dpo,
                               eval_table)

    # ---- resume: the driver's choice, or after a restart the latest good checkpoint ----
    attempt, resume_from = _begin_attempt(config, run, rank)
    saved = load_training_state(resume_from, accelerator, model, optimizer, scheduler, spec) \
        if resume_from is not None else None
    state = _Counters.resumed(saved)
    position = DataPosition.from_dict(saved.position) if saved else DataPosition()
    if rank == 0:
        _record_attempt(run, config, attempt, world, resume_from, state.step)
    best: tuple[Best, ...] = ()
    if spec.checkpoint.best_metric:
        best += (Best(spec.checkpoint.best_metric, spec.checkpoint.best_mode or
                      ("max" if spec.checkpoint.best_metric == "eval_accuracy" else "min")),)
    if spec.forgetting.action == "rollback":  # the newest checkpoint that passed every gate stays
        best += (Best("gates_passed", "max"),)
    mirror = None
    if spec.checkpoint.storage and rank == 0:
        from orchestrator.checkpoint.remote import Mirror

        mirror = Mirror(spec.checkpoint.storage)
    writer = CheckpointWriter(run.checkpoints, rank, world, attempt["id"], config.spec_hash, spec.checkpoint.keep_last,
                              best, mirror)
    if rank == 0:
        writer.remove_stale_staging()

    log = MetricsLog(run.metrics, enabled=rank == 0, keep_through=state.step,
                     tensorboard_dir=run.tensorboard if spec.tracking.tensorboard else None,
                     mlflow=mlflow_run(spec, config.mlflow_tracking_uri, run.root.name)
                     if spec.tracking.mlflow and rank == 0 else None)
    if rank == 0:
        write_json(run.worker_status, {"phase": "baseline", "world_size": world, "engine": "; ".join(engine),
                                       "params": {"trainable": params.trainable, "total": params.total},
                                       "total_steps": total_steps, "step": state.step})
    watch = ForgettingWatch(
        spec, list(config.tasks), config.target,
        lambda tasks: evaluate_tasks(accelerator, model, tasks, tokenizer, pad_id, shard_eval), rank,
        Path(config.baseline_cache) if config.baseline_cache else None, config.baseline,
        saved.forgetting if saved else None, kl_meter)
    if resume_from is None:
        watch.baseline()
        if eval_set is not None:  # the base model's target-task metrics, for negative transfer
            state.eval_base = evaluate_eval()
    gate_trips: list = []

    def save(blocking: bool, metrics: dict[str, Any] | None = None) -> None:
        trainer_state = TrainerState(
            step=state.step, samples=state.samples, tokens=state.tokens, train_seconds=state.train_seconds,
            position=position.as_dict(), eval_base=state.eval_base, world_size=world,
            global_batch=plan.global_batch, spec=config.spec, spec_hash=config.spec_hash, job=config.job_token,
            data_fingerprint=config.data.train_fingerprint, forgetting=watch.state_dict())
        numbers = {k: v for k, v in (metrics or {}).items() if k in ("loss", "eval_loss", "eval_accuracy", "gates_passed")}
        save_training_state(writer, state.step, trainer_state, accelerator, model, optimizer, scheduler, spec,
                            numbers, blocking)

    # ---- train ---------------------------------------------------------------------
    model.train()
    started = time.perf_counter() - state.train_seconds
    preempted = False
    last_record: dict[str, Any] = {"loss": log.last_loss} if log.last_loss is not None else {}
    feed = BatchFeed(plan, position, rank, train_set, pad_id, pin=accelerator.device.type == "cuda")
    tallies = StepTallies(accelerator.device, state.tokens)
    while state.step < total_steps:
        position = plan.normalise(position)
        step_batches = feed.next()
        epoch, batches = step_batches.epoch, step_batches.batches
        global_units = tallies.units(step_batches.loss_units)
        loss_sum = torch.zeros((), device=accelerator.device)
        kl_step = torch.zeros((), device=accelerator.device)
        dpo_step = torch.zeros(len(DPO_STATS), device=accelerator.device)
        for k, batch in enumerate(batches):
            batch = {key: v.to(accelerator.device, non_blocking=True) for key, v in batch.items()}
            # DeepSpeed handles accumulation itself; FSDP2 reduces every micro-batch.
            sync = k == len(batches) - 1 or deepspeed or fsdp
            with (accelerator.no_sync(model) if not sync else nullcontext()), input_casts_skipped(autocast_adapters):
                if dpo is not None:  # token_loss: here the summed DPO loss of the micro-batch's pairs
                    objective, stats = dpo_sums(model, batch, reference, dpo.beta, dpo.loss)
                    token_loss, dpo_step = objective, dpo_step + stats
                elif kl_base is not None:
                    token_loss, kl = loss_and_kl_sums(model, batch, kl_base)
                    objective = token_loss + t.kl_to_base * kl
                    kl_step = kl_step + kl.detach()
                else:
                    objective = token_loss = _loss_sum(model, batch, loss_fn)
                # DDP and ZeRO average gradients over ranks, hence the world factor; DeepSpeed
                # also divides by its accumulation steps, hence that factor.
                scale = world * (t.grad_accum_steps if deepspeed else 1)
                accelerator.backward(objective * scale / global_units.clamp(min=1))
            loss_sum = loss_sum + token_loss.detach().float()
        if l2sp is not None:
            l2sp.add_to_gradients()
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        norm = None
        if t.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(trainable, t.max_grad_norm)  # DeepSpeed: clipped in its step
            if hasattr(norm, "full_tensor"):  # FSDP2: a sharded DTensor
                norm = norm.full_tensor()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.samples += plan.global_batch
        position = plan.advance(position)
        # The step's loss, tokens and whether the driver asked us to stop, summed over ranks on
        # the device; the host reads them at logging steps and checkpoints only.
        tallies.end_step(loss_sum, step_batches.tokens, rank == 0 and run.preempt.exists())
        stop = tallies.stop_requested()
        record: dict[str, Any] = {}
        logging_step = state.step % t.log_every_steps == 0 or state.step == total_steps
        if logging_step or stop or (spec.checkpoint.every_steps and state.step % spec.checkpoint.every_steps == 0):
            state.tokens = tallies.tokens()  # waits for the step to finish, so the time below is true
        elapsed = time.perf_counter() - started
        state.train_seconds = elapsed
        if logging_step:
            step_loss = tallies.step_loss_sum() / max(float(global_units), 1.0)
            record.update(step=state.step, epoch=epoch, loss=step_loss, lr=lr,
                          tokens=state.tokens, samples=state.samples, elapsed_s=round(elapsed, 3),
                          tokens_per_s=round(state.tokens / max(elapsed, 1e-9), 1))
            if norm is not None:
                record["grad_norm"] = float(norm)
            if l2sp is not None:
                record["l2sp_penalty"] = l2sp.penalty()
            if dpo is not None:  # the step's means over its pairs
                sums = dict(zip(DPO_STATS, sum_across_ranks(dpo_step.tolist(), accelerator.device)))
                pairs = max(float(global_units), 1.0)
                record.update({f"dpo/{k}": v / pairs for k, v in sums.items()})
                record["dpo/reward_margin"] = (sums["rewards_chosen"] - sums["rewards_rejected"]) / pairs
            if kl_base is not None:  # the step's mean KL to the base per label token
                record["kl_to_base"] = sum_across_ranks([float(kl_step)], accelerator.device)[0] / \
                    max(float(global_units), 1.0)
        if eval_set is not None and t.eval_every_steps and state.step % t.eval_every_steps == 0:
            record.update(step=state.step, **evaluate_eval())
        trips = []
        if watch.kl_due(state.step, total_steps):
            scalars, trips = watch.measure_kl(state.step)
            record.update(step=state.step, **scalars, gates_passed=float(not trips))
        if watch.due(state.step, total_steps):
            scalars, task_trips = watch.evaluate(state.step)
            trips = trips + task_trips
            record.update(step=state.step, **scalars, gates_passed=float(not trips))
        if trips:
            _gate_message(spec, trips, rank)
            if spec.forgetting.action != "warn":
                gate_trips = trips
        if record:
            log.write(record)
        last_record = record
        if stop:  # preemption: commit this step now, within the driver's grace period
            save(blocking=True, metrics=record)
            preempted = True
            break
        every = spec.checkpoint.every_steps
        if every and state.step % every == 0 and state.step < total_steps:
            save(blocking=False, metrics=record)
        if gate_trips:  # stop or rollback: training further would only forget more
            break

    feed.close()
    state.tokens = tallies.tokens()
    if preempted:
        writer.wait()
        if mirror is not None:
            mirror.close()
        if rank == 0:
            result = WorkerResult(world_size=world, steps=state.step, checkpoint=str(writer.committed[-1]),
                                  preempted=True)
            write_json(run.worker_result, result.to_json())
        log.close()
        accelerator.wait_for_everyone()
        return

    # ---- finish: evaluations, final checkpoint, gates, artifact ---------------------------
    final: dict[str, Any] = {"step": state.step}
    if eval_set is not None:
        final.update(evaluate_eval())
    save(blocking=True, metrics=last_record)
    mirror_errors = writer.mirror_errors + (mirror.wait() if mirror is not None else [])
    gate = _apply_gate(spec, gate_trips, watch, writer, accelerator, model, optimizer, scheduler) if gate_trips else None
    if gate is None or gate.get("kept_step") is not None:
        _save_artifact(run, spec, accelerator, model)
    if rank == 0:
        result = WorkerResult(
            world_size=world, steps=state.step, samples_seen=state.samples, tokens_seen=state.tokens,
            train_seconds=state.train_seconds, forgetting_evals=watch.evals, baseline_cached=watch.baseline_cached,
            final_loss=log.last_loss, final_eval=final, eval_base=state.eval_base,
            forgetting_history=watch.history, target_history=watch.target_history, kl_history=watch.kl_history,
            params={"trainable": params.trainable, "total": params.total}, engine="; ".join(engine),
            resumed_from=str(resume_from) if resume_from else None,
            checkpoint=str(writer.committed[-1]) if writer.committed else None,
            mirror_errors=mirror_errors, gate=gate)
        write_json(run.worker_result, result.to_json())
    if mirror is not None:
        mirror.close()
    log.close()
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------- pieces


def _loss_sum(model, batch: dict[str, torch.Tensor], loss_fn=token_loss_sum) -> torch.Tensor:
    if "label" in batch:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        return torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum")
    return loss_fn(model, batch)


def _frozen_base_copy(spec: JobSpec, model_dir: str, on_gpu: bool, device):
    """A frozen copy of the base for kl_to_base on full/freeze fine-tuning, in the compute
    dtype (bf16 under bf16 precision on a GPU: it is never trained)."""
    copy, _ = build_model(spec.model_copy(update={"method": spec.method.model_copy(update={"kind": "full"})}),
                          model_dir, on_gpu)
    copy.requires_grad_(False)
    copy.eval()
    if on_gpu and spec.training.precision in ("bf16", "bf16-pure"):
        copy = copy.to(torch.bfloat16)
    return copy.to(device)


def _kl_probe(train_set, spec: JobSpec, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """The KL meter's probe: forgetting.kl_probe_rows training rows drawn with the job's seed,
    collated in batches of per_device_batch_size."""
    from orchestrator.data.collate import collate

    k = min(spec.forgetting.kl_probe_rows, len(train_set))
    rows = sorted(random.Random(spec.training.seed).sample(range(len(train_set)), k))
    size = spec.training.per_device_batch_size
    return [collate([train_set[i] for i in rows[j:j + size]], pad_id) for j in range(0, k, size)]


def _seed_everything(seed: int) -> None:
    # Same seed on every rank: model init (and LoRA init) must match across replicas.
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def _gate_message(spec: JobSpec, trips, rank: int) -> None:
    if rank == 0:
        action = spec.forgetting.action
        print(f"forgetting gate tripped ({action}): " + "; ".join(t.message() for t in trips), flush=True)


def _apply_gate(spec: JobSpec, trips, watch: ForgettingWatch, writer: CheckpointWriter, accelerator, model,
                optimizer, scheduler) -> dict[str, Any]:
    """stop: keep nothing. rollback: load the newest checkpoint that passed every gate, so
    the artifact is that model; none passing keeps nothing."""
    from orchestrator.forgetting.gates import latest_passing_step

    gate: dict[str, Any] = {"action": spec.forgetting.action, "tripped": [t.as_dict() for t in trips],
                            "step": trips[0].step, "kept_step": None, "kept_checkpoint": None}
    if spec.forgetting.action == "rollback":
        # Rank 0 chooses and every rank loads its choice: a rank listing the dir on its own
        # could see another set of checkpoints than rank 0 (retention runs in rank 0's writer).
        choice: list[Any] = [None]
        if (dist.get_rank() if dist.is_initialized() else 0) == 0:
            by_step = {step_of(p): p for p in list_checkpoints(writer.checkpoints)}
            kept = latest_passing_step(watch.gates, watch.history, sorted(by_step), watch.kl_history, watch.max_kl)
            choice[0] = (kept, str(by_step[kept])) if kept is not None else None
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        if choice[0] is not None:
            kept, path = choice[0]
            load_training_state(verify_training_checkpoint(Path(path)).path, accelerator, model, optimizer,
                                scheduler, spec)
            gate.update(kept_step=kept, kept_checkpoint=path)
    return gate


class _L2SP:
    """L2-SP toward the base weights: adds strength x (w - w_base) to each trainable weight's
    (already averaged, replicated) gradient once per step, the gradient of
    strength/2 x ||w - w_base||^2."""

    def __init__(self, params: list[torch.Tensor], strength: float):
        self.params, self.strength = params, strength
        self.base = [p.detach().clone() for p in params]

    def add_to_gradients(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self.base):
                if p.grad is not None:
                    p.grad.add_(p.detach() - p0, alpha=self.strength)

    def penalty(self) -> float:
        with torch.no_grad():
            return float(0.5 * self.strength * sum(float(((p - p0) ** 2).sum()) for p, p0 in zip(self.params, self.base)))


def _begin_attempt(config: WorkerConfig, run: RunDir, rank: int) -> tuple[dict[str, Any], Path | None]:
    """Which start of the worker group this is, and what it resumes from. The first start
    resumes from the driver's choice; a restart after a failure from the latest good
    checkpoint. Rank 0 decides and broadcasts, so every rank loads the same one."""
    decision: list[Any] = [None]
    if rank == 0:
        earlier = [json.loads(line) for line in run.attempts.read_text().splitlines() if line.strip()] \
            if run.attempts.is_file() else []
        number = sum(1 for e in earlier if e.get("job") == config.job_token)
        resume = config.resume_from
        if number > 0:
            resume = _latest_of_this_job(run.checkpoints, config.job_token) or resume
        decision[0] = ({"id": f"{config.job_token}-{number}", "number": number}, resume)
    if dist.is_initialized():
        dist.broadcast_object_list(decision, src=0)
    attempt, resume = decision[0]
    # Where each rank runs, for operators (and the fault-injection tests).
    run.workers.mkdir(exist_ok=True)
    write_json(run.worker(rank), {"pid": os.getpid(), "host": socket.gethostname(),
                                  "node_id": _ray_node_id(), "attempt": attempt["number"]})
    return attempt, Path(resume) if resume else None


def _ray_node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (unit tests drive the loop directly)
        return None


def _latest_of_this_job(checkpoints: Path, job_token: str) -> str | None:
    """The newest good checkpoint this job itself wrote (not one left in the run dir by an
    earlier job, which `checkpoint.resume: never` chose not to continue)."""
    for path in reversed(list_checkpoints(checkpoints)):
        try:
            verify_training_checkpoint(path)
        except CheckpointError as err:
            print(f"{err}; trying an older one")
            continue
        if read_trainer_state(path).get("job") == job_token:
            return str(path)
    return None


def _record_attempt(run: RunDir, config: WorkerConfig, attempt: dict[str, Any], world: int,
                    resume_from: Path | None, step: int) -> None:
    entry = {"job": config.job_token, "attempt": attempt["number"], "started_at": time.time(), "world_size": world,
             "resumed_from": str(resume_from) if resume_from else None, "resumed_step": step if resume_from else None,
             "pid": os.getpid()}
    with open(run.attempts, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _save_artifact(run: RunDir, spec: JobSpec, accelerator, model) -> None:
    accelerator.wait_for_everyone()
    full = full_state_dict(accelerator, model, spec)
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(run.artifact(spec.method.kind)), state_dict=full, safe_serialization=True)
    accelerator.wait_for_everyone()


@dataclass
class _Counters:
    """The loop's running totals (a checkpoint's TrainerState holds them at each save)."""

    step: int = 0
    samples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    eval_base: dict[str, float] | None = None  # the base model's data.eval metrics

    @classmethod
    def resumed(cls, saved: "TrainerState | None") -> "_Counters":
        if saved is None:
            return cls()
        return cls(saved.step, saved.samples, saved.tokens, saved.train_seconds, saved.eval_base)
