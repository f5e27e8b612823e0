"""Demo datasets for the tiny base model: a target task to fine-tune on, held-out source sets.

Pure Python (no torch), deterministic: the same call always writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.builtin import tasks
from orchestrator.builtin.recipe import RECIPE, heldout_rows, pretraining_rows

# Distinct from the build's own seeds; held-out source rows also exclude its training pool.
TRAIN_SEED = 2_000
EVAL_SEED = 2_001
SOURCE_EVAL_SEED = 2_002


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_demo_data(out_dir: Path, n_train: int = 2000, n_eval: int = 200) -> dict[str, Path]:
    """Write the demo JSONL files into ``out_dir`` and return ``{name: path}``.

    - ``target_train`` / ``target_eval``: the target task as ``{"prompt", "response"}``
    - ``increment_train`` / ``increment_eval``: a second target task (a second adapter's)
    - ``source_<task>``: held-out rows of each source task the base model never trained on
    - ``replay_<task>``: rows of each source task from the base model's own training pool
    - ``mc_<task>``: the held-out rows as ``{"prompt", "choices", "answer"}``, three wrong choices each
    - ``classify_train`` / ``classify_eval``: ``{"text", "label"}`` for the ``head`` method
    - ``text_train``: the target training rows as plain ``{"text"}`` (prompt + response)
    - ``alpaca_train``: the target training rows as ``{"instruction", "input": "", "output"}``
    - ``sharegpt_train``: the target training rows as ShareGPT conversations, one human and
      one gpt turn each
    - ``preference_train`` / ``preference_eval``: the target rows as ``{"prompt", "chosen",
      "rejected"}``: chosen is the response, rejected the word shifted by two (`wrong_shift`)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    target_train = tasks.generate(tasks.TARGET_TASK, n_train, seed=TRAIN_SEED)
    train_prompts = {row["prompt"] for row in target_train}
    target_eval = tasks.generate(tasks.TARGET_TASK, n_eval, seed=EVAL_SEED, exclude=train_prompts)
    written["target_train"] = _write_jsonl(out_dir / "target_train.jsonl", target_train)
    written["target_eval"] = _write_jsonl(out_dir / "target_eval.jsonl", target_eval)

    second_train = tasks.generate(tasks.SECOND_TARGET_TASK, n_train, seed=TRAIN_SEED)
    second_eval = tasks.generate(tasks.SECOND_TARGET_TASK, n_eval, seed=EVAL_SEED,
                                 exclude={row["prompt"] for row in second_train})
    written["increment_train"] = _write_jsonl(out_dir / "increment_train.jsonl", second_train)
    written["increment_eval"] = _write_jsonl(out_dir / "increment_eval.jsonl", second_eval)

    for task in tasks.SOURCE_TASKS:
        rows = heldout_rows(task, n_eval, seed=SOURCE_EVAL_SEED)
        written[f"source_{task}"] = _write_jsonl(out_dir / f"source_{task}.jsonl", rows)
        written[f"mc_{task}"] = _write_jsonl(out_dir / f"mc_{task}.jsonl",
                                             tasks.multiple_choice(task, rows, seed=SOURCE_EVAL_SEED))
        # Replay data is what the base model was trained on: disjoint from the held-out rows.
        written[f"replay_{task}"] = _write_jsonl(out_dir / f"replay_{task}.jsonl",
                                                 pretraining_rows(task, RECIPE)[:n_train // 4])

    classify_train = tasks.generate_classification(n_train, seed=TRAIN_SEED)
    classify_eval = tasks.generate_classification(
        n_eval, seed=EVAL_SEED, exclude={row["text"] for row in classify_train}
    )
    written["classify_train"] = _write_jsonl(out_dir / "classify_train.jsonl", classify_train)
    written["classify_eval"] = _write_jsonl(out_dir / "classify_eval.jsonl", classify_eval)

    text_rows = [{"text": row["prompt"] + row["response"]} for row in target_train]
    written["text_train"] = _write_jsonl(out_dir / "text_train.jsonl", text_rows)
    # The same prompts as target_train: the alpaca rows encode to exactly its tokens.
    alpaca_rows = [{"instruction": row["prompt"], "input": "", "output": row["response"]} for row in target_train]
    written["alpaca_train"] = _write_jsonl(out_dir / "alpaca_train.jsonl", alpaca_rows)
    sharegpt_rows = [{"conversations": [{"from": "human", "value": row["prompt"]},
                                        {"from": "gpt", "value": row["response"]}]} for row in target_train]
    written["sharegpt_train"] = _write_jsonl(out_dir / "sharegpt_train.jsonl", sharegpt_rows)
    for name, rows in (("preference_train", target_train), ("preference_eval", target_eval)):
        pairs = [{"prompt": row["prompt"], "chosen": row["response"], "rejected": wrong_shift(row["response"])}
                 for row in rows]
        written[name] = _write_jsonl(out_dir / f"{name}.jsonl", pairs)
    return written


def wrong_shift(response: str) -> str:
    """The demo preference data's rejected answer to a shift prompt: every letter of the right
    answer moved one more on (the word shifted by two, z wraps to a). A plausible mistake that
    differs from the right answer in every letter, so it never equals it."""
    return "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in response)
