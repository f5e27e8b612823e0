"""Greedy exact match now lives in orchestrator.models.generate (the tiny model's build uses it
too, and models sits below forgetting). Kept so existing imports work."""

from orchestrator.models.generate import greedy_exact_match  # noqa: F401
