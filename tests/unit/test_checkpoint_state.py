import random

import numpy as np
import pytest
import torch

from orchestrator.checkpoint.state import load_tensors, restore_rng, rng_state, snapshot
from orchestrator.checkpoint.store import CheckpointError


class Point:
    """Not a tensor: pickling it needs the class, which weights_only loading refuses by default."""

    def __init__(self, x, y):
        self.x, self.y = x, y


def draws():
    return (random.random(), random.gauss(0.0, 1.0), np.random.rand(4).tolist(), torch.rand(4).tolist())


def test_restoring_rng_state_repeats_every_stream():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0.0, 1.0)  # leave a cached gauss value in python's state
    state = rng_state()
    first = draws()
    assert draws() != first  # the streams move on
    restore_rng(state)
    assert draws() == first


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    np.random.standard_normal()  # numpy keeps a cached gauss too
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    first = draws()
    draws()
    restore_rng(load_tensors(path))
    assert draws() == first


def test_snapshot_clones_tensors_and_keeps_the_structure():
    weight = torch.ones(3)
    bias = torch.zeros(2, requires_grad=True)
    state = {"model": {"weight": weight, "layers": [bias, (weight, 7)]}, "step": 12, "name": "adamw", "none": None}
    copy = snapshot(state)
    weight.add_(5.0)
    with torch.no_grad():
        bias.fill_(9.0)
    assert torch.equal(copy["model"]["weight"], torch.ones(3))
    assert torch.equal(copy["model"]["layers"][0], torch.zeros(2))
    assert torch.equal(copy["model"]["layers"][1][0], torch.ones(3))
    assert isinstance(copy["model"]["layers"], list)
    assert isinstance(copy["model"]["layers"][1], tuple)
    assert copy["model"]["layers"][1][1] == 7
    assert copy["step"] == 12 and copy["name"] == "adamw" and copy["none"] is None
    assert not copy["model"]["layers"][0].requires_grad
    assert copy["model"]["weight"].data_ptr() != weight.data_ptr()


def test_load_tensors_reads_a_plain_dict_of_tensors(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"exp_avg": torch.arange(4.0), "step": 3, "groups": [{"lr": 1e-3}]}, path)
    loaded = load_tensors(path)
    assert torch.equal(loaded["exp_avg"], torch.arange(4.0))
    assert loaded["step"] == 3 and loaded["groups"] == [{"lr": 1e-3}]


def test_load_tensors_refuses_a_pickled_object_naming_the_file(tmp_path):
    path = tmp_path / "step-00000010" / "trainer_state.pt"
    path.parent.mkdir()
    torch.save({"point": Point(1, 2)}, path)
    with pytest.raises(CheckpointError, match="step-00000010/trainer_state.pt cannot be loaded safely"):
        load_tensors(path)


def test_load_tensors_refuses_a_truncated_file(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"weight": torch.randn(64, 64)}, whole)
    data = whole.read_bytes()
    path = tmp_path / "optimizer.pt"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="optimizer.pt cannot be loaded safely"):
        load_tensors(path)


def test_load_tensors_accepts_a_class_on_the_allowlist(tmp_path):
    path = tmp_path / "extra.pt"
    torch.save({"point": Point(1, 2), "weight": torch.ones(2)}, path)
    loaded = load_tensors(path, allowed=(Point,))
    assert isinstance(loaded["point"], Point)
    assert (loaded["point"].x, loaded["point"].y) == (1, 2)
    assert torch.equal(loaded["weight"], torch.ones(2))
    with pytest.raises(CheckpointError):  # the allowlist applies to that one call only
        load_tensors(path)
