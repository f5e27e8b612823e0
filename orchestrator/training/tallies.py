"""A step's loss, token counts and stop request, summed over ranks without waiting for the GPU.

Reading a number off the GPU (`float(t)`, `.item()`, `.tolist()`) blocks the host until every
queued kernel has run, so the next step cannot be queued behind the running one. The step
therefore keeps its sums in device tensors: two small all-reduces per step (the label-token
count before the backward pass, the step's sums after it) add them over ranks, queued on the
device like any kernel, and the host reads them only when it needs a value:
at a logging step, a checkpoint, or the end. The driver's stop request is the one value
looked at every step; on a GPU it is copied back without blocking and read one step late, at
the end of the next step: the host then waits only for the previous step to finish, while the
device already runs the next one. Every rank reads the same reduced value at the same step,
so they all stop together. On CPU the device is the host and every read is immediate.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class StepTallies:
    def __init__(self, device: torch.device, tokens_before: int):
        self.device = device
        self._tokens_before = tokens_before
        self._tokens = torch.zeros((), dtype=torch.float64, device=device)
        self._step = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, stop asked
        self._on_gpu = device.type == "cuda"
        self._stop_copies: list[tuple[torch.Tensor, torch.cuda.Event]] = []  # GPU: the last two steps'

    def units(self, local: int) -> torch.Tensor:
        """The step's loss units (label tokens) summed over ranks, as a device scalar to divide
        the loss by."""
        # torch.full launches a fill kernel; torch.tensor(x, device=cuda) would copy from pageable
        # host memory, which waits for the device's queue
        total = torch.full((), float(local), dtype=torch.float32, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        return total

    def end_step(self, loss_sum: torch.Tensor, tokens: int, stop_asked: bool) -> None:
        """Sum this step's loss (a device tensor), tokens read and stop request over ranks."""
        step = torch.stack([loss_sum.detach().double(),
                            torch.full((), float(tokens), dtype=torch.float64, device=self.device),
                            torch.full((), float(stop_asked), dtype=torch.float64, device=self.device)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(step)
        self._step = step
        self._tokens += step[1]
        if self._on_gpu:
            host = torch.empty((), dtype=torch.float64).pin_memory()
            host.copy_(step[2], non_blocking=True)
            landed = torch.cuda.Event()
            landed.record()
            self._stop_copies = [*self._stop_copies[-1:], (host, landed)]

    def stop_requested(self) -> bool:
        """Whether some rank asked to stop: as of this step on CPU, as of the step before on a GPU."""
        if not self._on_gpu:
            return bool(self._step[2])
        if len(self._stop_copies) < 2:
            return False
        host, landed = self._stop_copies[0]
        landed.synchronize()
        return bool(host)

    def step_loss_sum(self) -> float:
        """This step's loss summed over ranks (blocks until the step has run)."""
        return float(self._step[0])

    def tokens(self) -> int:
        """Tokens read since the run began, resumed attempts included (blocks)."""
        return self._tokens_before + int(self._tokens)
