"""Evaluating a model on prepared tasks and on data.eval, sharded across ranks when asked.

Inside training every rank calls these at the same step with `shard=True`: each takes every
world-th row and the sums are all-reduced, so every rank returns the same numbers. Outside
training (`ftctl eval`, promotion, merge reports) there is one process and `shard=False`.
"""

from __future__ import annotations

import math
import torch

from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.data.pipeline import collate, load_prepared
from orchestrator.forgetting.tasks import CHOICE_METRICS, PreparedTask
from orchestrator.models.choice import choice_correct
from orchestrator.models.generate import greedy_exact_match
from orchestrator.models.loss import token_loss_sum
from orchestrator.models.sharding import gathered_params
from orchestrator.ranks import rank_and_world, sum_across_ranks

LOSS_BATCH = 32  # rows per forward pass for loss / perplexity tasks
PREFERENCE_COLUMN = "rejected_input_ids"  # a prepared dataset of preference pairs has it


def evaluate_tasks(accelerator, model, tasks: list[PreparedTask], tokenizer, pad_id: int,
                   shard: bool = True) -> dict[str, float]:
    """Each task's metric on the current model (adapters as they are set)."""
    rank, world = rank_and_world(shard)
    unwrapped = accelerator.unwrap_model(model)
    out: dict[str, float] = {}
    for task in tasks:
        if task.lm_eval is not None:  # every rank runs lm-eval's whole evaluation (see forgetting/lm_eval.py)
            from orchestrator.forgetting.lm_eval import evaluate as lm_evaluate

            with gathered_params(unwrapped):
                out[task.name] = lm_evaluate(unwrapped, tokenizer, task.lm_eval, task.metric, accelerator.device)
        elif task.metric in ("exact_match", *CHOICE_METRICS):
            with gathered_params(unwrapped):
                correct, count = _answered(unwrapped, tokenizer, task, rank, world)
            total_correct, total = (sum_across_ranks([correct, count], accelerator.device)
                                    if shard else (correct, count))
            out[task.name] = total_correct / max(total, 1.0)
        else:
            loss = evaluate_loss(accelerator, model, load_prepared(task.cache_dir), pad_id, LOSS_BATCH, shard)
            out[task.name] = loss if task.metric == "loss" else math.exp(min(loss, 50.0))
    return out


def _answered(model, tokenizer, task: PreparedTask, rank: int, world: int) -> tuple[float, float]:
    """This rank's share of the task's rows (every world-th): how many it answers right, of how many."""
    if task.metric == "exact_match":
        rows = [{"prompt": p, "response": r} for p, r in (task.rows or ())[rank::world]]
        return (greedy_exact_match(model, tokenizer, rows) * len(rows) if rows else 0.0), float(len(rows))
    choices = (task.choices or ())[rank::world]
    return float(choice_correct(model, tokenizer, choices, per_byte=task.metric == "choice_norm")), float(len(choices))


def evaluate_loss(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool = True) -> float:
    """Mean token loss over `dataset`."""
    unwrapped = accelerator.unwrap_model(model)
    loss_sum, tokens = 0.0, 0
    for batch in _eval_batches(accelerator, unwrapped, dataset, pad_id, batch_size, shard):
        loss_sum += float(token_loss_sum(unwrapped, batch))
        tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
    if shard:
        loss_sum, tokens = sum_across_ranks([loss_sum, float(tokens)], accelerator.device)
    return loss_sum / max(tokens, 1.0)


def evaluate_target(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool = True,
                    dpo=None, reference_table=None) -> dict[str, float]:
    """Metrics on data.eval: eval_loss, plus eval_accuracy for a classification head, or for
    preference pairs the DPO loss (`dpo`: its settings; default beta 0.1, sigmoid) with
    eval_reward_accuracy and eval_reward_margin (`reference_table`: the base's
    log-probabilities of the pairs, for a model without adapters)."""
    if PREFERENCE_COLUMN in dataset.column_names:
        return evaluate_preference(accelerator, model, dataset, pad_id, batch_size, shard, dpo, reference_table)
    if "label" not in dataset.column_names:
        return {"eval_loss": evaluate_loss(accelerator, model, dataset, pad_id, batch_size, shard)}
    unwrapped = accelerator.unwrap_model(model)
    loss_sum, correct, count = 0.0, 0, 0
    for batch in _eval_batches(accelerator, unwrapped, dataset, pad_id, batch_size, shard):
        logits = unwrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["label"]).sum())
        count += int(batch["label"].numel())
    totals = [loss_sum, float(correct), float(count)]
    if shard:
        totals = sum_across_ranks(totals, accelerator.device)
    n = max(totals[2], 1.0)
    return {"eval_loss": totals[0] / n, "eval_accuracy": totals[1] / n}


def evaluate_preference(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool = True,
                        dpo=None, reference_table=None) -> dict[str, float]:
    """The DPO loss of the pairs, the share whose chosen completion gets the larger reward, and
    the mean reward margin, against the base (the model with its adapters disabled, or
    `reference_table`; a bare model is its own reference)."""
    from orchestrator.models.preference import Reference, dpo_sums

    unwrapped = accelerator.unwrap_model(model)
    reference = Reference.of(unwrapped, reference_table)
    beta, loss = (dpo.beta, dpo.loss) if dpo is not None else (0.1, "sigmoid")
    totals = [0.0, 0.0, 0.0, 0.0]  # loss, correct, margin, pairs
    for batch in _eval_batches(accelerator, unwrapped, dataset, pad_id, batch_size, shard):
        loss_sum, stats = dpo_sums(unwrapped, batch, reference, beta, loss)
        totals = [totals[0] + float(loss_sum), totals[1] + float(stats[2]), totals[2] + float(stats[0] - stats[1]),
                  totals[3] + float(batch["pairs"])]
    if shard:
        totals = sum_across_ranks(totals, accelerator.device)
    n = max(totals[3], 1.0)
    return {"eval_loss": totals[0] / n, "eval_reward_accuracy": totals[1] / n, "eval_reward_margin": totals[2] / n}


def _eval_batches(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool):
    """This rank's evaluation batches, on device, with the model in eval mode and no grad."""
    rank, world = rank_and_world(shard)
    indices = list(range(rank, len(dataset), world))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(indices), batch_size):
                rows = indices[i:i + batch_size]
                batch = collate([dataset[j] for j in rows], pad_id)
                if "pairs" in batch:  # preference pairs: their rows index a reference table
                    batch["rows"] = torch.tensor(rows)
                yield {k: v.to(accelerator.device) for k, v in batch.items()}
    finally:
        model.train(was_training)

