"""Greedy decoding of a causal LM, scored by exact match on prompt/response rows."""

from __future__ import annotations

from typing import Any


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    # Encoded like training data (orchestrator.data.formats): no tokenizer-added specials,
    # special-looking text kept literal, then bos in front when the tokenizer has one.
    encoded = tokenizer(prompts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [list(ids) if bos is None else [bos, *ids] for ids in encoded]


def greedy_exact_match(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    max_new_tokens: int = 16,
    batch_size: int = 128,
) -> float:
    """Fraction of ``rows`` whose greedy continuation of ``bos + prompt`` equals ``response``.

    Both sides are compared after ``strip()``; decoding stops at eos. Works for any causal LM
    whose tokenizer has an eos token (eos doubles as pad when the tokenizer has none).
    """
    import torch

    if not rows:
        raise ValueError("greedy_exact_match needs at least one row; pass a non-empty eval set")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token before evaluating")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device

    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                prompts = prompt_ids(tokenizer, [row["prompt"] for row in batch])
                width = max(len(ids) for ids in prompts)
                # Left padding keeps every prompt's last token in the last column, so new
                # tokens line up across the batch.
                # An answer longer than the longest expected one (plus slack for a different
                # segmentation and eos) cannot match, so generation stops there.
                longest = max(len(tokenizer(str(row["response"]), add_special_tokens=False)["input_ids"])
                              for row in batch)
                new_tokens = min(max_new_tokens, longest + 3)
                input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
                attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=new_tokens,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )
                for row, generated in zip(batch, output[:, width:].tolist()):
                    if eos in generated:
                        generated = generated[: generated.index(eos)]
                    text = tokenizer.decode(generated, skip_special_tokens=True)
                    correct += int(text.strip() == str(row["response"]).strip())
    finally:
        if was_training:
            model.train()
    return correct / len(rows)
