"""Which Ray the control plane joins, and how each way of failing reads: one sentence that
says what to do. No Ray cluster is started here: ray.init and `ray start` are stood in for,
and "nothing answers" is a real closed port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from orchestrator import api, raycluster
from orchestrator.api import ControllerUnavailable


def closed_address() -> str:
    return f"127.0.0.1:{raycluster.free_port()}"  # nothing listens there


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """No Ray initialised, no $RAY_ADDRESS, FTCTL_HOME in tmp_path; ray.init records its calls."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FTCTL_VERBOSE", raising=False)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    joined: list[str] = []
    monkeypatch.setattr(ray, "init", lambda address=None, **_: joined.append(address))
    # The auth mode a head records is set for its clients; here it must not leak into later tests.
    monkeypatch.setattr(raycluster, "use_auth_mode", lambda mode: joined.append(f"auth={mode}"))
    return monkeypatch, joined


def test_a_cluster_that_wants_a_token_is_named_as_such(no_ray, capfd):
    monkeypatch, _ = no_ray
    import ray

    def refuse(*args, **kwargs):  # what Ray's C++ core prints when the cluster wants a token
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC "
                    b"error: InvalidAuthToken: Authentication token is missing or incorrect\n")
        raise ConnectionError("Failed to connect to Ray cluster")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(raycluster, "answers", lambda address, timeout=0: True)
    with pytest.raises(ControllerUnavailable, match="requires token authentication; set RAY_AUTH_MODE=token"):
        api.connect("10.0.0.1:6379", start_ray=False)
    assert "InvalidAuthToken" not in capfd.readouterr().err  # Ray's retry lines stay out of the terminal


def test_nothing_answering_at_a_named_address_is_said_at_once(no_ray):
    _, joined = no_ray
    address = closed_address()
    started = time.monotonic()
    with pytest.raises(ControllerUnavailable, match=rf"no Ray cluster answers at {address}"):
        api.connect(address)  # start_ray does not start a head in place of a named cluster
    assert time.monotonic() - started < 5 and joined == []


def test_ray_address_is_the_cluster_joined_and_no_discovery_is_ever_asked_for(no_ray, monkeypatch):
    _, joined = no_ray
    monkeypatch.setattr(raycluster, "answers", lambda address, timeout=0: True)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    api.connect(None, start_ray=False)
    assert joined == ["10.0.0.9:6379"]
    monkeypatch.delenv("RAY_ADDRESS")
    api.connect("10.0.0.8:6379", start_ray=False)
    assert joined[-1] == "10.0.0.8:6379"
    assert None not in joined and "auto" not in joined


def test_without_a_recorded_head_commands_say_to_start_the_controller(no_ray):
    _, joined = no_ray
    with pytest.raises(ControllerUnavailable, match=r"ftctl's Ray cluster is not running; start it with "
                                                   r"`ftctl controller start`"):
        api.connect(None, start_ray=False)
    assert joined == []


def dead_head(home, address: str) -> raycluster.Head:
    # pid 2**22 + 1 is above Linux's pid_max default: no process group has it.
    head = raycluster.Head(address=address, pid=4_194_305, temp_dir="/tmp/none", log="/tmp/none.log",
                           ray_version="2.60.0", python="3.11.7", started_at=0.0)
    raycluster.head_file(home).parent.mkdir(parents=True, exist_ok=True)
    raycluster.head_file(home).write_text(json.dumps(vars(head)))
    return head


def test_a_dead_recorded_head_is_found_out_in_seconds(no_ray, tmp_path):
    _, joined = no_ray
    dead_head(tmp_path / "home", closed_address())
    started = time.monotonic()
    with pytest.raises(ControllerUnavailable, match=r"no longer answers; run `ftctl controller start`"):
        api.connect(None, start_ray=False)
    assert time.monotonic() - started < 5 and joined == []
    assert raycluster.head_file(tmp_path / "home").is_file()  # only `controller start` cleans it up


def test_controller_start_replaces_a_dead_head_with_a_fresh_one(no_ray, monkeypatch, tmp_path):
    _, joined = no_ray
    home = tmp_path / "home"
    dead = dead_head(home, closed_address())
    fresh = raycluster.Head(address="127.0.0.1:7000", pid=1, temp_dir="/tmp/t", log="/tmp/l", ray_version="x",
                            python="y", started_at=1.0)
    started = []

    def start_head(home_dir, num_cpus=None, port=None):
        assert not raycluster.head_file(home_dir).exists()  # the stale record went first
        started.append((num_cpus, port))
        return fresh

    monkeypatch.setattr(raycluster, "start_head", start_head)
    monkeypatch.setattr(raycluster, "answers", lambda address, timeout=0: address == fresh.address)
    heard: list[str] = []
    api.connect(None, start_ray=True, num_cpus=3, port=6390, say=heard.append)
    assert started == [(3, 6390)] and joined == ["auth=token", fresh.address]
    assert heard[0].startswith(dead.describe()) and "starting a fresh one" in heard[0]
    assert heard[1] == f"started {fresh.describe()}"


def test_a_version_mismatch_is_one_line_naming_both_sides(no_ray, monkeypatch):
    import ray

    monkeypatch.setattr(raycluster, "answers", lambda address, timeout=0: True)

    def mismatch(*args, **kwargs):
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.60.0\n    Python: 3.12.1\n"
                           "This process on node 10.0.0.1 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n")

    monkeypatch.setattr(ray, "init", mismatch)
    with pytest.raises(ControllerUnavailable) as caught:
        api.connect("10.0.0.1:6379", start_ray=False)
    assert str(caught.value) == ("the Ray cluster at 10.0.0.1:6379 runs Ray 2.60.0 on Python 3.12.1, but ftctl here "
                                 "runs Ray 2.60.0 on Python 3.11.7; use the same versions on both sides")


def fake_ray(monkeypatch, script: str) -> None:
    """`ray start` replaced by a Python script (which gets ray start's arguments)."""
    monkeypatch.setattr(raycluster, "ray_command", lambda: [sys.executable, "-c", script])


def test_a_taken_port_suggests_leaving_it_to_ftctl(no_ray, monkeypatch, tmp_path):
    fake_ray(monkeypatch, "import sys; print('ValueError: Failed to bind to 0.0.0.0:6390 because the port is "
                          "already used by other processes'); sys.exit(1)")
    with pytest.raises(ControllerUnavailable, match=r"port 6390 is taken .*leave --port out"):
        api.connect(None, start_ray=True, port=6390)
    assert not raycluster.head_file(tmp_path / "home").exists()


def test_a_started_head_is_recorded_in_its_own_process_group_and_stopped_alone(no_ray, monkeypatch, tmp_path):
    """The whole life of a head against a stand-in `ray start --block`: a process that opens
    the GCS port, writes the address file into its --temp-dir and blocks."""
    _, joined = no_ray
    fake_ray(monkeypatch, """
import socket, sys, time
args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)
server = socket.socket(); server.bind(('127.0.0.1', int(args['--port']))); server.listen()
open(args['--temp-dir'] + '/ray_current_cluster', 'w').write('127.0.0.1:' + args['--port'])
time.sleep(120)
""")
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)  # another program's group
    try:
        api.connect(None, start_ray=True, num_cpus=2)
        home = tmp_path / "home"
        head = raycluster.read_head(home)
        assert head is not None and joined == [f"auth={head.auth_mode}", head.address]
        assert raycluster.head_is_alive(head) and os.getpgid(head.pid) == head.pid != os.getpgid(0)
        # Commands run later join exactly this head.
        api.connect(None, start_ray=False)
        assert joined == [f"auth={head.auth_mode}", head.address] * 2

        assert raycluster.stop_head(home, grace_s=5) == head
        assert raycluster.group_members(head.pid) == [] and raycluster.read_head(home) is None
        assert bystander.poll() is None  # stopping ftctl's head stops nothing else
    finally:
        bystander.kill()
        head = raycluster.read_head(tmp_path / "home")
        if head:
            raycluster.stop_group(head.pid, grace_s=1)


def test_controller_start_refuses_a_port_out_of_range(capsys):
    from orchestrator.cli import main

    assert main(["controller", "start", "--port", "80"]) == 2
    assert "--port must be a port number from 1024 to 65535 (got 80)" in capsys.readouterr().err


def test_controller_ray_flags_go_with_stop_only(capsys):
    from orchestrator.cli import main

    assert main(["controller", "start", "--ray"]) == 2
    assert "--ray and --force go with `controller stop`" in capsys.readouterr().err


def test_stop_ray_refuses_a_cluster_ftctl_did_not_start(capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["controller", "stop", "--ray", "--address", "10.0.0.1:6379"]) == 2
    assert "--ray stops only the local head ftctl started" in capsys.readouterr().err


def test_a_recorded_group_id_now_held_by_another_program_is_neither_alive_nor_stopped(tmp_path):
    """After a reboot the recorded process-group id may belong to some other program: ftctl's
    head is the group only while one of its processes names the head's temp dir."""
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        head = dead_head(tmp_path, closed_address())
        recorded = raycluster.Head(**{**vars(head), "pid": stranger.pid})
        raycluster.head_file(tmp_path).write_text(json.dumps(vars(recorded)))
        assert raycluster.group_members(stranger.pid) == [stranger.pid]
        assert raycluster.head_processes(recorded) == [] and not raycluster.head_is_alive(recorded)
        assert raycluster.stop_head(tmp_path, grace_s=1) == recorded
        assert stranger.poll() is None and raycluster.read_head(tmp_path) is None  # record gone, program left alone
    finally:
        stranger.kill()
