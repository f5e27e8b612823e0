"""The process the controller starts for one job: `ftctl run`'s own runner, fenced.

    python -m orchestrator.controller.runner --store DB --job ID --token N

It runs only while its fencing token is the job's current one (a runner from an earlier
start, or started by a controller that has since been replaced, exits without touching the
run dir), runs the job with `run_job` (the same code as `ftctl run`), and records its exit
code in `<run dir>/controller/exit-<token>.json`, which the controller reads even if it was
away when the runner ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from orchestrator.exitcodes import ExitCode


def exit_file(run_dir: Path, token: int) -> Path:
    return Path(run_dir) / "controller" / f"exit-{token}.json"


def read_exit(run_dir: Path, token: int) -> int | None:
    path = exit_file(run_dir, token)
    try:
        return int(json.loads(path.read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftctl-runner")
    parser.add_argument("--store", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--token", type=int, required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--noop-seconds", type=float, default=None,
                        help="test seam: stand in for a job that runs this long and succeeds")
    args = parser.parse_args(argv)

    from orchestrator.store.jobs import SQLiteJobStore
    from orchestrator.store.states import JobState

    store = SQLiteJobStore(args.store)
    record = store.get(args.job)
    if record.token != args.token or record.state not in (JobState.STARTING, JobState.RUNNING):
        print(f"job {args.job} is {record.state.value} under token {record.token}, not this runner's {args.token}; "
              f"another start owns it, so this one does nothing", file=sys.stderr)
        return ExitCode.STALE
    run_dir = Path(record.run_dir)
    code = ExitCode.FAILED
    try:
        if args.noop_seconds is not None:
            time.sleep(args.noop_seconds)
            code = ExitCode.OK
        else:
            code = _run(record.spec, run_dir, args.address, record.id, args.store)
    finally:
        path = exit_file(run_dir, args.token)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"code": code, "at": time.time(), "pid": os.getpid()}))
        os.replace(tmp, path)
    return code


# Credentials a job may need, by the names the libraries read them under. They reach a job
# only from the node: its environment, or a file named by FTCTL_SECRETS_FILE (KEY=VALUE
# lines) there. They never pass through the job record, the runtime env or the logs.
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS")


def load_secrets_file(path: str | None) -> list[str]:
    """Set the KEY=VALUE lines of `path` in this process's environment; the names set."""
    if not path:
        return []
    names = []
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ[key.strip()] = value.strip()
            names.append(key.strip())
    return names


def _run(spec_dict: dict, run_dir: Path, address: str | None, job_id: str, store: str) -> int:
    from rich.console import Console

    from orchestrator.spec import resolve_spec
    from orchestrator.pipeline import run_job

    spec = resolve_spec(spec_dict)
    # The log is a file, read by `ftctl logs`: plain lines, no live progress bar.
    console = Console(file=sys.stdout, force_terminal=False, width=120)
    from_file = load_secrets_file(os.environ.get("FTCTL_SECRETS_FILE"))
    present = sorted({n for n in SECRET_NAMES if os.environ.get(n)} | set(from_file))
    if present:  # names only, never values
        console.print(f"credentials available to this job: {', '.join(present)}"
                      + (f" ({len(from_file)} from FTCTL_SECRETS_FILE)" if from_file else " (from the node's environment)"))
    return run_job(spec, run_dir=run_dir, address=address, console=console, job_id=job_id, store=store)


if __name__ == "__main__":
    sys.exit(main())
