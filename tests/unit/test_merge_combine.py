"""Merge methods' math (orchestrator/merging/combine.py) on small hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from orchestrator.merging.combine import METHODS, combine, dare, trim


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# ------------------------------------------------------------------- linear / cat


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_linear_and_cat_are_exactly_the_weighted_sum(method):
    a, b, c = t(1.0, -2.0, 3.0), t(0.5, 0.25, -1.0), t(-4.0, 0.0, 2.0)
    out = combine(method, [a, b, c], [1.0, 2.0, -0.5])
    assert torch.equal(out, a * 1.0 + b * 2.0 + c * -0.5)


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_an_adapter_that_does_not_touch_the_tensor_contributes_nothing(method):
    a, b = t(1.0, -2.0, 3.0), t(0.5, 0.25, -1.0)
    with_none = combine(method, [a, None, b], [0.5, 100.0, 2.0])
    assert torch.equal(with_none, combine(method, [a, b], [0.5, 2.0]))
    assert torch.equal(combine(method, [None, b], [3.0, 2.0]), b * 2.0)


def test_linear_keeps_the_shape_and_returns_fp32():
    a = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    out = combine("linear", [a], [1.0])
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert torch.equal(out, a.float())


# -------------------------------------------------------------------------- trim


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_trim_keeps_exactly_the_largest_magnitudes(density):
    values = t(0.5, -9.0, 3.0, -0.1, 7.0, -2.0, 0.05, 4.0, -6.0, 1.0)
    kept = trim(values, density)
    k = round(density * values.numel())
    assert int((kept != 0).sum()) == k
    largest = set(values.abs().argsort(descending=True)[:k].tolist())
    for i in range(values.numel()):
        assert kept[i].item() == (values[i].item() if i in largest else 0.0)


def test_trim_works_on_matrices_not_row_by_row():
    values = torch.tensor([[10.0, 9.0, 8.0], [0.1, 0.2, -0.3]])
    kept = trim(values, 0.5)
    assert torch.equal(kept, torch.tensor([[10.0, 9.0, 8.0], [0.0, 0.0, 0.0]]))


def test_trim_density_one_is_the_identity_and_does_not_alias():
    values = t(0.5, -9.0, 3.0)
    kept = trim(values, 1.0)
    assert torch.equal(kept, values)
    kept[0] = 42.0
    assert values[0].item() == 0.5


# -------------------------------------------------------------------------- ties

# Three adapters, six entries, density 0.5: each keeps its 3 largest magnitudes.
TAU = [t(4.0, -1.0, 3.0, 0.5, -2.0, 1.5),    # keeps 4, 3, -2   (entries 0, 2, 4)
       t(-1.0, 2.0, -5.0, 0.25, 3.0, 0.75),  # keeps 2, -5, 3   (entries 1, 2, 4)
       t(2.0, 0.1, 1.0, -3.0, -4.0, 0.2)]    # keeps 2, -3, -4  (entries 0, 3, 4)


def test_ties_by_hand_with_equal_weights():
    out = combine("ties", TAU, [1.0, 1.0, 1.0], density=0.5)
    # entry 0: kept 4 and 2, both +            -> mean 3
    # entry 1: only adapter 2 keeps it (2)    -> 2
    # entry 2: 3 vs -5, total -2: sign -      -> only -5 agrees -> -5 (the +3 is dropped)
    # entry 3: only adapter 3 keeps it (-3)   -> -3
    # entry 4: -2 + 3 - 4 = -3: sign -        -> mean of -2 and -4 = -3 (the +3 is dropped)
    # entry 5: nobody keeps it                -> 0
    assert torch.allclose(out, t(3.0, 2.0, -5.0, -3.0, -3.0, 0.0), atol=1e-6)


def test_ties_elects_the_sign_by_the_weighted_sum():
    out = combine("ties", TAU, [1.0, 3.0, 1.0], density=0.5)
    # entry 0: 4 + 2 = 6, sign +              -> (1*4 + 1*2) / (1 + 1) = 3
    # entry 1: 3*2, sign +                    -> 3*2 / 3 = 2
    # entry 2: 3 + 3*(-5) = -12, sign -       -> 3*(-5) / 3 = -5
    # entry 3: -3                             -> -3
    # entry 4: -2 + 3*3 - 4 = +3: sign + (unweighted it would be -) -> only adapter 2's 3 agrees -> 3
    # entry 5: nothing kept                   -> 0
    assert torch.allclose(out, t(3.0, 2.0, -5.0, -3.0, 3.0, 0.0), atol=1e-6)


def test_ties_with_density_one_only_resolves_sign_conflicts():
    a, b = t(1.0, 2.0, -1.0), t(3.0, -1.0, -3.0)
    out = combine("ties", [a, b], [1.0, 1.0], density=1.0)
    # entry 0: both +: mean 2; entry 1: 2 - 1 > 0: only 2; entry 2: both -: mean -2
    assert torch.allclose(out, t(2.0, 2.0, -2.0), atol=1e-6)


def test_ties_ignores_an_adapter_that_does_not_touch_the_tensor():
    a, b = t(1.0, 2.0, -1.0), t(3.0, -1.0, -3.0)
    assert torch.equal(combine("ties", [a, None, b], [1.0, 5.0, 1.0], density=1.0),
                       combine("ties", [a, b], [1.0, 1.0], density=1.0))


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_negating_every_weight_negates_the_merge(method):
    # Task negation: weight -1 must subtract what weight +1 adds, whatever the method.
    plus = combine(method, TAU, [1.0, 3.0, 1.0], density=0.5, seed=1, name="m")
    minus = combine(method, TAU, [-1.0, -3.0, -1.0], density=0.5, seed=1, name="m")
    assert torch.allclose(minus, -plus, atol=1e-6)


def test_ties_with_a_negative_weight_keeps_the_contribution_that_wins():
    # Weighted contributions +1 and -2: the elected sign is -, and the -2 (2 at weight -1) agrees with it.
    out = combine("ties", [t(1.0), t(2.0)], [1.0, -1.0], density=1.0)
    assert torch.allclose(out, t(-2.0))


# -------------------------------------------------------------------------- dare


def test_dare_scales_survivors_by_one_over_density_and_zeros_the_rest():
    delta = torch.linspace(0.5, 2.0, 1000)
    g = torch.Generator().manual_seed(7)
    out = dare(delta, 0.25, g)
    kept = out != 0
    assert torch.allclose(out[kept], delta[kept] / 0.25)
    assert torch.equal(out[~kept], torch.zeros(int((~kept).sum())))


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keeps_about_density_of_the_entries(density):
    out = combine("dare_linear", [torch.ones(100_000)], [1.0], density=density, seed=3, name="w")
    fraction = float((out != 0).float().mean())
    assert abs(fraction - density) < 0.01
    assert torch.allclose(out[out != 0], torch.full((int((out != 0).sum()),), 1 / density))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_reproducible_by_seed_and_tensor_name(method):
    deltas = [torch.randn(64, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def run(seed, name):
        return combine(method, deltas, [1.0, 0.5], density=0.5, seed=seed, name=name)

    first = run(1, "model.layers.0.q_proj")
    torch.manual_seed(12345)  # the global RNG plays no part
    assert torch.equal(first, run(1, "model.layers.0.q_proj"))
    assert not torch.equal(first, run(2, "model.layers.0.q_proj"))
    assert not torch.equal(first, run(1, "model.layers.1.q_proj"))


def test_dare_result_does_not_depend_on_the_order_tensors_are_merged_in():
    delta = [torch.randn(128, generator=torch.Generator().manual_seed(0))]
    names = ["a.weight", "b.weight", "c.weight"]
    forward = {n: combine("dare_linear", delta, [1.0], density=0.5, seed=9, name=n) for n in names}
    backward = {n: combine("dare_linear", delta, [1.0], density=0.5, seed=9, name=n) for n in reversed(names)}
    assert all(torch.equal(forward[n], backward[n]) for n in names)


def test_dare_drops_of_an_adapter_are_keyed_by_its_position_not_by_who_else_touches_the_tensor():
    # Adapter 1's drop mask is the same whether adapter 0 touches this tensor or not.
    d0, d1 = torch.randn(256), torch.randn(256)
    alone = combine("dare_linear", [None, d1], [1.0, 1.0], density=0.5, seed=4, name="x")
    with_zero_weight = combine("dare_linear", [d0, d1], [0.0, 1.0], density=0.5, seed=4, name="x")
    assert torch.equal(alone, with_zero_weight)
    # ...and differs from the mask adapter 0 would get.
    as_first = combine("dare_linear", [d1, None], [1.0, 1.0], density=0.5, seed=4, name="x")
    assert not torch.equal(alone, as_first)


def test_dare_linear_preserves_the_expected_update():
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(64, generator=g), torch.randn(64, generator=g)]
    weights = [0.7, 1.3]
    exact = combine("linear", deltas, weights)
    runs = 400
    mean = sum(combine("dare_linear", deltas, weights, density=0.5, seed=s, name="m") for s in range(runs)) / runs
    # Each entry's std over seeds is about |value| / sqrt(runs) = 5% of it.
    assert float((mean - exact).norm() / exact.norm()) < 0.15
    single = combine("dare_linear", deltas, weights, density=0.5, seed=0, name="m")
    assert float((single - exact).norm() / exact.norm()) > 0.3  # one draw really is noisy


def test_dare_with_density_one_is_the_linear_sum():
    deltas = [t(1.0, -2.0), t(0.5, 3.0)]
    assert torch.equal(combine("dare_linear", deltas, [1.0, 2.0], density=1.0),
                       combine("linear", deltas, [1.0, 2.0]))


# ------------------------------------------------------------------------ errors


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        combine("slerp", [t(1.0)], [1.0])
    assert "slerp" in str(err.value)
    for method in METHODS:
        assert method in str(err.value)
    assert set(METHODS) == {"linear", "ties", "dare_linear", "dare_ties", "cat"}


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear"])
def test_density_outside_zero_one_is_refused(method, density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]") as err:
        combine(method, [t(1.0)], [1.0], density=density)
    assert str(density) in str(err.value)


def test_no_adapter_touching_the_tensor_is_an_error_naming_it():
    with pytest.raises(ValueError, match="model.norm.weight"):
        combine("linear", [None, None], [1.0, 1.0], name="model.norm.weight")
