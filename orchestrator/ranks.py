"""Where this process stands among the training ranks, and sums over all of them."""

from __future__ import annotations


def rank_and_world(shard: bool = True) -> tuple[int, int]:
    """This rank and the world size; (0, 1) outside a process group or when not `shard`ing
    (every rank then does the whole piece of work itself)."""
    import torch.distributed as dist

    if not shard or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def sum_across_ranks(values: list[float], device) -> list[float]:
    """Element-wise sum over all ranks (float64); the values themselves without a group."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
