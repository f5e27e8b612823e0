"""What the built-in tiny base model is built from: its shape, its schedule and its task pools.

Pure data and pure Python: the demo data (held-out and replay rows) is cut from the same
pools as the build (models/tiny/build.py), without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.builtin import tasks


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the built model (part of the cache key via RECIPE_VERSION in
    models/tiny/build.py)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    """3e-3 and above stall reversal and arithmetic for hundreds of steps at this size."""
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    pool_per_task: int = 8000
    """Distinct training prompts per source task; held-out sets exclude all of them."""
    task_weights: dict = field(
        default_factory=lambda: {"arithmetic": 2.5, "reversal": 1.5, "sorting": 1.5, "kv_recall": 0.5}
    )
    """Relative share of training examples per source task: slow learners get more."""
    eval_per_task: int = 200
    seed: int = 0


RECIPE = Recipe()


def pretraining_rows(task: str, recipe: Recipe = RECIPE) -> list[dict]:
    """The training pool of one source task, exactly as the build uses it."""
    return tasks.generate(task, recipe.pool_per_task, seed=recipe.seed)


def heldout_rows(task: str, n: int, seed: int, recipe: Recipe = RECIPE) -> list[dict]:
    """``n`` rows of ``task`` (source or target) none of which is in the build's training pool."""
    exclude = None
    if task in tasks.SOURCE_TASKS:
        exclude = {row["prompt"] for row in pretraining_rows(task, recipe)}
    return tasks.generate(task, n, seed=seed, exclude=exclude)
