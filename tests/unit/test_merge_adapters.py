"""Reading LoRA adapters and merging them into a base's weights, on hand-built adapter and base dirs.

Covers orchestrator/merging/adapters.py (scale, delta, refusals), merge.py (plan_targets,
check_combinable, merge_weights, write_cat_adapter) and export.py's refusals that come
before any model is loaded. No model is loaded: merge_weights only reads safetensors.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from orchestrator.merging.adapters import AdapterError, ModuleUpdate, load_adapter
from orchestrator.merging.export import MergeRequest, carried_adapters, merge_and_verify
from orchestrator.merging.merge import (
    MANIFEST, MergeError, check_combinable, merge_weights, plan_targets, write_cat_adapter,
)
from orchestrator.merging.weights import INDEX, SINGLE, base_weights

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
DOWN = "model.layers.0.mlp.down_proj"
EMBED = "model.embed_tokens"

# Base tensor shapes (out, in); none square, so a transposed update cannot pass for a right one.
BASE_SHAPES = {
    f"{EMBED}.weight": (10, 8),
    f"{Q}.weight": (6, 8), f"{Q}.bias": (6,),
    f"{V}.weight": (4, 8),
    f"{DOWN}.weight": (8, 5),
    "model.norm.weight": (8,),
    "lm_head.weight": (10, 8),
}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_base(path, config=None, dtype=torch.float32):
    """A model dir with config.json, a tokenizer file and model.safetensors; returns its tensors."""
    path.mkdir(parents=True)
    cfg = {"model_type": "llama", "dtype": "float32", "tie_word_embeddings": False, "vocab_size": 10}
    cfg.update(config or {})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.json").write_text('{"base": true}')
    tensors = {name: rand(*shape, seed=i).to(dtype) for i, (name, shape) in enumerate(BASE_SHAPES.items())}
    save_file(tensors, str(path / SINGLE))
    return tensors


def lora(out_features, in_features, r, seed):
    """(A, B) factors of a module: A (r, in), B (out, r)."""
    return rand(r, in_features, seed=100 + seed), rand(out_features, r, seed=200 + seed)


def make_adapter(path, modules, *, r=2, alpha=4, extra_tensors=None, **config):
    """An adapter dir: modules maps module name -> (A, B)."""
    path.mkdir(parents=True)
    tensors = {}
    for module, (A, B) in modules.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
    tensors.update(extra_tensors or {})
    save_file(tensors, str(path / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": sorted({m.split(".")[-1] for m in modules}),
           "base_model_name_or_path": None, "fan_in_fan_out": False, "use_rslora": False}
    cfg.update(config)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def base_dir(tmp_path):
    make_base(tmp_path / "base")
    return tmp_path / "base"


# ------------------------------------------------------------------ adapters.py: scale and delta


def test_scale_is_alpha_over_r_and_delta_is_scale_b_a(tmp_path):
    A, B = lora(6, 8, 4, seed=1)
    adapter = load_adapter(make_adapter(tmp_path / "a", {Q: (A, B)}, r=4, alpha=16))
    update = adapter.updates[Q]
    assert update.rank == 4 and update.scale == 4.0
    assert update.delta_shape() == (6, 8)
    assert torch.allclose(update.delta(), 4.0 * (B @ A), atol=1e-6)


def test_rslora_scale_is_alpha_over_sqrt_r(tmp_path):
    A, B = lora(6, 8, 4, seed=1)
    adapter = load_adapter(make_adapter(tmp_path / "a", {Q: (A, B)}, r=4, alpha=16, use_rslora=True))
    assert adapter.updates[Q].scale == pytest.approx(16 / math.sqrt(4))
    assert torch.allclose(adapter.updates[Q].delta(), 8.0 * (B @ A), atol=1e-6)


def test_alpha_pattern_overrides_alpha_per_module_and_rank_comes_from_the_factors(tmp_path):
    qa, qb = lora(6, 8, 2, seed=1)
    va, vb = lora(4, 8, 3, seed=2)  # rank_pattern-style: a different rank for v_proj
    adapter = load_adapter(make_adapter(tmp_path / "a", {Q: (qa, qb), V: (va, vb)}, r=2, alpha=4,
                                        alpha_pattern={"v_proj": 12}, rank_pattern={"v_proj": 3}))
    assert adapter.updates[Q].scale == 2.0      # 4 / 2
    assert adapter.updates[V].scale == 4.0      # 12 / 3
    assert adapter.updates[V].rank == 3


def test_alpha_pattern_matches_whole_name_parts_only(tmp_path):
    qa, qb = lora(6, 8, 2, seed=1)
    adapter = load_adapter(make_adapter(tmp_path / "a", {Q: (qa, qb)}, r=2, alpha=4, alpha_pattern={"proj": 100}))
    assert adapter.updates[Q].scale == 2.0  # "proj" is not the name of q_proj


def test_fan_in_fan_out_transposes_the_update(tmp_path):
    # A Conv1D-style layer stores its weight (in, out): the update must be laid out the same way.
    A, B = lora(6, 8, 2, seed=3)
    adapter = load_adapter(make_adapter(tmp_path / "a", {Q: (A, B)}, r=2, alpha=2, fan_in_fan_out=True))
    update = adapter.updates[Q]
    assert update.fan_in_fan_out and update.delta_shape() == (8, 6)
    assert torch.allclose(update.delta(), (B @ A).T, atol=1e-6)


def test_an_embedding_update_is_laid_out_like_the_embedding(tmp_path):
    A, B = rand(2, 10, seed=1), rand(8, 2, seed=2)  # lora_embedding_A (r, vocab), lora_embedding_B (dim, r)
    path = make_adapter(tmp_path / "a", {}, r=2, alpha=2, extra_tensors={
        f"base_model.model.{EMBED}.lora_embedding_A": A, f"base_model.model.{EMBED}.lora_embedding_B": B})
    update = load_adapter(path).updates[EMBED]
    assert update.kind == "embedding" and update.delta_shape() == (10, 8)
    assert torch.allclose(update.delta(), (B @ A).T, atol=1e-6)


def test_a_run_dir_is_read_through_its_adapter_subdir_and_saved_whole_tensors_are_replacements(tmp_path):
    A, B = lora(6, 8, 2, seed=1)
    make_adapter(tmp_path / "run" / "adapter", {Q: (A, B)}, extra_tensors={
        "base_model.model.lm_head.weight": torch.zeros(10, 8)})
    adapter = load_adapter(tmp_path / "run")
    assert adapter.path == tmp_path / "run" / "adapter" and adapter.name == "run/adapter"
    assert set(adapter.updates) == {Q}
    assert set(adapter.replacements) == {"lm_head.weight"}


# ------------------------------------------------------------------ adapters.py: refusals


def test_a_non_lora_adapter_is_refused(tmp_path):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, peft_type="IA3")
    with pytest.raises(AdapterError, match="is a IA3 adapter; ftctl merges LoRA"):
        load_adapter(path)


@pytest.mark.parametrize("flag, value, what", [
    ("use_qalora", True, "QA-LoRA"), ("layer_replication", [[0, 1]], "layer replication"),
])
def test_an_unsupported_lora_variant_is_refused_with_the_alternative(tmp_path, flag, value, what):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, **{flag: value})
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    assert what in str(err.value) and flag in str(err.value) and "merge_and_unload" in str(err.value)


def test_unsupported_flags_that_are_off_do_not_refuse(tmp_path):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, use_qalora=False, layer_replication=None,
                        init_lora_weights=True)
    assert set(load_adapter(path).updates) == {Q}


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_an_init_that_changes_the_base_is_refused(tmp_path, init):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, init_lora_weights=init)
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    assert init in str(err.value) and "changes the base weights" in str(err.value)


def test_an_adapter_without_weights_is_refused(tmp_path):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter weights"):
        load_adapter(path)


def test_a_dir_without_adapter_config_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="not a PEFT adapter dir"):
        load_adapter(tmp_path)


def test_a_truncated_adapter_file_is_reported_as_damaged(tmp_path):
    path = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    assert "adapter_model.safetensors" in str(err.value) and "damaged" in str(err.value)


def test_a_module_with_only_lora_a_is_refused_naming_the_module(tmp_path):
    A, _B = lora(6, 8, 2, seed=1)
    path = make_adapter(tmp_path / "a", {V: lora(4, 8, 2, 2)},
                        extra_tensors={f"base_model.model.{Q}.lora_A.weight": A})
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    assert Q in str(err.value) and "only one of its two LoRA factors" in str(err.value)


def test_factors_of_different_ranks_are_refused(tmp_path):
    path = make_adapter(tmp_path / "a", {Q: (rand(2, 8), rand(6, 3))})
    with pytest.raises(AdapterError, match="rank 2 and 3"):
        load_adapter(path)


# ------------------------------------------------------------------ merge_weights


def merge_one(base_dir, adapter_dir, out, **kwargs):
    kwargs.setdefault("dtype", "auto")
    config = json.loads((base_dir / "config.json").read_text())
    adapters = [load_adapter(adapter_dir)]
    return merge_weights(base_weights(base_dir), config, adapters, kwargs.pop("weights", [1.0]),
                         kwargs.pop("method", "linear"), kwargs.pop("dtype"), out, **kwargs)


def read_all(root):
    base = base_weights(root)
    return {name: base.read(name) for _f, name in base.names()}


def test_merged_weight_is_base_plus_scaled_update_and_the_rest_is_unchanged(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    adapter = make_adapter(tmp_path / "a", {Q: (A, B)}, r=2, alpha=6)  # scale 3
    stats = merge_one(base_dir, adapter, tmp_path / "out", dtype="float32")
    merged = read_all(tmp_path / "out")
    assert set(merged) == set(base)
    assert torch.allclose(merged[f"{Q}.weight"], base[f"{Q}.weight"] + 3.0 * (B @ A), atol=1e-6, rtol=1e-6)
    assert not torch.equal(merged[f"{Q}.weight"], base[f"{Q}.weight"])
    for name in base:
        if name != f"{Q}.weight":
            assert merged[name].dtype == base[name].dtype
            assert merged[name].numpy().tobytes() == base[name].numpy().tobytes(), name
    assert stats["tensors"] == len(base) and stats["tensors_changed"] == 1 and stats["modules"] == 1
    # The base's other files come along; its weights do not get copied twice.
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text()) == {"base": True}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", SINGLE, "tokenizer.json"]


def test_an_adapter_weight_scales_the_update(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    merge_one(base_dir, make_adapter(tmp_path / "a", {Q: (A, B)}, r=2, alpha=2), tmp_path / "out", weights=[0.5])
    merged = read_all(tmp_path / "out")
    assert torch.allclose(merged[f"{Q}.weight"], base[f"{Q}.weight"] + 0.5 * (B @ A), atol=1e-6, rtol=1e-6)


def test_fan_in_fan_out_merges_into_an_in_out_weight(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(5, 8, 2, seed=4)  # down_proj stored (8, 5): out 5, in 8 under fan_in_fan_out
    adapter = make_adapter(tmp_path / "a", {DOWN: (A, B)}, r=2, alpha=2, fan_in_fan_out=True)
    merge_one(base_dir, adapter, tmp_path / "out")
    merged = read_all(tmp_path / "out")
    assert torch.allclose(merged[f"{DOWN}.weight"], base[f"{DOWN}.weight"] + (B @ A).T, atol=1e-6, rtol=1e-6)


def test_bfloat16_output_casts_every_float_tensor_and_records_the_dtype(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    merge_one(base_dir, make_adapter(tmp_path / "a", {Q: (A, B)}), tmp_path / "out", dtype="bfloat16")
    merged = read_all(tmp_path / "out")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    expected = (base[f"{Q}.weight"] + 2.0 * (B @ A)).to(torch.bfloat16)  # added in fp32, cast once
    assert torch.equal(merged[f"{Q}.weight"], expected)
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"].to(torch.bfloat16))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "llama"
    assert json.loads((base_dir / "config.json").read_text())["dtype"] == "float32"  # the base is untouched


def test_auto_dtype_keeps_a_bfloat16_base_in_bfloat16(tmp_path):
    base_dir = tmp_path / "base"
    make_base(base_dir, {"dtype": "bfloat16"}, dtype=torch.bfloat16)
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    merge_one(base_dir, make_adapter(tmp_path / "a", {Q: (A, B)}), tmp_path / "out", dtype="auto")
    merged = read_all(tmp_path / "out")
    assert merged[f"{Q}.weight"].dtype == torch.bfloat16
    assert torch.equal(merged[f"{Q}.weight"], (base[f"{Q}.weight"].float() + 2.0 * (B @ A)).to(torch.bfloat16))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_shards_respect_shard_bytes_and_the_index_covers_every_tensor(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    stats = merge_one(base_dir, make_adapter(tmp_path / "a", {Q: (A, B)}), tmp_path / "out", shard_bytes=400)
    out = tmp_path / "out"
    index = json.loads((out / INDEX).read_text())
    assert set(index["weight_map"]) == set(base)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in base.values())
    assert len(stats["shards"]) > 2 and stats["shards"] == sorted(set(index["weight_map"].values()))
    assert not (out / SINGLE).exists()
    for shard in stats["shards"]:
        with safe_open(str(out / shard), framework="pt") as handle:
            sizes = [handle.get_tensor(n).numel() * 4 for n in handle.keys()]
        assert sum(sizes) <= 400 or len(sizes) == 1
    assert set(read_all(out)) == set(base)


def test_an_indexed_base_merged_into_one_shard_leaves_no_stale_index(tmp_path):
    base_dir = tmp_path / "base"
    tensors = make_base(base_dir)
    (base_dir / SINGLE).unlink()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:3]}, str(base_dir / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[3:]}, str(base_dir / "model-00002-of-00002.safetensors"))
    (base_dir / INDEX).write_text(json.dumps({"weight_map": {
        n: f"model-0000{1 if i < 3 else 2}-of-00002.safetensors" for i, n in enumerate(names)}}))
    A, B = lora(6, 8, 2, seed=1)
    merge_one(base_dir, make_adapter(tmp_path / "a", {Q: (A, B)}), tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", SINGLE, "tokenizer.json"]
    assert set(load_file(str(out / SINGLE))) == set(tensors)


def test_a_saved_whole_tensor_replaces_the_base_tensor(tmp_path, base_dir):
    A, B = lora(6, 8, 2, seed=1)
    head = torch.full((10, 8), 0.25)
    adapter = make_adapter(tmp_path / "a", {Q: (A, B)}, extra_tensors={"base_model.model.lm_head.weight": head})
    stats = merge_one(base_dir, adapter, tmp_path / "out")
    assert torch.equal(read_all(tmp_path / "out")["lm_head.weight"], head)
    assert stats["tensors_changed"] == 2


def test_a_lora_bias_is_added_to_the_base_bias(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    bias = rand(6, seed=9)
    adapter = make_adapter(tmp_path / "a", {Q: (A, B)}, r=2, alpha=6, lora_bias=True,
                           extra_tensors={f"base_model.model.{Q}.lora_B.bias": bias})
    merge_one(base_dir, adapter, tmp_path / "out")
    merged = read_all(tmp_path / "out")
    assert torch.allclose(merged[f"{Q}.bias"], base[f"{Q}.bias"] + 3.0 * bias, atol=1e-6, rtol=1e-6)


def test_a_lora_bias_on_a_module_without_a_base_bias_is_not_silently_dropped(tmp_path, base_dir):
    # v_proj has no bias in the base: the adapter's lora_B bias has nowhere to go, so the merge must refuse
    # rather than write a model that lacks part of the adapter.
    adapter = make_adapter(tmp_path / "a", {V: lora(4, 8, 2, 1)}, lora_bias=True,
                           extra_tensors={f"base_model.model.{V}.lora_B.bias": torch.ones(4)})
    with pytest.raises((AdapterError, MergeError), match=V):
        merge_one(base_dir, adapter, tmp_path / "out")


def test_dora_rescales_each_output_row_to_its_magnitude(tmp_path, base_dir):
    base = read_all(base_dir)
    A, B = lora(6, 8, 2, seed=1)
    magnitude = torch.linspace(0.5, 3.0, 6)
    adapter = make_adapter(tmp_path / "a", {Q: (A, B)}, r=2, alpha=2, use_dora=True,
                           extra_tensors={f"base_model.model.{Q}.lora_magnitude_vector": magnitude})
    merge_one(base_dir, adapter, tmp_path / "out")
    merged = read_all(tmp_path / "out")[f"{Q}.weight"]
    direction = base[f"{Q}.weight"] + B @ A
    assert torch.allclose(torch.linalg.norm(merged, dim=1), magnitude, atol=1e-5)
    assert torch.allclose(merged, direction / torch.linalg.norm(direction, dim=1, keepdim=True)
                          * magnitude.view(-1, 1), atol=1e-5)


def test_an_unknown_output_dtype_is_refused_before_anything_is_written(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    with pytest.raises(MergeError, match="unknown dtype 'fp8'"):
        merge_one(base_dir, adapter, tmp_path / "out", dtype="fp8")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ plan_targets


def plan(base_dir, *adapter_dirs, config=None):
    base = base_weights(base_dir)
    cfg = config if config is not None else json.loads((base_dir / "config.json").read_text())
    return plan_targets([load_adapter(p) for p in adapter_dirs], base.shapes(), cfg)


def test_targets_are_the_base_weight_and_bias_names(tmp_path, base_dir):
    targets = plan(base_dir, make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1), V: lora(4, 8, 2, 2)}))
    assert targets[Q].weight == f"{Q}.weight" and targets[Q].bias == f"{Q}.bias"
    assert targets[V].weight == f"{V}.weight"


def test_a_module_the_base_lacks_is_refused_naming_it(tmp_path, base_dir):
    up = "model.layers.0.mlp.up_proj"
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1), up: lora(5, 8, 2, 2)})
    with pytest.raises(AdapterError) as err:
        plan(base_dir, adapter)
    assert up in str(err.value) and "Is this the base the adapter was trained on?" in str(err.value)


def test_an_adapter_for_a_model_of_another_size_is_refused_as_a_different_base(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 16, 2, 1)})  # hidden 16, the base has 8
    with pytest.raises(AdapterError) as err:
        plan(base_dir, adapter)
    message = str(err.value)
    assert "different base" in message and "[6, 16]" in message and "[6, 8]" in message


def test_a_second_adapter_for_another_base_is_refused_too(tmp_path, base_dir):
    # The first adapter fits; the second also changes q_proj, but was trained with hidden size 16.
    good = make_adapter(tmp_path / "good", {Q: lora(6, 8, 2, 1)})
    other = make_adapter(tmp_path / "other", {Q: lora(6, 16, 2, 2)})
    with pytest.raises(AdapterError) as err:
        plan(base_dir, good, other)
    assert "different base" in str(err.value) and str(tmp_path / "other") in str(err.value)


def test_an_update_to_a_tied_embedding_is_refused(tmp_path, base_dir):
    path = make_adapter(tmp_path / "a", {}, extra_tensors={
        f"base_model.model.{EMBED}.lora_embedding_A": rand(2, 10), f"base_model.model.{EMBED}.lora_embedding_B": rand(8, 2)})
    assert set(plan(base_dir, path)) == {EMBED}  # untied: fine
    with pytest.raises(AdapterError, match="ties to its output head"):
        plan(base_dir, path, config={"tie_word_embeddings": True})


# ------------------------------------------------------------------ check_combinable


def test_the_same_adapter_twice_is_refused_even_under_another_path(tmp_path):
    first = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    copy = shutil.copytree(first, tmp_path / "copy")
    adapters = [load_adapter(first), load_adapter(copy)]
    with pytest.raises(MergeError, match="same adapter"):
        check_combinable(adapters, [1.0, 1.0], "linear")


def test_weights_must_match_the_adapters(tmp_path):
    adapters = [load_adapter(make_adapter(tmp_path / n, {Q: lora(6, 8, 2, i)})) for i, n in enumerate("ab")]
    check_combinable(adapters, [1.0, 0.5], "ties")
    with pytest.raises(MergeError, match="2 adapters but 1 weights"):
        check_combinable(adapters, [1.0], "linear")
    with pytest.raises(MergeError, match="unknown merge method 'avg'"):
        check_combinable(adapters, [1.0, 1.0], "avg")


def test_dora_adapters_are_merged_one_at_a_time_and_only_with_weight_one(tmp_path):
    dora = load_adapter(make_adapter(tmp_path / "dora", {Q: lora(6, 8, 2, 1)}, use_dora=True, extra_tensors={
        f"base_model.model.{Q}.lora_magnitude_vector.weight": torch.ones(6)}))
    plain = load_adapter(make_adapter(tmp_path / "plain", {V: lora(4, 8, 2, 2)}))
    assert dora.uses_dora and not plain.uses_dora
    check_combinable([dora], [1.0], "linear")
    with pytest.raises(MergeError, match="DoRA adapter merges only with weight 1"):
        check_combinable([dora], [0.5], "linear")
    with pytest.raises(MergeError, match="DoRA adapters are merged one at a time"):
        check_combinable([plain, dora], [1.0, 1.0], "linear")


def test_a_hand_set_magnitude_makes_a_multi_adapter_merge_refuse(tmp_path):
    a = load_adapter(make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}))
    b = load_adapter(make_adapter(tmp_path / "b", {Q: lora(6, 8, 2, 2)}))
    b.updates[Q] = ModuleUpdate(A=b.updates[Q].A, B=b.updates[Q].B, scale=1.0, magnitude=torch.ones(6))
    with pytest.raises(MergeError, match="DoRA"):
        check_combinable([a, b], [1.0, 1.0], "ties")


def test_whole_tensors_are_refused_in_a_multi_adapter_merge(tmp_path):
    a = load_adapter(make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}))
    b = load_adapter(make_adapter(tmp_path / "b", {Q: lora(6, 8, 2, 2)}, extra_tensors={
        "base_model.model.lm_head.weight": torch.zeros(10, 8)}))
    with pytest.raises(MergeError, match="lm_head.weight"):
        check_combinable([a, b], [1.0, 1.0], "linear")


def test_two_adapters_linear_merge_is_the_weighted_sum_of_their_updates(tmp_path, base_dir):
    base = read_all(base_dir)
    a = load_adapter(make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1), V: lora(4, 8, 2, 2)}, r=2, alpha=4))
    b = load_adapter(make_adapter(tmp_path / "b", {Q: lora(6, 8, 3, 3)}, r=3, alpha=3))
    config = json.loads((base_dir / "config.json").read_text())
    merge_weights(base_weights(base_dir), config, [a, b], [0.5, 2.0], "linear", "float32", tmp_path / "out")
    merged = read_all(tmp_path / "out")
    want_q = base[f"{Q}.weight"] + 0.5 * a.updates[Q].delta() + 2.0 * b.updates[Q].delta()
    assert torch.allclose(merged[f"{Q}.weight"], want_q, atol=1e-6, rtol=1e-6)
    assert torch.allclose(merged[f"{V}.weight"], base[f"{V}.weight"] + 0.5 * a.updates[V].delta(), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ write_cat_adapter


def test_the_stacked_adapter_applies_the_weighted_sum_of_the_adapters(tmp_path):
    a = load_adapter(make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1), V: lora(4, 8, 2, 2)}, r=2, alpha=8))
    b = load_adapter(make_adapter(tmp_path / "b", {Q: lora(6, 8, 3, 3), DOWN: lora(8, 5, 3, 4)}, r=3, alpha=3,
                                  use_rslora=True))
    weights = [0.7, -0.4]
    info = write_cat_adapter([a, b], weights, tmp_path / "cat")
    assert info["rank"] == 5 and info["modules"] == 3
    cat = load_adapter(tmp_path / "cat")
    assert set(cat.updates) == {Q, V, DOWN}
    assert {u.rank for u in cat.updates.values()} == {5}
    assert torch.allclose(cat.updates[Q].delta(), 0.7 * a.updates[Q].delta() - 0.4 * b.updates[Q].delta(), atol=1e-5)
    assert torch.allclose(cat.updates[V].delta(), 0.7 * a.updates[V].delta(), atol=1e-5)      # only a targets it
    assert torch.allclose(cat.updates[DOWN].delta(), -0.4 * b.updates[DOWN].delta(), atol=1e-5)  # only b
    config = json.loads((tmp_path / "cat" / "adapter_config.json").read_text())
    assert config["r"] == 5 and config["lora_alpha"] == 5 and config["use_rslora"] is False
    assert sorted(config["target_modules"]) == sorted([Q, V, DOWN])


# ------------------------------------------------------------------ export: refusals before loading


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_out_equal_to_the_base_is_refused_and_the_base_is_untouched(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    before = listing(base_dir)
    with pytest.raises(MergeError, match="--out is the base model dir"):
        merge_and_verify(MergeRequest(adapters=[adapter], out=base_dir, base=str(base_dir)))
    assert listing(base_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base"]


def test_a_non_empty_out_is_refused_and_left_as_it_was(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MergeError, match="already exists and is not empty"):
        merge_and_verify(MergeRequest(adapters=[adapter], out=out, base=str(base_dir)))
    assert listing(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base", "out"]


def test_out_naming_an_existing_file_is_refused_and_the_file_kept(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    out = tmp_path / "merged.safetensors"
    out.write_text("mine")
    with pytest.raises(MergeError, match=str(out)):
        merge_and_verify(MergeRequest(adapters=[adapter], out=out, base=str(base_dir)))
    assert out.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base", "merged.safetensors"]


@pytest.mark.parametrize("density", [0.0, 1.5])
def test_a_density_outside_zero_one_is_refused_as_a_merge_error(tmp_path, base_dir, density):
    a = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    b = make_adapter(tmp_path / "b", {Q: lora(6, 8, 2, 2)})
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="density"):
        merge_and_verify(MergeRequest(adapters=[a, b], out=out, base=str(base_dir), method="ties", density=density))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "base"]


def write_manifest(model_dir, adapters=(), lineage=()):
    (model_dir / MANIFEST).write_text(json.dumps({
        "created": "2024-01-01T00:00:00Z", "lineage": list(lineage),
        "adapters": [{"digest": d, "path": p, "weight": 1.0} for d, p in adapters]}))


def test_carried_adapters_lists_this_merge_and_every_earlier_one(tmp_path, base_dir):
    assert carried_adapters(base_dir) == []
    write_manifest(base_dir, adapters=[("d2", "/runs/two/adapter")],
                   lineage=[{"digest": "d1", "path": "/runs/one/adapter", "merged_at": "2023-12-01T00:00:00Z"}])
    carried = carried_adapters(base_dir)
    assert [(c["digest"], c["path"]) for c in carried] == [("d1", "/runs/one/adapter"), ("d2", "/runs/two/adapter")]
    assert carried[1]["merged_at"] == "2024-01-01T00:00:00Z"
    (base_dir / MANIFEST).write_text("{not json")
    with pytest.raises(MergeError, match="damaged"):
        carried_adapters(base_dir)


@pytest.mark.parametrize("where", ["adapters", "lineage"])
def test_merging_an_adapter_the_base_already_carries_is_refused(tmp_path, base_dir, where):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    digest = load_adapter(adapter).digest
    if where == "adapters":
        write_manifest(base_dir, adapters=[(digest, "/runs/old/adapter")])
    else:  # merged two merges ago
        write_manifest(base_dir, adapters=[("other", "/runs/x/adapter")],
                       lineage=[{"digest": digest, "path": "/runs/old/adapter", "merged_at": None}])
    out = tmp_path / "out"
    with pytest.raises(MergeError) as err:
        merge_and_verify(MergeRequest(adapters=[adapter], out=out, base=str(base_dir)))
    assert "already carries" in str(err.value) and "/runs/old/adapter" in str(err.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base"]  # no staging dir left either


def test_the_adapter_recorded_base_is_used_when_no_base_is_given(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, base_model_name_or_path=str(base_dir))
    write_manifest(base_dir, adapters=[(load_adapter(adapter).digest, "/runs/old/adapter")])
    with pytest.raises(MergeError, match="already carries"):
        merge_and_verify(MergeRequest(adapters=[adapter], out=tmp_path / "out"))
    hub = make_adapter(tmp_path / "hub", {Q: lora(6, 8, 2, 1)}, base_model_name_or_path="org/some-model")
    with pytest.raises(MergeError, match="pass the base model dir with --base"):
        merge_and_verify(MergeRequest(adapters=[hub], out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_qlora_merges_are_refused_alone_without_heldout_data_or_with_other_adapters(tmp_path, base_dir):
    a = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)})
    b = make_adapter(tmp_path / "b", {Q: lora(6, 8, 2, 2)})
    nf4 = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="merge it alone"):
        merge_and_verify(MergeRequest(adapters=[a, b], out=out, base=str(base_dir), quantization=nf4))
    with pytest.raises(MergeError, match="--heldout"):
        merge_and_verify(MergeRequest(adapters=[a], out=out, base=str(base_dir), quantization=nf4))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "base"]


def test_a_broken_adapter_or_base_is_a_merge_error(tmp_path, base_dir):
    adapter = make_adapter(tmp_path / "a", {Q: lora(6, 8, 2, 1)}, peft_type="IA3")
    with pytest.raises(MergeError, match="IA3"):
        merge_and_verify(MergeRequest(adapters=[adapter], out=tmp_path / "out", base=str(base_dir)))
    good = make_adapter(tmp_path / "good", {Q: lora(6, 8, 2, 1)})
    (base_dir / SINGLE).unlink()
    with pytest.raises(MergeError, match="holds no model weights"):
        merge_and_verify(MergeRequest(adapters=[good], out=tmp_path / "out", base=str(base_dir)))
    assert not (tmp_path / "out").exists()
