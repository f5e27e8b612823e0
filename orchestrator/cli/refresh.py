"""Kept only for tests/unit/test_refresh_render.py, which imports `history` from here; the
commands that were here are in cli/adapters.py and cli/schedules.py. Import from
orchestrator.cli.adapter_history instead, then delete this module."""

from orchestrator.cli.adapter_history import history

__all__ = ["history"]
