"""Test tiers: unit (fast, no Ray), integration (tiny base model, local Ray), gpu (CUDA only).

Tests under tests/integration/ and tests/gpu/ are marked automatically; gpu tests are
skipped with a reason when no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def pytest_configure(config):
    # Jobs the tests run register their adapters: in a registry of the test session's own,
    # never in the user's $FTCTL_HOME (inherited by every process the tests start).
    import os
    import tempfile

    if "FTCTL_REGISTRY" not in os.environ:
        os.environ["FTCTL_REGISTRY"] = str(Path(tempfile.mkdtemp(prefix="ftctl-test-registry-")) / "jobs.db")


def pytest_collection_modifyitems(config, items):
    cuda = None
    for item in items:
        path = Path(str(item.fspath))
        if TESTS / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)
        if TESTS / "gpu" in path.parents:
            item.add_marker(pytest.mark.gpu)
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine"))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
