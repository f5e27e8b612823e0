"""Deterministic global batch order, sharded across ranks and resumable by position.

The order of examples depends only on the seed and the epoch, never on the worker
count: global step s of an epoch takes examples perm[s*G:(s+1)*G] (G = global batch),
micro-batch k of that step takes the k-th slice of world*b examples, and rank r takes
every world-th one of those. So 2 workers x batch b see, together, exactly the examples
1 worker x batch 2b sees, and each rank's share is disjoint from the others'.

The data position saved in a checkpoint is (epoch, examples of that epoch's order already
consumed). Because the order does not depend on the worker count, a run resumed with a
different number of workers continues from the same example: with the same global batch
(e.g. 2 workers x b -> 1 worker x b x 2 accumulation) every later step sees exactly the
examples it would have seen; with a different global batch the steps are cut differently
from that example on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    per_device_batch_size: int
    grad_accum_steps: int
    world_size: int
    seed: int
    shuffle: bool = True

    @property
    def global_batch(self) -> int:
        return self.per_device_batch_size * self.grad_accum_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        # The last partial global batch is dropped so every rank runs the same steps.
        return self.num_examples // self.global_batch

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def micro_batches(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[int]]:
        """Example indices of each micro-batch this rank runs for one optimizer step."""
        return self.micro_batches_at(DataPosition(epoch, step_in_epoch * self.global_batch), rank)

    def micro_batches_at(self, position: "DataPosition", rank: int) -> list[list[int]]:
        """Micro-batches of the step that starts at `position` (see `normalise`)."""
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_examples} examples cannot fill one global batch of {self.global_batch} "
                             f"(workers x per_device_batch_size x grad_accum_steps); lower the batch or add data")
        position = self.normalise(position)
        order = self.epoch_order(position.epoch)
        start = position.offset
        span = self.per_device_batch_size * self.world_size
        out = []
        for k in range(self.grad_accum_steps):
            chunk = order[start + k * span: start + (k + 1) * span]
            out.append(chunk[rank::self.world_size])
        return out

    def position(self, global_step: int) -> tuple[int, int]:
        """(epoch, step within epoch) of the optimizer step with this 0-based index."""
        return divmod(global_step, self.steps_per_epoch)

    def normalise(self, position: "DataPosition") -> "DataPosition":
        """A position with room for one more global batch: one too close to the end of its
        epoch moves to the start of the next (the partial last batch is dropped)."""
        if position.offset + self.global_batch > self.num_examples:
            return DataPosition(position.epoch + 1, 0)
        return position

    def advance(self, position: "DataPosition") -> "DataPosition":
        """The position after the step that starts at `position`."""
        position = self.normalise(position)
        return self.normalise(DataPosition(position.epoch, position.offset + self.global_batch))


@dataclass(frozen=True)
class DataPosition:
    """Where the next optimizer step starts: epoch, and examples of its order consumed."""

    epoch: int = 0
    offset: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict) -> "DataPosition":
        return cls(int(data["epoch"]), int(data["offset"]))
