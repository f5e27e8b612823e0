"""How the CLI's Ray connection fails: each cause in one sentence that says what to do (no
cluster is started; ray.init and `ray start` are stood in for)."""

from __future__ import annotations

import os
import subprocess

import pytest

from orchestrator import api
from orchestrator.api import ControllerUnavailable


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def refuse(*args, auth: bool = False, **kwargs):
        if auth:  # what Ray's C++ core prints when the cluster wants a token
            os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC "
                        b"error: InvalidAuthToken: Authentication token is missing or incorrect\n")
        raise ConnectionError("Failed to connect to Ray cluster")

    return monkeypatch, refuse


def test_a_cluster_that_wants_a_token_is_named_as_such(no_ray, capfd):
    monkeypatch, refuse = no_ray
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: refuse(auth=True))
    with pytest.raises(ControllerUnavailable, match="requires token authentication; set RAY_AUTH_MODE=token"):
        api.connect("10.0.0.1:6379", start_ray=False)
    assert "InvalidAuthToken" not in capfd.readouterr().err  # Ray's retry lines stay out of the terminal


def test_no_cluster_at_an_address_says_how_to_start_one(no_ray):
    monkeypatch, refuse = no_ray
    import ray

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ControllerUnavailable, match=r"no Ray cluster at 10.0.0.1:6379; start one"):
        api.connect("10.0.0.1:6379")


def test_a_taken_port_suggests_another(no_ray):
    monkeypatch, refuse = no_ray
    import ray

    monkeypatch.setattr(ray, "init", refuse)
    ran = []

    def ray_start(cmd, **kwargs):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ValueError: Failed to bind to 0.0.0.0:6390 because the "
                                                       "port is already used by other processes (such as ...)")

    monkeypatch.setattr(api.subprocess, "run", ray_start)
    with pytest.raises(ControllerUnavailable, match=r"port 6390 is taken .*ftctl controller start --port"):
        api.connect(None, start_ray=True, port=6390)
    assert ran and ran[0][-2:] == ["--port", "6390"]


def test_controller_start_refuses_a_port_out_of_range(capsys):
    from orchestrator.cli import main

    assert main(["controller", "start", "--port", "80"]) == 2
    assert "--port must be a port number from 1024 to 65535 (got 80)" in capsys.readouterr().err
