"""Batching: right-pad prepared examples into tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.data.formats import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad `examples` (rows of a prepared dataset) into a batch of int64 tensors.

    ``input_ids`` are right-padded with `pad_id`, ``labels`` with -100, and ``attention_mask``
    marks real tokens. ``position_ids`` (packed rows) are padded with a fresh 0, 1, 2, ... run,
    so padding reads as one more separate sequence; ``label`` (classification) becomes a 1-D
    tensor. For packed rows a caller that wants attention kept inside each example calls the
    model with ``position_ids`` and without ``attention_mask``: transformers then derives a
    per-example mask from the position restarts (with the mask, examples in a row attend to
    each other, as in plain packing).
    """
    import torch

    if not examples:
        raise ValueError("collate needs at least one example; check the batch size and dataset")
    width = max(len(example["input_ids"]) for example in examples)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor(
            [list(e[key]) + [fill] * (width - len(e[key])) for e in examples], dtype=torch.long)

    batch = {
        "input_ids": padded("input_ids", pad_id),
        "attention_mask": torch.tensor(
            [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples],
            dtype=torch.long),
    }
    first = examples[0]
    if "labels" in first:
        batch["labels"] = padded("labels", IGNORE_INDEX)
    if "position_ids" in first:
        batch["position_ids"] = torch.tensor(
            [list(e["position_ids"]) + list(range(width - len(e["position_ids"]))) for e in examples],
            dtype=torch.long)
    if "label" in first:
        batch["label"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    return batch
