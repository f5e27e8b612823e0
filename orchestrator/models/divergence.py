"""KL(tuned || base) on response tokens: the live forgetting meter and the kl_to_base loss.

Both compare the next-token distribution of the model being trained with the base model's
at the positions that predict a label token (the response of an instruction row, every
token of a plain-text row). The base is the same model with its adapters disabled
(lora/qlora), a frozen copy of the base (full/freeze fine-tuning with kl_to_base), or, for
the meter on full/freeze, the base's log-probabilities of the probe taken before training.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.models.loss import packed_or_padded_inputs


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """(batch, length - 1) bool: the positions whose next token is a label token."""
    return labels[:, 1:] != IGNORE


def response_log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, vocab) float32 log-probabilities at the masked positions of (batch, length, vocab)
    logits; only those rows are ever made float32."""
    return torch.log_softmax(logits[:, :-1][mask].float(), dim=-1)


def kl_sum(tuned_log_probs: torch.Tensor, base_log_probs: torch.Tensor) -> torch.Tensor:
    """Sum over rows of KL(tuned || base) = sum_v p_tuned(v) (log p_tuned(v) - log p_base(v))."""
    base = base_log_probs.to(tuned_log_probs.device, torch.float32)
    return (tuned_log_probs.exp() * (tuned_log_probs - base)).sum()


class BaseModel:
    """The base model's logits for a batch, without gradients: the trained model with its
    adapters disabled, or a frozen copy of the base loaded beside it."""

    def __init__(self, model, frozen_copy=None):
        self.model, self.frozen = model, frozen_copy
        if frozen_copy is None and not hasattr(model, "disable_adapter"):
            raise ValueError("the base of a model without adapters needs a frozen copy")

    @torch.no_grad()
    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen(**inputs).logits
        with self.model.disable_adapter(), evaluating(self.model):  # the base as it is, no dropout
            return self.model(**inputs).logits


def loss_and_kl_sums(model, batch: dict[str, torch.Tensor], base: BaseModel) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the trained model: the summed next-token loss over label tokens (as
    token_loss_sum) and the summed KL(tuned || base) over the same tokens."""
    inputs = packed_or_padded_inputs(model, batch)
    logits = model(**inputs).logits
    labels = batch["labels"]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
        reduction="sum")
    mask = response_mask(labels)
    base_log_probs = response_log_probs(base.logits(inputs), mask)
    return loss, kl_sum(response_log_probs(logits, mask), base_log_probs)


@contextmanager
def evaluating(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class KLMeter:
    """Mean KL(tuned || base) per response token on a fixed probe of training rows.

    `batches`: the probe, collated, on the host. With `has_adapters` the base is the model with
    its adapters disabled, measured afresh each time; otherwise `snapshot()` must run while the
    weights are still the base's (before training or resuming), and keeps the base's
    log-probabilities of the probe on the host. With `shard` each rank measures every
    world-th batch and the sums are added over ranks."""

    def __init__(self, model, batches: list[dict[str, torch.Tensor]], device, has_adapters: bool, shard: bool,
                 base: BaseModel | None = None):
        self.model, self.batches, self.device, self.shard = model, batches, device, shard
        self.base = base if base is not None else (BaseModel(model) if has_adapters else None)
        self.snapshots: list[torch.Tensor] | None = None

    def _mine(self) -> list[int]:
        from orchestrator.ranks import rank_and_world

        rank, world = rank_and_world(self.shard)
        return list(range(rank, len(self.batches), world))

    def _inputs(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in self.batches[i].items()}
        return packed_or_padded_inputs(self.model, batch), response_mask(batch["labels"])

    @torch.no_grad()
    def snapshot(self, keep: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.cpu()) -> None:
        """The base's log-probabilities of this rank's probe batches (full/freeze)."""
        if self.base is not None:
            return
        out = []
        with evaluating(self.model):
            for i in self._mine():
                inputs, mask = self._inputs(i)
                out.append(keep(response_log_probs(self.model(**inputs).logits, mask)))
        self.snapshots = out

    @torch.no_grad()
    def measure(self) -> float:
        from orchestrator.ranks import sum_across_ranks

        if self.base is None and self.snapshots is None:
            raise RuntimeError("the KL meter of a model without adapters needs snapshot() before training")
        total, tokens = 0.0, 0.0
        with evaluating(self.model):
            for k, i in enumerate(self._mine()):
                inputs, mask = self._inputs(i)
                tuned = response_log_probs(self.model(**inputs).logits, mask)
                base = self.snapshots[k] if self.base is None else response_log_probs(self.base.logits(inputs), mask)
                total += float(kl_sum(tuned, base))
                tokens += float(mask.sum())
        if self.shard:
            total, tokens = sum_across_ranks([total, tokens], self.device)
        return total / max(tokens, 1.0)
