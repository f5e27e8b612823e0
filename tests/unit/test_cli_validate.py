"""`ftctl validate` as a user runs it: exit codes, every problem on stderr, and a fast start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
HEAVY = ("torch", "ray", "deepspeed", "transformers", "datasets")


def ftctl(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_quickstart_is_valid():
    result = ftctl("validate", QUICKSTART)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout and "quickstart" in result.stdout
    assert result.stderr == ""


def test_every_problem_is_listed_on_stderr_with_exit_2(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text(f"""\
name: quickstart
method: {{kind: qlra}}
data:
  train: {{path: {tmp_path / 'missing.jsonl'}}}
  max_seq_len: 4
training: {{max_steps: 5, epochs: 1, lr: 0}}
resources: {{workrs: 2, zero_stage: 2}}
checkpoint: {{resume: ''}}
""")
    result = ftctl("validate", job)
    assert result.returncode == 2
    assert_no_traceback(result)
    for path, words in [
        ("method.kind", "did you mean 'qlora'?"),
        ("data.train.path", "does not exist"),
        ("data.max_seq_len", "greater than or equal to 8"),
        ("training.epochs", "not both"),
        ("training.lr", "greater than 0"),
        ("resources.workrs", "did you mean 'workers'?"),
        ("resources.zero_stage", "DeepSpeed"),
        ("checkpoint.resume", "empty value"),
    ]:
        lines = [line for line in result.stderr.splitlines() if line.strip().startswith(f"{path}:")]
        assert lines and words in lines[0], f"{path}: {words!r} not in\n{result.stderr}"
    assert "8 problem(s)" in result.stderr


def test_overrides_on_the_command_line():
    result = ftctl("validate", QUICKSTART, "resources.workers=4", "training.seed=1")
    assert result.returncode == 0, result.stderr
    assert "4 worker(s)" in result.stdout

    result = ftctl("validate", QUICKSTART, "resources.workers=0", "method.lora.alfa=2", "training.max_steps")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "resources.workers" in result.stderr
    assert "did you mean 'alpha'?" in result.stderr
    assert "not of the form key.sub=value" in result.stderr


@pytest.mark.parametrize("content", [None, "name: [unclosed\n", "- a\n- b\n", ""])
def test_unreadable_job_files_exit_2_without_traceback(tmp_path, content):
    job = tmp_path / "job.yaml"
    if content is not None:
        job.write_text(content)
    result = ftctl("validate", job)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "problem(s)" in result.stderr


def test_relative_data_paths_start_at_the_current_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "job.yaml").write_text("name: rel\ndata: {train: {path: data/train.jsonl}}\n")
    assert ftctl("validate", "job.yaml", cwd=tmp_path).returncode == 0
    result = ftctl("validate", "job.yaml", "data.train.path=./data/other.jsonl", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_help_exits_0():
    result = ftctl("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout and "run" in result.stdout
    result = ftctl("validate", "--help")
    assert result.returncode == 0 and "key.sub=value" in result.stdout


@pytest.mark.skipif(shutil.which("ftctl") is None, reason="console script not installed")
def test_console_script_validates_the_quickstart():
    result = subprocess.run(["ftctl", "validate", str(QUICKSTART)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_validate_imports_no_heavy_library():
    code = (
        "import json, sys\n"
        "import orchestrator.cli, orchestrator.spec.load\n"
        f"rc = orchestrator.cli.main(['validate', {str(QUICKSTART)!r}])\n"
        f"print(json.dumps({{'rc': rc, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "loaded": []}


def test_validate_starts_fast():
    ftctl("validate", QUICKSTART)  # byte-compiles the package, as an installed one would be
    start = time.perf_counter()
    result = ftctl("validate", QUICKSTART)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 2.0, f"ftctl validate took {elapsed:.2f}s (target < 1 s)"
