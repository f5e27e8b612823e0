"""`ftctl run` end to end on local Ray with the built-in tiny base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file

from orchestrator.spec import load_spec
from orchestrator.pipeline import run_job

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def run(tmp_path: Path, name: str, *overrides: str) -> tuple[int, Path, str]:
    spec = load_spec(QUICKSTART, overrides)
    run_dir = tmp_path / name
    console = Console(file=open(tmp_path / f"{name}.log", "w"), width=200)
    code = run_job(spec, run_dir=run_dir, console=console)
    console.file.close()
    return code, run_dir, (tmp_path / f"{name}.log").read_text()


def test_quickstart_writes_the_run_dir_contract_and_learns(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "quick", "training.max_steps=40", "checkpoint.every_steps=20",
                             "training.eval_every_steps=20", "training.log_every_steps=1", "tracking.tensorboard=true",
                             "tracking.mlflow=true", f"tracking.mlflow_tracking_uri={tmp_path / 'mlruns'}",
                             *[f"forgetting.tasks.{i}.max_examples=40" for i in range(4)])
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["world_size"] == 2
    assert summary["steps"] == 40
    assert summary["samples_seen"] == 40 * 2 * 16
    assert summary["tokens_seen"] > 0 and summary["train_seconds"] > 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert {"step", "loss", "lr", "tokens", "samples", "elapsed_s"} <= set(metrics[0])
    first, last = sum(m["loss"] for m in metrics[:5]) / 5, sum(m["loss"] for m in metrics[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    assert all((p / "manifest.json").is_file() for p in (run_dir / "checkpoints").iterdir())
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    report = json.loads((run_dir / "forgetting.json").read_text())
    assert set(report["tasks"]) == {"arithmetic", "reversal", "sorting", "kv_recall"}
    for task in report["tasks"].values():
        assert task["base"] >= 0.7  # the base model knows its source tasks
        assert [e["step"] for e in task["evals"]] == [0, 40]
    assert (run_dir / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert "forgetting" in log and "arithmetic" in log
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["method.kind"] == "lora"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 41))


def test_two_workers_take_the_same_steps_as_one_worker_with_double_batch(tmp_path, local_ray):
    common = ["method.kind=full", "method.lora=null", "training.max_steps=4", "training.lr=1e-3",
              "training.warmup_steps=0", "checkpoint.every_steps=null", "data.eval=null",
              "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null"]
    code2, two, log2 = run(tmp_path, "two", *common, "resources.workers=2", "training.per_device_batch_size=4")
    code1, one, log1 = run(tmp_path, "one", *common, "resources.workers=1", "training.per_device_batch_size=8")
    assert code2 == 0, log2
    assert code1 == 0, log1
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert json.loads((one / "summary.json").read_text())["world_size"] == 1
    w2 = load_file(str(two / "model" / "model.safetensors"))
    w1 = load_file(str(one / "model" / "model.safetensors"))
    assert w2.keys() == w1.keys()
    for name in w1:
        diff = (w1[name].float() - w2[name].float()).abs().max().item()
        assert diff < 1e-4, f"{name} differs by {diff}"
    losses2 = [json.loads(x)["loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    losses1 = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert losses2 == pytest.approx(losses1, abs=1e-5)
    # training really moved the weights, so the comparison means something
    from orchestrator.models.tiny.build import ensure_tiny_base

    base = load_file(str(ensure_tiny_base() / "model.safetensors"))
    moved = max((base[n].float() - w1[n].float()).abs().max().item() for n in base if n in w1)
    assert moved > 1e-4


def test_a_malformed_row_fails_the_run_naming_file_and_row(tmp_path, local_ray):
    bad = tmp_path / "bad.jsonl"
    rows = [json.dumps({"prompt": f"p{i}=", "response": "x"}) for i in range(40)]
    rows[6] = '{"prompt": "oops"'
    bad.write_text("\n".join(rows) + "\n")
    code, run_dir, log = run(tmp_path, "bad", f"data.train.path={bad}", "data.eval=null",
                             "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null")
    assert code != 0
    assert "bad.jsonl" in log and "row 7" in log
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
