"""Foundation benchmark: CLI start-up, validation, and data preparation.

Prints ratios against plain baselines measured in the same run:
  - `ftctl --help` and `ftctl validate` wall time vs a bare `python -c pass`
    (the goal: both under 1 s; validation must not import torch, ray or deepspeed);
  - `prepare_dataset` (read + check + tokenise + mask + cache) vs a plain loop that
    tokenises the same rows with the same tokenizer and nothing else.

Run: python bench/bench_foundation.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cli() -> None:
    base = wall([sys.executable, "-c", "pass"])
    help_s = wall([sys.executable, "-m", "orchestrator.cli", "--help"])
    validate_s = wall([sys.executable, "-m", "orchestrator.cli", "validate", "configs/quickstart.yaml"])
    print(f"python -c pass          {base:6.3f} s  (baseline)")
    print(f"ftctl --help            {help_s:6.3f} s  ratio {help_s / base:5.2f}x  goal < 1 s: {'ok' if help_s < 1 else 'MISSED'}")
    print(f"ftctl validate          {validate_s:6.3f} s  ratio {validate_s / base:5.2f}x  goal < 1 s: {'ok' if validate_s < 1 else 'MISSED'}")


def bench_data(n_rows: int = 20000) -> None:
    os.environ["FTCTL_HOME"] = tempfile.mkdtemp(prefix="ftctl-bench-")
    from orchestrator.data.pipeline import prepare_dataset
    from orchestrator.builtin.tasks import TARGET_TASK, generate
    from orchestrator.models.tiny.tokenizer import build_tokenizer
    from orchestrator.spec.models import DataSourceSpec, DataSpec

    import datasets

    datasets.disable_progress_bars()
    tok = build_tokenizer()
    rows = generate(TARGET_TASK, n_rows, seed=11)
    path = Path(os.environ["FTCTL_HOME"]) / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    t0 = time.perf_counter()
    for r in (json.loads(line) for line in path.read_text().splitlines()):
        tok(r["prompt"], add_special_tokens=False)["input_ids"] + tok(r["response"], add_special_tokens=False)["input_ids"]
    plain = time.perf_counter() - t0

    source = DataSourceSpec(path=str(path), format="instruction")
    data = DataSpec(train=source, max_seq_len=64)
    t0 = time.perf_counter()
    prepared = prepare_dataset(source, data, tok)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_dataset(source, data, tok)
    warm = time.perf_counter() - t0
    assert prepared.stats.rows_used == n_rows
    print(f"plain tokenise loop     {plain:6.3f} s  {n_rows / plain:9.0f} rows/s  (baseline)")
    print(f"prepare_dataset (cold)  {cold:6.3f} s  {n_rows / cold:9.0f} rows/s  ratio {cold / plain:5.2f}x of baseline time")
    print(f"prepare_dataset (cache) {warm:6.3f} s  {n_rows / warm:9.0f} rows/s  ratio {warm / plain:5.2f}x of baseline time")


if __name__ == "__main__":
    bench_cli()
    bench_data()
