"""Which direction is worse for each forgetting metric, and how a change is measured."""

from __future__ import annotations

HIGHER_IS_BETTER = {"exact_match": True, "accuracy": True, "choice": True, "choice_norm": True, "loss": False,
                    "perplexity": False}


def change(metric: str, base: float, value: float) -> dict[str, float | bool]:
    """Absolute and relative change from `base` (0 when base is 0: undefined), and the
    drop (positive = worse)."""
    delta = value - base
    drop = -delta if HIGHER_IS_BETTER[metric] else delta
    relative = delta / abs(base) if base else 0.0
    return {"delta": delta, "relative_delta": relative, "drop": drop, "worse": drop > 0}
