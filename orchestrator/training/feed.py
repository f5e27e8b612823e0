"""Batches made ahead of the step that trains on them, on a background thread.

The step itself then only copies ready tensors to the device: collation (Python lists to
int64 tensors, padding) and, on a GPU, pinning the host memory so that the copy is
asynchronous, happen while the previous step computes. The feed walks the data in the
same order the loop would (BatchPlan from a DataPosition), so resuming is unchanged.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.data.collate import collate
from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.data.sampling import BatchPlan, DataPosition


@dataclass
class StepBatches:
    """One optimizer step's micro-batches for this rank, on the host."""

    epoch: int
    batches: list[dict[str, torch.Tensor]]
    loss_units: int
    """What this rank's loss is averaged over: label tokens (or examples, for a head; pairs,
    for preference data)."""
    tokens: int
    """Tokens this rank reads (padding left out)."""


class BatchFeed:
    """Iterate StepBatches from `position` on, `ahead` steps in advance."""

    def __init__(self, plan: BatchPlan, position: DataPosition, rank: int, train_set, pad_id: int,
                 pin: bool, ahead: int = 2):
        self.plan, self.rank, self.train_set, self.pad_id, self.pin = plan, rank, train_set, pad_id, pin
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(position,), name="ftctl-batches", daemon=True)
        self._thread.start()

    def next(self) -> StepBatches:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def _fill(self, position: DataPosition) -> None:
        try:
            while not self._stop.is_set():
                position = self.plan.normalise(position)
                item = self._make(position)
                position = self.plan.advance(position)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the loop, which raises it
            self._queue.put(err)

    def _make(self, position: DataPosition) -> StepBatches:
        batches = []
        for idx in self.plan.micro_batches_at(position, self.rank):
            batch = collate([self.train_set[i] for i in idx], self.pad_id)
            if "pairs" in batch:  # preference pairs: their rows index the reference table (full/freeze DPO)
                batch["rows"] = torch.tensor(idx)
            batches.append(batch)
        units = sum(loss_units(b) for b in batches)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        if self.pin:
            batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
        return StepBatches(position.epoch, batches, units, tokens)


def loss_units(batch: dict[str, Any]) -> int:
    """What the loss is averaged over: label tokens (language modelling), examples (head) or
    pairs (preference: a batch of 2B rows holds B pairs)."""
    if "pairs" in batch:
        return int(batch["pairs"])
    if "label" in batch:
        return int(batch["label"].numel())
    return int((batch["labels"][:, 1:] != IGNORE).sum())
