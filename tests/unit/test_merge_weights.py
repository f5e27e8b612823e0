"""Model-dir weights for merging (orchestrator/merging/weights.py): sizes, sharded writing, reading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from orchestrator.merging.weights import INDEX, SINGLE, ShardWriter, WeightsError, base_weights, parse_size

# ---------------------------------------------------------------------- parse_size


@pytest.mark.parametrize("text, size", [
    ("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("64KiB", 65536), ("64kib", 65536), ("1GiB", 2**30),
    ("1.5GB", 1_500_000_000), (" 10 MB ", 10 * 10**6), ("123", 123), ("4096B", 4096), ("1TB", 10**12),
    (2048, 2048),
])
def test_parse_size_reads_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("junk", ["", "GB", "two GB", "2XB", "-1GB", "2 G B", "1e9"])
def test_parse_size_refuses_junk_with_an_example(junk):
    with pytest.raises(ValueError, match="2GB"):
        parse_size(junk)


# --------------------------------------------------------------------- ShardWriter


def f32(n, fill=0.0):
    return torch.arange(n, dtype=torch.float32) + fill


def shard_tensor_bytes(path):
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name).numel() * 4 for name in handle.keys()}


def test_tensors_are_split_into_shards_no_larger_than_max_bytes(tmp_path):
    tensors = {f"t{i}": f32(100, i) for i in range(5)}  # 400 bytes each
    writer = ShardWriter(tmp_path, max_bytes=1000)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    names = writer.close()
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, INDEX])  # no part-* left over
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["metadata"]["total_size"] == 5 * 400 == writer.total_bytes
    assert set(index["weight_map"]) == set(tensors)
    for name in names:
        sizes = shard_tensor_bytes(tmp_path / name)
        assert sum(sizes.values()) <= 1000
        assert all(index["weight_map"][t] == name for t in sizes)
    assert writer.largest_shard_bytes == 800
    for name, tensor in tensors.items():
        assert torch.equal(load_file(str(tmp_path / index["weight_map"][name]))[name], tensor)


def test_a_tensor_larger_than_max_bytes_gets_a_shard_of_its_own(tmp_path):
    writer = ShardWriter(tmp_path, max_bytes=1000)
    writer.add("small.a", f32(100))
    writer.add("big", f32(1000))           # 4000 bytes
    writer.add("small.b", f32(100, 1))
    names = writer.close()
    index = json.loads((tmp_path / INDEX).read_text())["weight_map"]
    assert len(names) == 3
    assert [sorted(shard_tensor_bytes(tmp_path / n)) for n in names] == [["small.a"], ["big"], ["small.b"]]
    assert index == {"big": names[1], "small.a": names[0], "small.b": names[2]}
    assert writer.largest_shard_bytes == 4000


def test_one_shard_is_a_plain_model_safetensors_without_an_index(tmp_path):
    tensors = {"a": f32(10), "b": torch.ones(2, 3, dtype=torch.bfloat16), "c": torch.tensor([1, 2, 3])}
    writer = ShardWriter(tmp_path, max_bytes=10**9)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    assert writer.close() == [SINGLE]
    assert [p.name for p in tmp_path.iterdir()] == [SINGLE]
    back = load_file(str(tmp_path / SINGLE))
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


def test_non_contiguous_tensors_are_written_by_value(tmp_path):
    m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    writer = ShardWriter(tmp_path, max_bytes=10**6)
    writer.add("t", m.T)
    writer.close()
    assert torch.equal(load_file(str(tmp_path / SINGLE))["t"], m.T)


# ---------------------------------------------------------------------- base_weights


def model_dir(path, config=None):
    """An empty model dir: config.json only."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else {}))
    return path


def test_reads_a_single_file_model_dir(tmp_path):
    tensors = {"model.embed.weight": torch.randn(4, 3), "model.norm.weight": torch.ones(3, dtype=torch.bfloat16)}
    root = model_dir(tmp_path / "m")
    save_file(tensors, str(root / SINGLE))
    base = base_weights(root)
    assert base.files == (SINGLE,)
    assert sorted(n for _f, n in base.names()) == sorted(tensors)
    assert base.shapes() == {"model.embed.weight": ((4, 3), "F32"), "model.norm.weight": ((3,), "BF16")}
    for name, tensor in tensors.items():
        assert torch.equal(base.read(name), tensor)


def test_reads_an_indexed_model_dir_file_by_file(tmp_path):
    root = model_dir(tmp_path / "m")
    first = {"a.weight": torch.randn(2, 2), "c.weight": torch.randn(3)}
    second = {"b.weight": torch.randn(5)}
    save_file(first, str(root / "model-00001-of-00002.safetensors"))
    save_file(second, str(root / "model-00002-of-00002.safetensors"))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
                  "c.weight": "model-00001-of-00002.safetensors"}
    (root / INDEX).write_text(json.dumps({"metadata": {"total_size": 48}, "weight_map": weight_map}))
    base = base_weights(root)
    assert base.files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert list(base.names()) == [("model-00001-of-00002.safetensors", "a.weight"),
                                  ("model-00001-of-00002.safetensors", "c.weight"),
                                  ("model-00002-of-00002.safetensors", "b.weight")]
    for name, tensor in {**first, **second}.items():
        assert torch.equal(base.read(name), tensor)
    assert set(base.shapes()) == set(weight_map)


def test_a_dir_without_config_json_is_not_a_model_dir(tmp_path):
    save_file({"a": torch.ones(1)}, str(tmp_path / SINGLE))
    with pytest.raises(WeightsError, match="no config.json"):
        base_weights(tmp_path)


def test_a_quantized_base_is_refused_with_what_to_pass_instead(tmp_path):
    root = model_dir(tmp_path / "m", {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})
    save_file({"a": torch.ones(1)}, str(root / SINGLE))
    with pytest.raises(WeightsError) as err:
        base_weights(root)
    message = str(err.value)
    assert "bitsandbytes-quantized" in message and "unquantized" in message and "--base" in message


def test_pytorch_bin_weights_are_refused_with_how_to_convert(tmp_path):
    root = model_dir(tmp_path / "m")
    torch.save({"a": torch.ones(1)}, root / "pytorch_model.bin")
    with pytest.raises(WeightsError) as err:
        base_weights(root)
    assert "pytorch_model" in str(err.value) and "safe_serialization=True" in str(err.value)


def test_a_dir_with_no_weights_at_all_says_so(tmp_path):
    with pytest.raises(WeightsError, match="holds no model weights"):
        base_weights(model_dir(tmp_path / "m"))


@pytest.mark.parametrize("text", ['{"weight_map": {"a": "model-0', "", '{"metadata": {}}', "[]",
                                  '{"weight_map": null}'])
def test_a_damaged_index_says_to_resave_the_model(tmp_path, text):
    root = model_dir(tmp_path / "m")
    (root / INDEX).write_text(text)
    with pytest.raises(WeightsError) as err:
        base_weights(root)
    assert INDEX in str(err.value) and "damaged" in str(err.value) and "re-save" in str(err.value)


def test_an_index_naming_a_missing_shard_lists_it(tmp_path):
    root = model_dir(tmp_path / "m")
    save_file({"a": torch.ones(1)}, str(root / "model-00001-of-00002.safetensors"))
    (root / INDEX).write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                         "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(WeightsError, match="missing: model-00002-of-00002.safetensors$"):
        base_weights(root)


def test_a_truncated_single_weights_file_is_reported_as_damaged(tmp_path):
    root = model_dir(tmp_path / "m")
    save_file({"a": torch.ones(100)}, str(root / SINGLE))
    data = (root / SINGLE).read_bytes()
    (root / SINGLE).write_bytes(data[:20])
    with pytest.raises(WeightsError, match="damaged"):
        base_weights(root)
