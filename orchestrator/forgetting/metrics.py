"""Which direction is worse for each forgetting metric, and how a change is measured."""

from __future__ import annotations

HIGHER_IS_BETTER = {"exact_match": True, "accuracy": True, "loss": False, "perplexity": False,
                    "choice": True, "choice_norm": True,
                    # lm-evaluation-harness's metrics; a task's own metric_list adds its others
                    "acc": True, "acc_norm": True, "acc_mutual_info": True, "f1": True, "mcc": True, "em": True,
                    "bleu": True, "chrf": True, "rouge1": True, "rouge2": True, "rougeL": True, "ter": False,
                    "word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False}


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of `metric` is better ("acc,none" reads as "acc"); a metric
    nobody listed counts as higher-is-better, as scores mostly are."""
    return HIGHER_IS_BETTER.get(metric.split(",")[0], True)


def register(metric: str, better: bool) -> None:
    """Record the direction an lm-eval task gives one of its metrics."""
    HIGHER_IS_BETTER.setdefault(metric.split(",")[0], better)


def change(metric: str, base: float, value: float) -> dict[str, float | bool]:
    """Absolute and relative change from `base` (0 when base is 0: undefined), and the
    drop (positive = worse)."""
    delta = value - base
    drop = -delta if higher_is_better(metric) else delta
    relative = delta / abs(base) if base else 0.0
    return {"delta": delta, "relative_delta": relative, "drop": drop, "worse": drop > 0}
