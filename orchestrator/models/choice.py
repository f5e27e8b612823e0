"""Multiple choice by log-likelihood: which choice a causal LM finds the likeliest
continuation of the prompt, the way lm-evaluation-harness scores `acc` and `acc_norm`."""

from __future__ import annotations

from typing import Any, Sequence

from orchestrator.models.generate import prompt_ids

LOGITS_PER_FORWARD = 2**27  # logits one forward may hold (sequences x length x vocabulary)


def choice_ids(tokenizer: Any, prompt: str, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of `choice` after `prompt`, encoded like the exact-match
    prompts (bos in front, no other specials). As in lm-evaluation-harness, trailing
    whitespace of the prompt moves onto the choice, and the continuation is the tokens of
    prompt + choice past those of the prompt alone."""
    context = prompt.rstrip()
    continuation = prompt[len(context):] + choice
    context_ids, whole_ids = prompt_ids(tokenizer, [context, context + continuation])
    return context_ids, whole_ids[len(context_ids):]


def choice_log_likelihoods(model: Any, tokenizer: Any, rows: Sequence[tuple[str, Sequence[str], int]],
                           batch_size: int = 64) -> list[list[float]]:
    """Each row's summed log-probability of each of its choices given its prompt. One forward
    per batch of (prompt, choice) sequences, padded on the right; longest first, and as few
    per forward as keep the logits under LOGITS_PER_FORWARD."""
    import torch

    pairs = [choice_ids(tokenizer, prompt, choice) for prompt, choices, _ in rows for choice in choices]
    order = sorted(range(len(pairs)), key=lambda j: -len(pairs[j][0]) - len(pairs[j][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    scores = [0.0] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            start = 0
            while start < len(order):
                width = len(pairs[order[start]][0]) + len(pairs[order[start]][1])
                count = max(1, min(batch_size, LOGITS_PER_FORWARD // (width * len(tokenizer))))
                batch = order[start:start + count]
                start += count
                seqs = [pairs[j][0] + pairs[j][1] for j in batch]
                input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
                attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits
                for row, j in enumerate(batch):
                    begin, end = len(pairs[j][0]), len(seqs[row])
                    # The token at position t is predicted by the logits at t - 1.
                    log_probs = logits[row, begin - 1:end - 1].float().log_softmax(-1)
                    scores[j] = float(log_probs.gather(-1, input_ids[row, begin:end, None]).sum())
    finally:
        model.train(was_training)
    out, at = [], 0
    for _, choices, _ in rows:
        out.append(scores[at:at + len(choices)])
        at += len(choices)
    return out


def choice_correct(model: Any, tokenizer: Any, rows: Sequence[tuple[str, Sequence[str], int]],
                   per_byte: bool = False) -> int:
    """How many rows' likeliest choice is their answer: by summed log-probability, or
    (`per_byte`, lm-eval's acc_norm) by log-probability per UTF-8 byte of the choice."""
    correct = 0
    for (_, choices, answer), scores in zip(rows, choice_log_likelihoods(model, tokenizer, rows)):
        if per_byte:
            scores = [s / len(c.encode("utf-8")) for s, c in zip(scores, choices)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == answer)
    return correct
