"""The adapter registry moved to orchestrator.store.registry; kept so existing imports work."""

from orchestrator.store.registry import Registry, RegistryError  # noqa: F401
