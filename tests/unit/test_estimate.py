"""`ftctl estimate`: per-GPU memory of a job before any allocation, and the fit verdict."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.models.memory import GiB, estimate_memory
from orchestrator.models.shape import ModelShape, ModelShapeError, adapter_parameter_count, model_shape, parameter_count
from orchestrator.spec.models import JobSpec, LoraSpec

REPO = Path(__file__).resolve().parents[2]
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"
HEAVY = ("torch", "ray", "deepspeed", "transformers", "datasets")


def job(**fields: Any) -> JobSpec:
    """A GPU job on Llama-3-8B; `fields` are dotted paths written with '__' (training__lr=1)."""
    data: dict[str, Any] = {
        "name": "estimate-test",
        "model": {"path": LLAMA3_8B},
        "data": {"train": {"path": "yahma/alpaca-cleaned"}, "max_seq_len": 2048},
        "training": {"precision": "bf16", "per_device_batch_size": 1},
        "resources": {"gpus_per_worker": 1},
    }
    for key, value in fields.items():
        node = data
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return JobSpec.model_validate(data)


def llama3() -> ModelShape:
    return model_shape(LLAMA3_8B)


# ----------------------------------------------------------------- parameter counts


def test_llama3_8b_has_8_03_billion_parameters():
    assert parameter_count(llama3()) == pytest.approx(8.03e9, rel=0.01)
    for hub_id in ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"):
        assert parameter_count(model_shape(hub_id)) == parameter_count(llama3())
    assert parameter_count(model_shape("mistralai/Mistral-7B-v0.1")) == pytest.approx(7.24e9, rel=0.01)
    assert parameter_count(model_shape("Qwen/Qwen2.5-7B")) == pytest.approx(7.62e9, rel=0.01)


def test_tiny_base_shape_without_a_build_comes_from_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))  # nothing built here
    shape = model_shape("builtin:tiny-base")
    assert (shape.hidden_size, shape.num_layers, shape.vocab_size, shape.tie_embeddings) == (128, 2, 260, True)
    assert parameter_count(shape) == 558_208  # README: "0.56 M parameters"


def test_tiny_base_parameter_count_matches_its_weights_file():
    from orchestrator.models.tiny.build import SHIPPED_DIR

    weights = SHIPPED_DIR / "model.safetensors"  # what every machine installs
    with open(weights, "rb") as handle:  # the safetensors header lists every tensor's shape
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    stored = sum(_product(t["shape"]) for name, t in header.items() if name != "__metadata__")
    assert parameter_count(model_shape("builtin:tiny-base")) == stored


def _product(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_lora_parameters_by_hand():
    # hidden 64, MLP 128, 4 heads of 16, 2 kv heads: k/v project 64 -> 32.
    shape = ModelShape(vocab_size=100, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, tie_embeddings=False)
    # q: 4*(64+64)=512, v: 4*(64+32)=384 -> 896 per layer, 2 layers.
    assert adapter_parameter_count(shape, LoraSpec(r=4, target_modules=["q_proj", "v_proj"])) == 1792
    # + k 384, o 512, gate/up/down 3 * 4*(64+128) = 2304 -> 4096 per layer.
    assert adapter_parameter_count(shape, LoraSpec(r=4, target_modules="all-linear")) == 8192
    # DoRA adds a magnitude per output feature: q 64 + v 32 per layer.
    assert adapter_parameter_count(shape, LoraSpec(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)) == 1792 + 192


def test_trainable_parameters_per_method():
    shape = llama3()
    assert estimate_memory(job(method__kind="full"), shape).trainable_params == parameter_count(shape)
    lora = estimate_memory(job(method__kind="lora", method__lora={"r": 16}), shape).trainable_params
    assert lora == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336))  # 41.9 M, 0.52%
    freeze = estimate_memory(job(method__kind="freeze", method__freeze={"trainable_layers": 2}), shape)
    block = (parameter_count(shape) - 2 * 128256 * 4096 - 4096) // 32
    assert freeze.trainable_params == 2 * block + 4096 + 128256 * 4096  # blocks + final norm + untied head
    head = estimate_memory(job(method__kind="head", method__head={"num_labels": 3},
                               data__train={"path": "org/labelled", "format": "classification"}), shape)
    assert head.trainable_params == 4096 * 3


# -------------------------------------------------------------------- the estimate


def test_qlora_base_is_about_a_third_of_bf16():
    shape = llama3()
    bf16 = estimate_memory(job(method__kind="lora"), shape).weights
    qlora = estimate_memory(job(method__kind="qlora"), shape).weights
    assert bf16 == parameter_count(shape) * 2
    # The block linears drop to 4.13 bits; the embeddings and head (1.05 B of the 8.03 B
    # parameters) stay in bf16, as bitsandbytes leaves them: 5.3 GiB, 0.355x.
    assert qlora <= 0.36 * bf16
    assert 5.0 * GiB < qlora < 5.6 * GiB
    no_double_quant = estimate_memory(job(method__kind="qlora", method__quantization={"double_quant": False}), shape)
    assert no_double_quant.weights > qlora


def test_zero3_on_16_workers_shards_weights_gradients_and_optimizer_by_16():
    shape = llama3()
    one = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__zero_stage=3), shape)
    sixteen = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__zero_stage=3,
                                  resources__workers=16), shape)
    for part in ("weights", "gradients", "optimizer_states"):
        assert getattr(sixteen, part) == pytest.approx(getattr(one, part) / 16, rel=1e-6), part
    assert sixteen.activations == one.activations  # data parallel: each rank its own micro-batch
    # ZeRO-1 shards only the optimizer states, ZeRO-2 the gradients too.
    zero1 = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__zero_stage=1,
                                resources__workers=16), shape)
    zero2 = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__zero_stage=2,
                                resources__workers=16), shape)
    assert zero1.weights == zero2.weights == one.weights
    assert zero1.gradients == one.gradients and zero2.gradients == sixteen.gradients
    assert zero1.optimizer_states == zero2.optimizer_states == sixteen.optimizer_states
    # FSDP shards as ZeRO-3 does, but its master weights are the fp32 parameters themselves
    # (bf16 only while gathered for compute): the same 16 bytes per parameter, split otherwise.
    fsdp = estimate_memory(job(method__kind="full", resources__strategy="fsdp", resources__workers=16), shape)
    assert fsdp.weights == 2 * sixteen.weights and fsdp.gradients == 2 * sixteen.gradients
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer_states == pytest.approx(
        sixteen.weights + sixteen.gradients + sixteen.optimizer_states, rel=1e-6)


def test_bf16_keeps_fp32_master_weights_and_bf16_pure_halves_the_trained_bytes():
    shape = llama3()
    for strategy in ("ddp", "fsdp"):
        mixed = estimate_memory(job(method__kind="full", resources__strategy=strategy), shape)
        pure = estimate_memory(job(method__kind="full", resources__strategy=strategy,
                                   training__precision="bf16-pure"), shape)
        n = mixed.trainable_params
        assert mixed.weights + mixed.gradients + mixed.optimizer_states == pytest.approx(16 * n, rel=1e-6)
        assert pure.weights + pure.gradients + pure.optimizer_states == pytest.approx(8 * n, rel=1e-6)
    lora = estimate_memory(job(), shape)
    lora_pure = estimate_memory(job(training__precision="bf16-pure"), shape)
    assert lora.weights == lora_pure.weights  # the frozen base is bf16 either way
    assert lora_pure.adapter_weights == lora.adapter_weights // 2


def test_full_fine_tuning_costs_16_bytes_per_parameter_in_mixed_precision():
    shape = llama3()
    e = estimate_memory(job(method__kind="full"), shape)
    # bf16 weights (2) + bf16 gradients (2) + fp32 master (4) + two fp32 Adam moments (8)
    assert e.weights + e.gradients + e.optimizer_states == 16 * parameter_count(shape)


def test_offload_moves_the_optimizer_states_to_cpu():
    shape = llama3()
    kept = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__workers=8), shape)
    moved = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__workers=8,
                                resources__offload="optimizer"), shape)
    assert kept.optimizer_states > 0 and moved.optimizer_states == 0
    assert moved.offloaded == kept.optimizer_states
    assert moved.total == kept.total - kept.optimizer_states
    everything = estimate_memory(job(method__kind="full", resources__strategy="deepspeed", resources__zero_stage=3,
                                     resources__workers=8, resources__offload="all"), shape)
    assert everything.weights == 0 and everything.optimizer_states == 0


def test_gradient_checkpointing_lowers_activations():
    shape = llama3()
    plain = estimate_memory(job(method__kind="lora", training__per_device_batch_size=4), shape)
    checkpointed = estimate_memory(job(method__kind="lora", training__per_device_batch_size=4,
                                       training__gradient_checkpointing=True), shape)
    assert checkpointed.activations < plain.activations / 3  # the logits, kept either way, are most of what is left
    doubled = estimate_memory(job(method__kind="lora", training__per_device_batch_size=8), shape)
    assert doubled.activations == pytest.approx(2 * plain.activations, rel=0.01)


def test_full_fine_tune_of_8b_does_not_fit_one_80gb_gpu():
    e = estimate_memory(job(method__kind="full", training__gradient_checkpointing=True), llama3(), gpu_memory_gib=80)
    assert e.fits is False
    assert e.total > 100 * GiB
    assert any("deepspeed" in note or "lora" in note for note in e.notes)  # says what to change


def test_qlora_of_8b_fits_one_24gb_gpu():
    e = estimate_memory(job(method__kind="qlora", training__per_device_batch_size=2,
                            training__gradient_checkpointing=True), llama3(), gpu_memory_gib=24)
    assert e.fits is True
    assert e.total < 20 * GiB


def test_no_budget_means_no_verdict():
    e = estimate_memory(job(resources__gpus_per_worker=0, training__precision="fp32"), llama3())
    assert e.fits is None and e.overhead == 0  # CPU worker: no CUDA context
    assert e.weights == parameter_count(llama3()) * 4  # auto dtype on CPU: float32


# -------------------------------------------------------------------------- shapes


def test_shape_from_a_local_model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
        "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": True,
        "max_position_embeddings": 512}))
    shape = model_shape(str(tmp_path))
    assert (shape.num_kv_heads, shape.kv_dim, shape.tie_embeddings) == (2, 64, True)


def test_shape_from_the_hugging_face_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--acme--tiny-llama" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({
        "vocab_size": 500, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    shape = model_shape("acme/tiny-llama")
    assert (shape.vocab_size, shape.num_layers, shape.num_kv_heads) == (500, 2, 4)


def test_unknown_hub_id_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelShapeError, match="download it .* set model.path"):
        model_shape("acme/never-heard-of-it")


def test_a_config_that_is_not_llama_style_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 768, "n_layer": 12, "vocab_size": 50257}))
    with pytest.raises(ModelShapeError, match="Llama-style"):
        model_shape(str(tmp_path))


# ------------------------------------------------------------------------------ CLI


def ftctl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _gpu_job(tmp_path: Path, method: str) -> Path:
    path = tmp_path / f"{method}.yaml"
    path.write_text(f"""\
name: estimate-{method}
model: {{path: {LLAMA3_8B}}}
method: {{kind: {method}}}
data: {{train: {{path: yahma/alpaca-cleaned}}, max_seq_len: 2048}}
training: {{precision: bf16, per_device_batch_size: 2, gradient_checkpointing: true}}
resources: {{workers: 1, gpus_per_worker: 1}}
""")
    return path


def test_cli_exit_0_when_it_fits(tmp_path):
    result = ftctl("estimate", _gpu_job(tmp_path, "lora"))
    assert result.returncode == 0, result.stderr
    assert "GiB per GPU" in result.stdout and "fits" in result.stdout and "80 GiB" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_exit_3_when_it_cannot_fit(tmp_path):
    result = ftctl("estimate", _gpu_job(tmp_path, "full"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "does not fit" in result.stderr
    # and an override can make it fit: the same job, sharded by ZeRO-3 over 16 GPUs
    result = ftctl("estimate", _gpu_job(tmp_path, "full"), "resources.strategy=deepspeed",
                   "resources.zero_stage=3", "resources.workers=16")
    assert result.returncode == 0, result.stdout + result.stderr
    # a smaller budget turns a fitting job down
    result = ftctl("estimate", _gpu_job(tmp_path, "lora"), "--gpu-memory", "12")
    assert result.returncode == 3


def test_cli_exit_2_for_an_invalid_job(tmp_path):
    result = ftctl("estimate", _gpu_job(tmp_path, "lora"), "resources.workers=0", "training.lr=-1")
    assert result.returncode == 2
    assert "resources.workers" in result.stderr and "training.lr" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_on_cpu_estimates_ram_without_a_verdict():
    result = ftctl("estimate", REPO / "configs" / "quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert "RAM" in result.stdout and "fits" not in result.stdout


def test_cli_unknown_model_exits_1_with_advice(tmp_path):
    result = ftctl("estimate", _gpu_job(tmp_path, "lora"), "model.path=acme/never-heard-of-it")
    assert result.returncode == 1
    assert "set model.path" in result.stderr and "Traceback" not in result.stderr


def test_estimate_imports_no_heavy_library(tmp_path):
    job_file = _gpu_job(tmp_path, "lora")
    code = (
        "import json, sys\n"
        "import orchestrator.cli\n"
        f"rc = orchestrator.cli.main(['estimate', {str(job_file)!r}])\n"
        f"print(json.dumps({{'rc': rc, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"rc": 0, "loaded": []}
