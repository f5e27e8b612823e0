"""Which Ray a command uses, and the local head ftctl starts for its controller.

Ray's own discovery (a scan of the machine's processes for any `gcs_server`, and
/tmp/ray/ray_current_cluster) is never used: on a shared machine it finds a stranger's
cluster, or a dead one. Instead:

- `ftctl run` without an address starts a private Ray instance of its own
  (`ray.init(address="local")`), which ends with the run.
- The control plane uses the cluster the user names (`--address`, else `$RAY_ADDRESS`), else
  the local head ftctl started itself and recorded in `$FTCTL_HOME/ray/head.json`. That head
  runs in a process group of its own, with its own Ray temp dir and free ports, so it neither
  disturbs nor is disturbed by another Ray on the machine, and stopping it stops nothing else.

A recorded head that no longer answers is found out in seconds (its process group is gone,
or its GCS port refuses connections), not after Ray's minutes of retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.jsonfile import write_json

# How long a named cluster may take to answer before a command gives up with a message.
CONNECT_PROBE_S = 3.0
# Ray's own connect loop retries the GCS for minutes by default; one ftctl join waits at most
# this many of its ~1 s rounds (Ray reads the variable at connect time).
GCS_WAIT_ROUNDS = "5"
HEAD_START_TIMEOUT_S = 90.0


class RayUnavailable(Exception):
    """The Ray cluster a command needs cannot be used; the message says why and what to do."""


@dataclass
class Head:
    """A local Ray head that ftctl started (`ray start --head --block` in its own session)."""

    address: str          # GCS address, host:port
    pid: int              # the `ray start --block` process; leader of the head's process group
    temp_dir: str         # Ray's temp dir for this head (sessions, logs, sockets)
    log: str              # what `ray start` printed
    ray_version: str
    python: str
    started_at: float
    num_cpus: int | None = None
    auth_mode: str = "token"  # RAY_AUTH_MODE the head runs with; its clients need the same

    def describe(self) -> str:
        return f"ftctl's local Ray head at {self.address} (Ray {self.ray_version}, pid {self.pid})"


def head_file(home: Path) -> Path:
    return Path(home) / "ray" / "head.json"


def read_head(home: Path) -> Head | None:
    """The head recorded under `home`, or None (no record, or one that cannot be read)."""
    path = head_file(home)
    try:
        return Head(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def answers(address: str, timeout: float = CONNECT_PROBE_S) -> bool:
    """Whether something accepts TCP connections at `address` (host:port, or ray://host:port)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"{address!r} is not a Ray address; write host:port, e.g. 10.0.0.5:6379")
    return host or "127.0.0.1", int(port)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (read from /proc; zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def head_processes(head: Head) -> list[int]:
    """The live processes of `head`: its process group, provided one of them still names the
    head's temp dir (a group id reused by some other program after a reboot is not ours)."""
    members = group_members(head.pid)
    return members if any(head.temp_dir in _cmdline(pid) for pid in members) else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def head_is_alive(head: Head) -> bool:
    """The head's processes still run and its GCS accepts connections."""
    return bool(head_processes(head)) and answers(head.address)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def head_temp_dir(home: Path) -> Path:
    """Ray's temp dir for the head of `home`: short (Ray's socket paths must stay under 108
    bytes) and one per FTCTL_HOME."""
    digest = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"ftctl-ray-{digest}"


def ray_command() -> list[str]:
    beside = Path(sys.executable).with_name("ray")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


def start_head(home: Path, num_cpus: int | None = None, port: int | None = None,
               timeout_s: float = HEAD_START_TIMEOUT_S) -> Head:
    """Start a local Ray head for ftctl, in its own session and temp dir, wait until it
    answers, and record it under `home`."""
    import ray

    temp_dir = head_temp_dir(home)
    temp_dir.mkdir(parents=True, exist_ok=True)
    (temp_dir / "ray_current_cluster").unlink(missing_ok=True)
    gcs_port = port or free_port()
    log_path = Path(home) / "ray" / "head.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ray_command() + [
        "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs_port}",
        "--include-dashboard=false", "--disable-usage-stats",
        # Every port of its own, so that another Ray on the machine (which holds Ray's
        # defaults) neither blocks this head nor is joined by it.
        f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]
    if num_cpus:
        cmd += [f"--num-cpus={num_cpus}"]
    # Ray enables token auth for a new local cluster, but a client joining by address turns
    # it on only when told: the mode is chosen here and recorded for the clients.
    auth_mode = os.environ.get("RAY_AUTH_MODE") or "token"
    if auth_mode == "token":
        ensure_auth_token()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": auth_mode}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    address_file = temp_dir / "ray_current_cluster"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RayUnavailable(_start_failure(log_path, gcs_port))
        if address_file.is_file():
            address = address_file.read_text().strip()
            if address and answers(address, timeout=1.0):
                break
        if time.monotonic() > deadline:
            stop_group(process.pid)
            raise RayUnavailable(f"the local Ray head did not answer within {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.2)
    head = Head(address=address, pid=process.pid, temp_dir=str(temp_dir), log=str(log_path),
                ray_version=ray.__version__, python=".".join(map(str, sys.version_info[:3])),
                started_at=time.time(), num_cpus=num_cpus, auth_mode=auth_mode)
    write_json(head_file(home), asdict(head))
    return head


def ensure_auth_token() -> None:
    """Make the user's Ray auth token (~/.ray/auth_token) when there is none."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        generate_and_save_token()
        AuthenticationTokenLoader.instance().reset_cache()


def use_auth_mode(mode: str) -> None:
    """Join (and let this process's children join) a cluster running with RAY_AUTH_MODE=`mode`."""
    from ray._raylet import Config

    if os.environ.get("RAY_AUTH_MODE") != mode:
        os.environ["RAY_AUTH_MODE"] = mode
        Config.initialize("")  # Ray caches its config; re-read it


def _start_failure(log_path: Path, port: int) -> str:
    said = log_path.read_text(errors="replace") if log_path.is_file() else ""
    if "already used" in said or "occupied" in said or "Address already in use" in said:
        return (f"port {port} is taken (another user's Ray, or another program); leave --port out to let "
                "ftctl pick a free one, or name another")
    last = next((line.strip() for line in reversed(said.splitlines()) if line.strip()), "no output")
    return f"could not start a local Ray head ({last[:300]}); the whole output is in {log_path}"


def stop_group(pgid: int, grace_s: float = 15.0) -> bool:
    """SIGTERM the process group `pgid`, SIGKILL what is left after `grace_s`; whether
    anything was running."""
    if not group_members(pgid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return True


def stop_head(home: Path, grace_s: float = 15.0) -> Head | None:
    """Stop the head recorded under `home` (its own processes only) and forget it; the head
    that was recorded, or None when none was."""
    head = read_head(home)
    if head is None:
        return None
    if head_processes(head):
        stop_group(head.pid, grace_s)
    head_file(home).unlink(missing_ok=True)
    return head


@contextlib.contextmanager
def bounded_gcs_wait() -> Iterator[None]:
    """Ray's connect loop gives up after GCS_WAIT_ROUNDS rounds instead of minutes."""
    name = "RAY_gcs_server_port_wait_time_s"
    before = os.environ.get(name)
    os.environ[name] = before or GCS_WAIT_ROUNDS
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def join(address: str, **init_options) -> None:
    """`ray.init` at exactly `address`, with one-line errors: nothing answers there, a
    version mismatch (which versions differ), a cluster that wants an auth token. What Ray
    writes while connecting stays out of the terminal unless `verbose()`."""
    import ray

    if not answers(address):
        raise RayUnavailable(f"no Ray cluster answers at {address} (nothing accepts connections there within "
                             f"{CONNECT_PROBE_S:g}s)")
    with quiet() as said:
        try:
            with bounded_gcs_wait():
                ray.init(address=address, **init_options)
        except RuntimeError as err:
            if "Version mismatch" in str(err):
                raise RayUnavailable(version_mismatch(address, str(err))) from None
            raise
        except ConnectionError as err:
            if needs_token(said()):
                raise RayUnavailable(f"the Ray cluster at {address} requires token authentication; set "
                                     "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or "
                                     "RAY_AUTH_TOKEN_PATH) and try again") from None
            raise RayUnavailable(f"could not join the Ray cluster at {address}: {first_line(err)}") from None


def version_mismatch(address: str, message: str) -> str:
    """Ray's multi-line version-mismatch error as one line naming both sides' versions."""
    values = [line.split(":", 1)[1].strip() for line in message.splitlines()
              if line.strip().startswith(("Ray:", "Python:"))]
    if len(values) == 4:
        return (f"the Ray cluster at {address} runs Ray {values[0]} on Python {values[1]}, but ftctl here runs "
                f"Ray {values[2]} on Python {values[3]}; use the same versions on both sides")
    return f"the Ray cluster at {address} runs other Ray or Python versions than ftctl here: {first_line(message)}"


def needs_token(said: str) -> bool:
    """Whether Ray's client was turned away for lack of the cluster's auth token (Ray says so
    only in its C++ log lines, and raises a plain ConnectionError)."""
    return "Unauthenticated" in said or "InvalidAuthToken" in said


def first_line(err: object) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def verbose() -> bool:
    """Whether Ray's own start-up lines reach the terminal (`ftctl --verbose`, FTCTL_VERBOSE=1)."""
    return os.environ.get("FTCTL_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def quiet() -> Iterator[Callable[[], str]]:
    """Keep what Ray writes to fd 2 while it starts or connects (its C++ core's retries, its
    Python notices: a new local instance, token auth) out of the user's terminal, unless
    `verbose()`; yields a function returning what was written so far."""
    if verbose():
        yield lambda: ""
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)

        def said() -> str:
            sys.stderr.flush()
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
