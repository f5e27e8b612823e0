"""Direct Preference Optimization: log-probabilities of completions, the loss, the rewards.

A preference batch (data format `preference`, see data/collate.py) holds 2B rows: the B
chosen completions, then the B rejected ones in the same order, each with labels on the
completion only. One forward of the policy gives every row's summed completion
log-probability; the reference gives the same from the base model. For a pair,

    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    sigmoid (DPO):  loss = -log sigmoid(beta x margin)
    ipo:            loss = (margin - 1 / (2 beta))^2, on per-token mean log-probabilities

and the implicit rewards are beta x (policy - reference) of each completion's summed
log-probabilities (for ipo too). The reference
is the base: the policy with its adapters disabled (lora/qlora; nothing more in memory), or
for full/freeze a table of the base's log-probabilities of every pair, computed once before
training (`reference_table`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.models.divergence import BaseModel

STATS = ("rewards_chosen", "rewards_rejected", "reward_accuracy", "logps_chosen", "logps_rejected")
"""The per-pair sums a step adds up (dpo_sums), in this order; their means are logged as dpo/<name>."""


def completion_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed log-probability of its label tokens (float32) and how many there are."""
    shifted = labels[:, 1:]
    token = -torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=IGNORE,
        reduction="none").view(shifted.shape)
    return token.sum(-1), (shifted != IGNORE).sum(-1)


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards (detached). For ipo the log-probs
    given are per-token means."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    margin = chosen - rejected
    if loss == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * margin)
    elif loss == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}")
    return losses, beta * chosen.detach(), beta * rejected.detach()


@dataclass
class Reference:
    """The reference's summed completion log-probabilities of a batch: the base model's
    forward (adapters disabled), or a precomputed table indexed by the batch's dataset rows."""

    base: BaseModel | None = None
    table: torch.Tensor | None = None  # (rows, 2): chosen, rejected

    @classmethod
    def of(cls, model, table: torch.Tensor | None = None) -> "Reference":
        """The reference for `model`: its table when given, else the model with adapters
        disabled; a model without adapters and without a table is its own reference."""
        if table is not None:
            return cls(table=table)
        if hasattr(model, "disable_adapter"):
            return cls(base=BaseModel(model))
        return cls(base=BaseModel(model, frozen_copy=model))

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.table is not None:
            rows = self.table[batch["rows"].cpu()].to(batch["input_ids"].device, torch.float32)
            return torch.cat([rows[:, 0], rows[:, 1]])
        return completion_logps(self.base.logits(inputs), batch["labels"])[0]


def dpo_sums(model, batch: dict[str, torch.Tensor], reference: Reference, beta: float, loss: str = "sigmoid"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the policy over a preference batch: the summed loss of its pairs, and
    the sums of STATS over them (detached)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    sums, counts = completion_logps(model(**inputs).logits, batch["labels"])
    ref = reference.logps(batch, inputs)
    pairs = batch["input_ids"].shape[0] // 2  # not int(batch["pairs"]): on a GPU that would wait for the device
    policy, base = sums, ref
    if loss == "ipo":
        policy, base = sums / counts.clamp(min=1), ref / counts.clamp(min=1)
    losses, _, _ = dpo_losses(policy[:pairs], policy[pairs:], base[:pairs], base[pairs:], beta, loss)
    # The rewards are always the summed log-ratios (as TRL reports them, ipo included).
    _, chosen, rejected = dpo_losses(sums[:pairs], sums[pairs:], ref[:pairs], ref[pairs:], beta)
    stats = torch.stack([chosen.sum(), rejected.sum(), (chosen > rejected).float().sum(),
                         sums[:pairs].detach().sum(), sums[pairs:].detach().sum()])
    return losses.sum(), stats


@torch.no_grad()
def reference_table(model, dataset, pad_id: int, batch_size: int, device, shard: bool) -> torch.Tensor:
    """The model's summed completion log-probabilities of every pair of `dataset`, (rows, 2)
    float64 on the host: run before training, while the weights are the base's. With `shard`
    each rank computes every world-th batch and the table is summed over ranks."""
    import torch.distributed as dist

    from orchestrator.data.collate import collate
    from orchestrator.models.divergence import evaluating
    from orchestrator.ranks import rank_and_world

    rank, world = rank_and_world(shard)
    table = torch.zeros(len(dataset), 2, dtype=torch.float64, device=device)
    starts = list(range(0, len(dataset), batch_size))
    with evaluating(model):
        for start in starts[rank::world]:
            rows = list(range(start, min(start + batch_size, len(dataset))))
            batch = {k: v.to(device) for k, v in collate([dataset[i] for i in rows], pad_id).items()}
            sums = completion_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                    batch["labels"])[0].double()
            table[rows, 0], table[rows, 1] = sums[:len(rows)], sums[len(rows):]
    if shard and dist.is_initialized() and world > 1:
        dist.all_reduce(table)
    return table.cpu()
