"""Fixtures shared by the control-plane unit tests."""

from __future__ import annotations

import pytest

from orchestrator.store.jobs import SQLiteJobStore


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "home" / "jobs.sqlite"


@pytest.fixture
def store(db_path):
    s = SQLiteJobStore(db_path)
    yield s
    s.close()


@pytest.fixture
def run_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root
