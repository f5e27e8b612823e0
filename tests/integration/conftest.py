"""Integration fixtures: one local Ray instance for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    import ray

    if not ray.is_initialized():
        # "local": a private instance, never another Ray that runs on the machine.
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
