"""lm-evaluation-harness tasks as forgetting tasks: ftctl reports what the `lm_eval` command
line reports for the same model, adapter, task and settings."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
import yaml

from orchestrator.cli.program import main
from orchestrator.exitcodes import ExitCode
from orchestrator.models.tiny.build import ensure_tiny_base

pytest.importorskip("lm_eval")


def local_tasks(folder):
    """A multiple-choice task over the tiny base's arithmetic, and a loglikelihood task (whose
    perplexity is a continuous metric)."""
    folder.mkdir()
    rows = [{"prompt": f"{a}+{b}=", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "answer": 0}
            for a in range(2, 9) for b in range(1, 5)]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(folder / "mc.jsonl")}},
              "test_split": "test", "doc_to_text": "{{prompt}}", "target_delimiter": "", "metadata": {"version": 1}}
    (folder / "t_mc.yaml").write_text(yaml.safe_dump({
        "task": "t_mc", **common, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    (folder / "t_ll.yaml").write_text(yaml.safe_dump({
        "task": "t_ll", **common, "output_type": "loglikelihood", "doc_to_target": "{{choices[0]}}",
        "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}]}))
    return folder


def random_adapter(base: str, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(str(out))
    return out


def cli_results(base: str, tasks, limit: int, out, peft=None) -> dict:
    args = f"pretrained={base},dtype=float32" + (f",peft={peft}" if peft else "")
    done = subprocess.run([shutil.which("lm_eval") or "lm_eval", "--model", "hf", "--model_args", args, "--tasks",
                           "t_mc,t_ll", "--include_path", str(tasks), "--limit", str(limit), "--batch_size", "16",
                           "--device", "cpu", "--output_path", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted(out.rglob("results*.json"))
    assert found, done.stdout[-2000:]
    return json.loads(found[-1].read_text())["results"]


def test_ftctl_eval_reports_what_the_lm_eval_command_line_reports(tmp_path, capsys):
    base = str(ensure_tiny_base())
    tasks = local_tasks(tmp_path / "tasks")
    adapter = random_adapter(base, tmp_path / "adapter")
    out = tmp_path / "ftctl.json"
    code = main(["eval", "--model", "builtin:tiny-base", "--adapter", str(adapter), "--lm-eval", "t_mc,t_ll",
                 "--include-path", str(tasks), "--limit", "20", "--json", str(out)])
    assert code == ExitCode.OK, capsys.readouterr()
    ours = json.loads(out.read_text())
    assert ours["report"]["tasks"]["t_mc"]["metric"] == "acc"
    assert ours["report"]["tasks"]["t_ll"]["metric"] == "perplexity"
    assert ours["report"]["tasks"]["t_ll"]["higher_is_better"] is False

    theirs = cli_results(base, tasks, 20, tmp_path / "cli-base")
    assert ours["base"]["t_mc"] == theirs["t_mc"]["acc,none"]
    assert ours["base"]["t_ll"] == pytest.approx(theirs["t_ll"]["perplexity,none"], rel=1e-6)
    adapted = cli_results(base, tasks, 20, tmp_path / "cli-adapted", peft=adapter)
    assert ours["adapted"]["t_mc"] == adapted["t_mc"]["acc,none"]
    assert ours["adapted"]["t_ll"] == pytest.approx(adapted["t_ll"]["perplexity,none"], rel=1e-6)
    assert ours["adapted"]["t_ll"] != ours["base"]["t_ll"]  # the adapter was on


def test_a_job_gated_on_an_lm_eval_task_stops_like_one_gated_on_a_native_task(tmp_path, local_ray):
    """The demo's lm-eval task (tiny_reversal_mc) loses accuracy under lr 1e-3 (1.0 -> about 0.96
    by step 40); a gate of 0.02 on it alone stops the job where it trips."""
    from tests.integration.test_run import run

    task = ("forgetting.tasks=[{name: reversal_mc, max_drop: 0.02, lm_eval: {task: tiny_reversal_mc, "
            "include_path: 'builtin:demo/lm_eval', limit: 100}}]")
    code, run_dir, log = run(tmp_path, "lm-gate", "training.lr=1e-3", "training.max_steps=40",
                             "checkpoint.every_steps=10", "forgetting.every_steps=10", "training.log_every_steps=5",
                             "training.eval_every_steps=null", "data.eval=null", "forgetting.action=stop", task)
    assert code == 4, log
    summary = json.loads((run_dir / "summary.json").read_text())
    gate = summary["forgetting_gate"]
    assert summary["status"] == "stopped_by_gate" and summary["steps"] == gate["step"]
    (trip,) = gate["tripped"]
    assert trip["task"] == "reversal_mc" and trip["metric"] == "acc" and trip["drop"] > 0.02
    report = json.loads((run_dir / "forgetting.json").read_text())
    evals = report["tasks"]["reversal_mc"]["evals"]
    assert evals[0] == {"step": 0, "value": 1.0} and evals[-1]["step"] == gate["step"]
    assert not (run_dir / "adapter").exists()
