"""Install, build and cache the built-in base model ``builtin:tiny-base``.

A small Llama-shaped model is pre-trained from scratch on the generated SOURCE tasks
(see ``orchestrator/builtin/tasks.py``; the recipe is ``orchestrator/builtin/recipe.py``) so
that it really knows them; fine-tuning it on the TARGET task then shows real catastrophic
forgetting. The build is deterministic and runs on CPU in about a minute or two; the package
ships one build of the current recipe (``shipped/``, checked by its manifest), so that the
first use only copies it into ``$FTCTL_HOME/models/tiny-base-v<RECIPE_VERSION>``.

Training example format: ``<s> prompt response </s>`` (one token per byte), loss on the
response and ``</s>`` only. ``greedy_exact_match`` prompts with ``<s> prompt`` to match.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.builtin import tasks
from orchestrator.builtin.recipe import RECIPE, Recipe, heldout_rows, pretraining_rows
from orchestrator.models.tiny import manifest
from orchestrator.spec.paths import ftctl_home

TINY_BASE_ID = "builtin:tiny-base"
# Bump whenever the recipe, the tasks or anything below changes what gets built: it names
# the cache directory.
RECIPE_VERSION = 1
REPORT_FILE = "build_report.json"
MIN_SOURCE_EXACT_MATCH = 0.8
SHIPPED_DIR = Path(__file__).parent / "shipped"
"""The build of recipe v<RECIPE_VERSION> the package ships, with its manifest."""

Progress = Callable[[str], None]

# Seeds for held-out rows; training pools use RECIPE.seed, and `exclude` keeps them disjoint.
BUILD_EVAL_SEED = 1_000


def tiny_base_dir() -> Path:
    """Where the tiny base model of the current recipe lives once installed or built."""
    return ftctl_home() / "models" / f"tiny-base-v{RECIPE_VERSION}"


def _is_complete(path: Path) -> bool:
    return (path / REPORT_FILE).is_file()


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        # Holding the lock, any staging dir left here is from an install that was killed.
        for stale in target.parent.glob(f".{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def ensure_tiny_base(progress: Progress | None = None) -> Path:
    """Return the tiny base model directory, installing it first if no complete copy is cached.

    Installs the build the package ships when it is intact and of the current recipe;
    otherwise builds from the recipe, saying why. Safe to call from several processes at
    once: one installs under an exclusive file lock into a temp dir and renames it into
    place; the others wait and then reuse it.
    """
    target = tiny_base_dir()
    if _is_complete(target):
        return target
    say = progress or (lambda message: None)
    with _cache_lock(target):
        if _is_complete(target):
            return target
        _replace_with(target, lambda staging: _install_shipped_or_build(staging, say))
        say(f"{TINY_BASE_ID} (recipe v{RECIPE_VERSION}) is ready at {target}")
    return target


def rebuild_tiny_base(progress: Progress | None = None) -> Path:
    """Build the tiny base model from the recipe into the cache, replacing the copy there."""
    target = tiny_base_dir()
    say = progress or (lambda message: None)
    with _cache_lock(target):
        say(f"building {TINY_BASE_ID} (recipe v{RECIPE_VERSION}) from the recipe into {target}")
        _replace_with(target, lambda staging: build_tiny_base(staging, progress=say))
    return target


def build_shipped_copy(out_dir: Path, progress: Progress | None = None) -> dict:
    """Build from the recipe into ``out_dir`` (replaced) with the manifest that lets
    ``ensure_tiny_base`` install it; return the manifest. Run through
    ``ftctl build-base --from-recipe --out orchestrator/models/tiny/shipped`` after a recipe change.
    """
    out_dir = Path(out_dir).resolve()
    empty = out_dir.is_dir() and not any(out_dir.iterdir())
    if out_dir.exists() and not empty and not (out_dir / manifest.MANIFEST_FILE).is_file():
        # It gets replaced as a whole: only ever replace a build this function wrote.
        raise ValueError(f"{out_dir} exists and holds no {manifest.MANIFEST_FILE}, so it is not a build to "
                         "refresh; give a new or empty directory, or the shipped build's")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    built: dict = {}

    def build_and_describe(staging: Path) -> None:
        build_tiny_base(staging, progress=progress)
        built.update(manifest.write_manifest(staging, TINY_BASE_ID, RECIPE_VERSION))

    _replace_with(out_dir, build_and_describe)
    return built


def _install_shipped_or_build(staging: Path, say: Progress) -> None:
    try:
        manifest.copy_verified(SHIPPED_DIR, staging, RECIPE_VERSION)
        say(f"installed the shipped {TINY_BASE_ID} (recipe v{RECIPE_VERSION}, digests checked)")
    except manifest.UnusableBuild as why:
        for path in staging.iterdir():
            path.unlink()
        say(f"cannot install the shipped {TINY_BASE_ID}: {why}; building it from recipe v{RECIPE_VERSION} "
            "instead (about two minutes on two cores, once)")
        build_tiny_base(staging, progress=say)


def _replace_with(target: Path, fill: Callable[[Path], object]) -> None:
    """Fill a staging dir next to ``target``, then rename it into place (replacing ``target``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        _seal(staging)
        if target.exists():
            # Incomplete (a copy cut short) or being rebuilt on purpose: replace it.
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _seal(directory: Path) -> None:
    # mkdtemp (and the safetensors writer) make files private, but the cache is meant to be
    # shared; fsync so that a crash right after the rename cannot leave truncated weights.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def build_tiny_base(out_dir: Path, progress: Progress | None = None, recipe: Recipe = RECIPE) -> dict:
    """Pre-train the tiny base model into ``out_dir`` and return its build report.

    Raises RuntimeError when a source task ends below 0.8 held-out exact match, which means
    the recipe is broken, not the caller.
    """
    import torch

    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started = time.perf_counter()
    try:
        # fork_rng: the build seeds torch for determinism without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            model, tokenizer, params = _pretrain(recipe, say)
            exact_match, target_exact_match = _evaluate(model, tokenizer, recipe, say)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started

    failing = {task: value for task, value in exact_match.items() if value < MIN_SOURCE_EXACT_MATCH}
    if failing:
        raise RuntimeError(
            f"the tiny base recipe v{RECIPE_VERSION} is broken: held-out exact match {failing} is "
            f"below {MIN_SOURCE_EXACT_MATCH}; fix the recipe in orchestrator/builtin/recipe.py "
            "(more steps or a larger model) and bump RECIPE_VERSION"
        )
    _save_quietly(model, tokenizer, out_dir)
    report = {
        "model_id": TINY_BASE_ID,
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(recipe),
        "seconds": round(seconds, 2),
        "steps": recipe.steps,
        "params": params,
        "exact_match": exact_match,
        "target_task": tasks.TARGET_TASK,
        "target_exact_match": target_exact_match,
    }
    # Written last: its presence is what marks the build as complete.
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    say(f"built {TINY_BASE_ID} in {seconds:.0f}s: exact match {exact_match}, target {target_exact_match}")
    return report


def _save_quietly(model, tokenizer, out_dir: Path) -> None:
    # transformers draws its own progress bar while saving; ours already says what happens.
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _encode_pool(tokenizer, rows: list[dict]):
    """Stack rows as ``<s> prompt response </s>`` ids, labels (-100 on ``<s> prompt``) and lengths."""
    import torch

    def token_ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    prompts = token_ids([row["prompt"] for row in rows])
    responses = token_ids([row["response"] for row in rows])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    lengths = [len(p) + len(r) + 2 for p, r in zip(prompts, responses)]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        input_ids[i, : lengths[i]] = torch.tensor([bos, *prompt, *response, eos])
        labels[i, 1 + len(prompt) : lengths[i]] = torch.tensor([*response, eos])
    return input_ids, labels, torch.tensor(lengths)


def _pad_columns(tensor, width: int, value: int):
    import torch

    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def _pretrain(recipe: Recipe, say: Progress):
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.models.tiny.tokenizer import build_tokenizer

    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    pools = [_encode_pool(tokenizer, pretraining_rows(task, recipe)) for task in tasks.SOURCE_TASKS]
    width = max(ids.shape[1] for ids, _, _ in pools)
    input_ids = torch.cat([_pad_columns(ids, width, tokenizer.pad_token_id) for ids, _, _ in pools])
    labels = torch.cat([_pad_columns(task_labels, width, -100) for _, task_labels, _ in pools])
    lengths = torch.cat([task_lengths for _, _, task_lengths in pools])
    # Every batch mixes the tasks (single-task batches learned far slower in trials).
    weights = torch.cat(
        [
            torch.full((len(task_lengths),), float(recipe.task_weights.get(task, 1.0)))
            for task, (_, _, task_lengths) in zip(tasks.SOURCE_TASKS, pools)
        ]
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # At this size eager attention is about twice as fast as SDPA on CPU.
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    say(
        f"pre-training a {params / 1e6:.2f}M-parameter model for {recipe.steps} steps "
        f"on {len(lengths)} examples of {len(pools)} source tasks"
    )

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    sampler = torch.Generator().manual_seed(recipe.seed)
    model.train()
    running = 0.0
    for step in range(recipe.steps):
        index = torch.multinomial(weights, recipe.batch_size, replacement=True, generator=sampler)
        width = int(lengths[index].max())
        batch_ids = input_ids[index, :width]
        loss = model(
            input_ids=batch_ids,
            attention_mask=(batch_ids != tokenizer.pad_token_id).long(),
            labels=labels[index, :width],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == recipe.steps:
            count = step % 100 + 1
            say(f"step {step + 1}/{recipe.steps} loss {running / count:.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            running = 0.0
    model.eval()
    return model, tokenizer, params


def _evaluate(model, tokenizer, recipe: Recipe, say: Progress) -> tuple[dict[str, float], float]:
    from orchestrator.models.generate import greedy_exact_match

    exact_match = {}
    for task in tasks.SOURCE_TASKS:
        rows = heldout_rows(task, recipe.eval_per_task, seed=BUILD_EVAL_SEED, recipe=recipe)
        exact_match[task] = round(greedy_exact_match(model, tokenizer, rows), 4)
        say(f"held-out exact match {task}: {exact_match[task]:.3f}")
    target_rows = heldout_rows(tasks.TARGET_TASK, recipe.eval_per_task, seed=BUILD_EVAL_SEED, recipe=recipe)
    target_exact_match = round(greedy_exact_match(model, tokenizer, target_rows), 4)
    say(f"held-out exact match {tasks.TARGET_TASK} (target, expected low): {target_exact_match:.3f}")
    return exact_match, target_exact_match
