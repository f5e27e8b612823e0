"""Adapter merging on the built-in tiny base model: a job's merge.enabled, QLoRA to full
precision with its quantisation gap, multi-adapter TIES / DARE / cat merges evaluated on
both adapters' tasks, refusals, verification failures, and memory on a sharded base."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from orchestrator.cli import main
from tests.integration.test_run import run

SHORT = ["training.max_steps=20", "training.warmup_steps=2", "training.log_every_steps=5", "checkpoint.every_steps=null",
         "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null", "merge.enabled=true"]


def tensors_of(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_a_lora_job_with_merge_enabled_writes_a_verified_model_that_matches_base_plus_adapter(tmp_path, local_ray):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from orchestrator.digest import sha256_file

    code, run_dir, log = run(tmp_path, "lora", *SHORT)
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    merged = run_dir / "merged"
    assert summary["status"] == "succeeded" and summary["artifacts"]["merged"] == str(merged)
    check = summary["merge"]["verification"]
    assert check["passed"] and check["max_abs_logit_diff"] <= 1e-4 and check["probe"] == "held-out rows"
    assert "max |logit difference|" in log
    for name in ("config.json", "tokenizer.json", "model.safetensors", "merge_manifest.json"):
        assert (merged / name).is_file(), name
    manifest = json.loads((merged / "merge_manifest.json").read_text())
    assert manifest["adapters"][0]["digest"] == sha256_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert len(manifest["base"]["digest"]) == 64 and manifest["tool"]["ftctl"] and manifest["dtype"] == "auto"

    # Checked here independently of the merge's own verification, in fp32.
    base_dir = manifest["base"]["path"]
    ids = torch.randint(0, 260, (4, 24), generator=torch.Generator().manual_seed(1))
    reference = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                                 str(run_dir / "adapter")).eval(), ids)
    plain = logits(AutoModelForCausalLM.from_pretrained(base_dir).eval(), ids)
    got = logits(AutoModelForCausalLM.from_pretrained(str(merged)).eval(), ids)
    assert (got - reference).abs().max() < 1e-4
    assert (got - plain).abs().max() > 1e-2  # the adapter really changed the model

    # Merging the same adapter into the merged model again is refused; nothing is written.
    again = tmp_path / "twice"
    code = main(["merge", "--adapter", str(run_dir / "adapter"), "--base", str(merged), "--out", str(again)])
    assert code == 2 and not again.exists()


@pytest.mark.parametrize("required", [False, True], ids=["default", "required"])
def test_a_merge_that_fails_after_training_fails_the_job_only_when_required(tmp_path, local_ray, required):
    # A tolerance no merge meets: verification fails after training succeeded.
    code, run_dir, log = run(tmp_path, "strict" if required else "lenient", *SHORT, "training.max_steps=6",
                             "resources.workers=1", "merge.tolerance=1e-12", f"merge.required={str(required).lower()}")
    summary = json.loads((run_dir / "summary.json").read_text())
    error = summary["merge"]["error"]
    assert "verification failed" in error and "\n" not in error
    assert summary["merge"]["verification"]["passed"] is False
    assert not (run_dir / "merged").exists() and "merged" not in summary["artifacts"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    if required:
        assert code == 1, log
        assert summary["status"] == "failed" and summary["error"] == error
        assert "the job fails (merge.required)" in log
    else:
        assert code == 0, log
        assert summary["status"] == "succeeded" and "error" not in summary
        assert summary["artifacts"]["adapter"] == str(run_dir / "adapter")
        assert "warning:" in log and "the job succeeds with its adapter" in log


def test_a_qlora_job_merges_into_the_full_precision_base_and_reports_the_quantisation_gap(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "qlora", *SHORT, "method.kind=qlora", "resources.workers=1")
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    gap = summary["merge"]["quantisation_gap"]
    assert gap["tokens"] > 0 and gap["quantization"]["quant_type"] == "nf4"
    assert gap["gap"] == pytest.approx(gap["merged_loss"] - gap["quantized_base_adapter_loss"], abs=1e-5)
    assert gap["quantized_base_adapter_loss"] != gap["merged_loss"]  # two different models were measured
    assert "quantisation gap" in log
    merged = run_dir / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
    tensors = tensors_of(merged)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert not [k for k in tensors if "absmax" in k or "quant" in k]  # no 4-bit storage
    base = tensors_of(Path(json.loads((merged / "merge_manifest.json").read_text())["base"]["path"]))
    assert tensors.keys() == base.keys()
    assert all(tensors[k].shape == base[k].shape for k in base)
    assert summary["merge"]["verification"]["passed"]


# ------------------------------------------------------------------ multi-adapter


def train_adapter(train_file: str, out: Path, steps: int = 80, seed: int = 0) -> Path:
    """A small LoRA adapter trained in-process on one demo task (the subject here is merging)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.data.pipeline import collate, load_prepared, prepare_dataset
    from orchestrator.models.build import load_tokenizer, resolve_model_dir
    from orchestrator.spec import resolve_spec

    spec = resolve_spec({"name": "adapter", "model": {"path": "builtin:tiny-base"},
                         "data": {"train": {"path": train_file}, "max_seq_len": 64}})
    base = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(base, spec.model)
    rows = load_prepared(prepare_dataset(spec.data.train, spec.data, tokenizer).cache_dir)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = collate([rows[i] for i in rng.sample(range(len(rows)), 32)], tokenizer.pad_token_id)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return (train_adapter("builtin:demo/target_train.jsonl", root / "shift"),
            train_adapter("builtin:demo/increment_train.jsonl", root / "increment", seed=1))


TASKS = ["shift=builtin:demo/target_eval.jsonl", "increment=builtin:demo/increment_eval.jsonl"]


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear"])
def test_two_adapters_from_two_tasks_merge_into_a_model_evaluated_on_both(tmp_path, two_adapters, method):
    shift, increment = two_adapters
    out, report = tmp_path / method, tmp_path / f"{method}.json"
    code = main(["merge", "--base", "builtin:tiny-base", "--adapter", str(shift), "--adapter", str(increment),
                 "--method", method, "--density", "0.7", "--tasks", *TASKS, "--metric", "loss",
                 "--max-examples", "64", "--out", str(out), "--json", str(report)])
    assert code == 0
    manifest = json.loads(report.read_text())
    assert manifest == {**json.loads((out / "merge_manifest.json").read_text()), "path": str(out)}
    assert manifest["method"] == method and manifest["density"] == 0.7
    assert [a["weight"] for a in manifest["adapters"]] == [1.0, 1.0]
    metrics = manifest["task_metrics"]
    assert set(metrics) == {"base", "shift", "increment", "merged"}
    assert all(set(values) == {"shift", "increment"} for values in metrics.values())
    # Each adapter learned its own task (loss: lower is better) ...
    assert metrics["shift"]["shift"] < 0.8 * metrics["base"]["shift"]
    assert metrics["increment"]["increment"] < 0.8 * metrics["base"]["increment"]
    # ... and the merged model keeps a real part of both.
    assert metrics["merged"]["shift"] < metrics["base"]["shift"]
    assert metrics["merged"]["increment"] < metrics["base"]["increment"]
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_logit_diff"] <= 1e-4
    # Different adapters changed the weights: not the same as either one alone.
    merged = tensors_of(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], tensors_of(Path(manifest["base"]["path"]))[name])


def test_cat_writes_one_stacked_adapter_equal_to_the_weighted_sum(tmp_path, two_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shift, increment = two_adapters
    linear, cat = tmp_path / "linear", tmp_path / "cat"
    common = ["--base", "builtin:tiny-base", "--adapter", str(shift), "--weight", "0.7",
              "--adapter", str(increment), "--weight", "0.3"]
    assert main(["merge", *common, "--method", "linear", "--out", str(linear)]) == 0
    assert main(["merge", *common, "--method", "cat", "--out", str(cat)]) == 0
    manifest = json.loads((cat / "merge_manifest.json").read_text())
    assert manifest["cat_adapter"]["rank"] == 16  # 8 + 8
    a, b = tensors_of(linear), tensors_of(cat)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # The stacked adapter serves unmerged: peft loads it and gives the merged model's logits.
    base = manifest["base"]["path"]
    ids = torch.randint(0, 260, (2, 16), generator=torch.Generator().manual_seed(3))
    served = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(cat / "adapter")).eval(), ids)
    assert (served - logits(AutoModelForCausalLM.from_pretrained(str(cat)).eval(), ids)).abs().max() < 1e-4


def test_a_bfloat16_merge_stores_bfloat16_and_is_verified_at_its_tolerance(tmp_path, two_adapters):
    out, report = tmp_path / "bf16", tmp_path / "bf16.json"
    assert main(["merge", "--base", "builtin:tiny-base", "--adapter", str(two_adapters[0]), "--dtype", "bfloat16",
                 "--out", str(out), "--json", str(report)]) == 0
    manifest = json.loads(report.read_text())
    assert {t.dtype for t in tensors_of(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    check = manifest["verification"]
    assert check["tolerance"] == 0.25 and 1e-4 < check["max_abs_logit_diff"] <= 0.25  # bf16 rounding is visible


def test_a_merge_over_tolerance_fails_with_exit_1_and_writes_nothing(tmp_path, two_adapters):
    out, report = tmp_path / "strict", tmp_path / "strict.json"
    code = main(["merge", "--base", "builtin:tiny-base", "--adapter", str(two_adapters[0]), "--tolerance", "1e-12",
                 "--out", str(out), "--json", str(report)])
    assert code == 1
    assert not out.exists() and not list(tmp_path.glob(".strict*"))  # no staging left behind either
    failed = json.loads(report.read_text())["verification"]
    assert failed["passed"] is False and failed["max_abs_logit_diff"] > 1e-12


@pytest.mark.parametrize("args, words", [
    (["--adapter", "{missing}"], "not a PEFT adapter dir"),
    (["--adapter", "{a}", "--adapter", "{a}"], "same adapter"),
    (["--adapter", "{a}", "--adapter", "{b}", "--weight", "1"], "give one --weight per --adapter"),
    (["--adapter", "{a}", "--base", "{other_base}"], "different base"),
])
def test_bad_input_is_refused_with_exit_2_and_a_reason(tmp_path, two_adapters, capsys, args, words):
    other_base = tmp_path / "other-base"
    make_llama(other_base, hidden=64, layers=2, shard="1MB")
    values = {"missing": tmp_path / "nope", "a": two_adapters[0], "b": two_adapters[1], "other_base": other_base}
    out = tmp_path / "out"
    code = main(["merge", *[a.format(**values) for a in args], "--out", str(out)])
    assert code == 2 and not out.exists()
    assert words in capsys.readouterr().err.replace("\n", " ")


# ------------------------------------------------------------------------- memory


def make_llama(path: Path, hidden: int, layers: int, shard: str, vocab: int = 260) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=64,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(path), max_shard_size=shard)
    return path


MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from orchestrator.merging.adapters import load_adapter
    from orchestrator.merging.merge import merge_weights
    from orchestrator.merging.weights import base_weights
    base, adapter, out, shard = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    weights = base_weights(base)
    config = json.loads((base / "config.json").read_text())
    stats = merge_weights(weights, config, [load_adapter(adapter)], [1.0], "linear", "auto", out, shard_bytes=shard)
    print(json.dumps(stats))
""")


def test_merging_a_sharded_base_holds_about_one_shard_in_memory(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_llama(tmp_path / "base", hidden=512, layers=16, shard="8MB")  # ~270 MB in ~35 shards
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    assert len(list(base.glob("*.safetensors"))) >= 30
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    del peft_model
    shard = 8 * 10**6
    done = subprocess.run([sys.executable, "-c", MEASURE, str(base), str(tmp_path / "adapter"), str(tmp_path / "out"),
                           str(shard)], capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    growth = stats["peak_rss_growth_bytes"]
    assert growth is not None, "peak RSS is read from /proc/self/status (Linux)"
    # One output shard (and its serialised copy), one tensor being merged (plus its fp32 update)
    # and the adapter, not the model. Measured here: 26-59 MiB for 64, 128 and 256 MiB models.
    assert growth < 8 * shard + 16 * 2**20, (growth, model_bytes)
    assert growth < model_bytes / 3, (growth, model_bytes)
    assert stats["largest_shard_bytes"] <= shard and len(stats["shards"]) >= 30
    # The streamed output is the merge: one changed tensor checked against base + adapter.
    name = "model.layers.3.mlp.down_proj.weight"
    from orchestrator.merging.adapters import load_adapter
    expected = tensors_of(base)[name] + load_adapter(tmp_path / "adapter").updates["model.layers.3.mlp.down_proj"].delta()
    assert torch.allclose(tensors_of(tmp_path / "out")[name], expected, atol=1e-6)
