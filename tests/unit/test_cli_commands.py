"""CLI commands other than validate: demo-data, and run refusing a bad job before Ray starts."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def ftctl(*args, **kw):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, **kw)


def test_demo_data_writes_every_file_validation_knows(tmp_path):
    from orchestrator.spec.paths import demo_file_names

    out = tmp_path / "demo"
    result = ftctl("demo-data", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(demo_file_names())
    first = json.loads((out / "target_train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "response"}
    label_row = json.loads((out / "classify_train.jsonl").read_text().splitlines()[0])
    assert set(label_row) == {"text", "label"}


def test_run_refuses_an_invalid_job_with_exit_2_and_starts_nothing(tmp_path):
    result = ftctl("run", "configs/quickstart.yaml", "resources.workers=0", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "resources.workers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_no_command_prints_help():
    result = ftctl()
    assert result.returncode == 0 and "validate" in result.stdout and "run" in result.stdout
