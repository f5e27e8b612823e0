"""Packing: concatenate examples into rows of exactly max_seq_len tokens.

Examples are laid end to end in order and the stream is cut every max_seq_len tokens, so an
example may continue on the next row. Rules that keep packed training equivalent in loss terms:

- The first label of every example is -100: the last token of one example is never trained
  to predict the first token of the next.
- ``position_ids`` restart at 0 where each example starts, and at the start of every row (the
  carried-over part of an example cannot see its beginning anyway). Transformers uses these
  restarts to keep attention inside each example when no attention_mask is passed.
- The last row keeps whatever is left and is shorter than max_seq_len; `collate` pads it. It
  is kept rather than dropped so that every token of the data is trained on.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from orchestrator.data.formats import IGNORE_INDEX


def pack_examples(
    examples: Iterable[tuple[list[int], list[int]]], max_seq_len: int
) -> Iterator[dict[str, list[int]]]:
    """Yield packed rows ``{input_ids, labels, position_ids}`` from ``(input_ids, labels)`` pairs."""
    row_ids: list[int] = []
    row_labels: list[int] = []
    row_positions: list[int] = []
    for ids, labels in examples:
        if not ids:
            continue
        labels = [IGNORE_INDEX, *labels[1:]]
        start = 0
        while start < len(ids):
            take = min(max_seq_len - len(row_ids), len(ids) - start)
            row_ids += ids[start : start + take]
            row_labels += labels[start : start + take]
            row_positions += range(take)
            start += take
            if len(row_ids) == max_seq_len:
                yield {"input_ids": row_ids, "labels": row_labels, "position_ids": row_positions}
                row_ids, row_labels, row_positions = [], [], []
    if row_ids:
        yield {"input_ids": row_ids, "labels": row_labels, "position_ids": row_positions}
