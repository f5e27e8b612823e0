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
    tensor. Preference rows (with ``rejected_input_ids``) become one batch of 2B rows: the
    chosen sides in rows 0..B-1, the rejected sides in rows B..2B-1 in the same order (row i
    and row B+i are one pair), all padded to one width, with ``pairs``, a 0-dim tensor, = B.
    For packed rows a caller that wants attention kept inside each example calls the
    model with ``position_ids`` and without ``attention_mask``: transformers then derives a
    per-example mask from the position restarts (with the mask, examples in a row attend to
    each other, as in plain packing).
    """
    import torch

    if not examples:
        raise ValueError("collate needs at least one example; check the batch size and dataset")
    if "rejected_input_ids" in examples[0]:
        sides = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples] + [
            {"input_ids": e["rejected_input_ids"], "labels": e["rejected_labels"]} for e in examples]
        return {**collate(sides, pad_id), "pairs": torch.tensor(len(examples), dtype=torch.long)}
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
