"""Repair by interpolation: the alpha grid, each task's budget, the search and the choice (pure,
with a fake evaluation), the report rewritten for the repaired artifact, and the weights at
alpha and the whole repair on the built-in tiny base (CPU, a few rows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from orchestrator.forgetting.repair import (Interpolation, Point, RepairError, budgets, choose, grid, passes, repair,
                                            search, unrepaired_dir)
from orchestrator.forgetting.report import apply_repair, build_forgetting_report
from orchestrator.forgetting.tasks import PreparedTask
from orchestrator.models.tiny.build import ensure_tiny_base
from orchestrator.spec import load_spec

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
ADAPTER_FILE = "adapter_model.safetensors"


def quickstart(*overrides: str):
    return load_spec(QUICKSTART, list(overrides))


@pytest.fixture(autouse=True)
def one_thread():
    # Small models on a busy machine run many times faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ grid, passes


def test_grid_runs_evenly_from_the_base_to_the_trained_weights():
    assert grid(11) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert grid(3) == [0.0, 0.5, 1.0]
    assert grid(2) == [0.0, 1.0]


def test_a_drop_equal_to_its_budget_passes_and_one_above_does_not():
    budget = {"a": 0.1, "b": 0.3}
    assert passes({"a": 0.1, "b": 0.0}, budget)
    assert passes({"a": 0.1, "b": 0.1 + 0.2}, budget)  # 0.30000000000000004: float noise at the limit
    assert not passes({"a": 0.11, "b": 0.0}, budget)
    assert passes({"a": -0.5, "c": 0.9}, budget)  # an improvement, and a task without a budget is not held
    assert passes({}, budget)  # a budgeted task that was not measured did not drop


# ------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("overrides,argument,expected", [
    ((), None, {}),
    (("forgetting.max_drop=0.1",), None, {"arithmetic": 0.1, "reversal": 0.1, "sorting": 0.1, "kv_recall": 0.1}),
    (("forgetting.max_drop=0.1", "forgetting.tasks.0.max_drop=0.3"), None,
     {"arithmetic": 0.3, "reversal": 0.1, "sorting": 0.1, "kv_recall": 0.1}),
    (("forgetting.tasks.0.max_drop=0.3",), None, {"arithmetic": 0.3}),
    (("forgetting.tasks.0.max_drop=0.0", "forgetting.max_drop=0.2"), None,
     {"arithmetic": 0.0, "reversal": 0.2, "sorting": 0.2, "kv_recall": 0.2}),
    (("forgetting.max_drop=0.1", "forgetting.tasks.0.max_drop=0.3", "forgetting.repair={max_drop: 0.02}"), None,
     {"arithmetic": 0.02, "reversal": 0.02, "sorting": 0.02, "kv_recall": 0.02}),
    (("forgetting.tasks.0.max_drop=0.3", "forgetting.repair={grid: 5}"), None, {"arithmetic": 0.3}),
    (("forgetting.max_drop=0.1", "forgetting.repair={max_drop: 0.02}"), 0.05,
     {"arithmetic": 0.05, "reversal": 0.05, "sorting": 0.05, "kv_recall": 0.05}),
    (("forgetting.repair={max_drop: 0.02}",), 0.0, {"arithmetic": 0.0, "reversal": 0.0, "sorting": 0.0,
                                                   "kv_recall": 0.0}),
])
def test_budget_of_each_task_argument_then_repair_then_task_then_forgetting(overrides, argument, expected):
    assert budgets(quickstart(*overrides), argument) == expected


# ------------------------------------------------------------------------------- search


class Curve:
    """A fake evaluation: task a falls linearly from 1 at alpha 0 to 0 at alpha 1; records
    the alphas it is asked for."""

    def __init__(self):
        self.asked: list[float] = []

    def __call__(self, alpha: float) -> Point:
        self.asked.append(alpha)
        return Point(alpha, {"a": 1.0 - alpha}, None)


def within(max_drop: float):
    return lambda p: 1.0 - p.tasks["a"] <= max_drop + 1e-12


def test_search_evaluates_the_grid_then_bisects_toward_the_boundary():
    curve = Curve()
    points = search(curve, grid(5), refine=3, ok=within(0.37))
    assert curve.asked == [1.0, 0.75, 0.5, 0.25, 0.0,  # the grid, trained weights first
                           0.375, 0.3125, 0.34375]  # fails, passes, passes: always inside (0.25, 0.5)
    assert [p.alpha for p in points] == sorted(curve.asked)


def test_search_refines_nothing_when_the_trained_weights_pass():
    curve = Curve()
    points = search(curve, grid(5), refine=3, ok=within(1.0))
    assert curve.asked == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [p.alpha for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_search_bisects_toward_zero_when_nothing_passes():
    curve = Curve()
    search(curve, grid(3), refine=3, ok=lambda p: False)
    assert curve.asked == [1.0, 0.5, 0.0, 0.25, 0.125, 0.0625]


def test_search_evaluates_each_grid_alpha_once():
    curve = Curve()
    search(curve, [0.5, 0.0, 1.0, 0.5], refine=0, ok=within(1.0))
    assert curve.asked == [1.0, 0.5, 0.0]


# ------------------------------------------------------------------------------- choose


BASE = {"a": 0.9, "b": 0.8}
BUDGET = {"a": 0.1, "b": 0.1}
METRICS = {"a": "exact_match", "b": "exact_match"}


def curve_of(values: dict[float, tuple[float, float]]) -> list[dict]:
    return [Point(alpha, {"a": a, "b": b}, None).as_dict(BASE, BUDGET, METRICS)
            for alpha, (a, b) in sorted(values.items())]


def test_choose_keeps_the_largest_passing_alpha_and_names_the_task_that_broke_above_it():
    curve = curve_of({0.0: (0.9, 0.8), 0.25: (0.9, 0.75), 0.5: (0.85, 0.72), 0.75: (0.85, 0.6), 1.0: (0.5, 0.5)})
    assert [p["passed"] for p in curve] == [True, True, True, False, False]
    assert curve[3]["drops"]["b"] == pytest.approx(0.2)
    alpha, reason = choose(curve, BUDGET)
    assert alpha == 0.5
    assert "alpha 0.75 broke b drop 0.200 > 0.1" in reason
    assert "a drop" not in reason  # a stayed within its budget at 0.75


def test_choose_keeps_the_trained_weights_when_they_pass():
    alpha, reason = choose(curve_of({0.0: (0.9, 0.8), 1.0: (0.85, 0.75)}), BUDGET)
    assert alpha == 1.0 and "trained weights keep every source-task drop" in reason


def test_choose_falls_back_to_the_base_when_nothing_passes():
    alpha, reason = choose(curve_of({0.0: (0.7, 0.8), 1.0: (0.5, 0.5)}), BUDGET)
    assert alpha == 0.0 and "no alpha kept every source-task drop" in reason and "a 0.1, b 0.1" in reason


# ------------------------------------------------------------------------- apply_repair


def trained_report():
    """Arithmetic has a gate (0.1), the other tasks none; the trained weights broke it."""
    spec = quickstart("forgetting.tasks.0.max_drop=0.1")
    trip = {"task": "arithmetic", "step": 100}
    history = [{"step": 0, "arithmetic": 0.9, "reversal": 0.8, "sorting": 0.7, "kv_recall": 0.6},
               {"step": 100, "arithmetic": 0.5, "reversal": 0.6, "sorting": 0.7, "kv_recall": 0.7, "trips": [trip]}]
    target = [{"step": 0, "value": 0.1}, {"step": 100, "value": 0.9}]
    return build_forgetting_report(spec, history, target_history=target)


def repair_result(alpha: float, tasks: dict[float, dict[str, float]], targets: dict[float, float]) -> dict:
    base = {"arithmetic": 0.9, "reversal": 0.8, "sorting": 0.7, "kv_recall": 0.6}
    metrics = dict.fromkeys(base, "exact_match")
    curve = [Point(a, tasks[a], targets[a]).as_dict(base, {"arithmetic": 0.1}, metrics) for a in sorted(tasks)]
    return {"method": "interpolate", "alpha": alpha, "reason": "why", "target_metric": "exact_match",
            "curve": curve}


def test_apply_repair_makes_the_chosen_alphas_values_final():
    report = trained_report()
    assert report["tasks"]["arithmetic"]["passed"] is False
    assert report["summary"]["largest_drop"]["task"] == "arithmetic"
    result = repair_result(0.5, {0.0: {"arithmetic": 0.9, "reversal": 0.8, "sorting": 0.7, "kv_recall": 0.6},
                                 0.5: {"arithmetic": 0.85, "reversal": 0.5, "sorting": 0.72, "kv_recall": 0.65},
                                 1.0: {"arithmetic": 0.5, "reversal": 0.6, "sorting": 0.7, "kv_recall": 0.7}},
                           {0.0: 0.1, 0.5: 0.6, 1.0: 0.9})
    out = apply_repair(report, result)
    arithmetic, reversal, sorting = (out["tasks"][n] for n in ("arithmetic", "reversal", "sorting"))
    assert (arithmetic["final"], arithmetic["unrepaired_final"]) == (0.85, 0.5)
    assert arithmetic["drop"] == pytest.approx(0.05) and arithmetic["delta"] == pytest.approx(-0.05)
    assert arithmetic["passed"] is True and arithmetic["worse"] is True
    assert (reversal["final"], reversal["unrepaired_final"]) == (0.5, 0.6)
    assert reversal["drop"] == pytest.approx(0.3) and "passed" not in reversal  # no gate: none made up
    assert sorting["worse"] is False and sorting["delta"] == pytest.approx(0.02)
    assert (out["target"]["final"], out["target"]["unrepaired_final"]) == (0.6, 0.9)
    assert out["target"]["delta"] == pytest.approx(0.5)
    assert out["summary"]["largest_drop"] == {"task": "reversal", "drop": pytest.approx(0.3)}
    assert out["summary"]["tasks_worse"] == ["arithmetic", "reversal"]
    assert out["summary"]["repair_alpha"] == 0.5 and out["negative_transfer"] is False
    assert out["summary"]["gates_tripped"] == [{"task": "arithmetic", "step": 100}]
    assert out["repair"] == result
    assert report["tasks"]["arithmetic"]["final"] == 0.5  # the report passed in is left as it was


def test_apply_repair_twice_keeps_the_trained_values_as_unrepaired():
    tasks = {a: {"arithmetic": 0.9 - 0.4 * a, "reversal": 0.8, "sorting": 0.7, "kv_recall": 0.6}
             for a in (0.0, 0.25, 0.5, 1.0)}
    targets = {0.0: 0.1, 0.25: 0.3, 0.5: 0.6, 1.0: 0.9}
    once = apply_repair(trained_report(), repair_result(0.25, tasks, targets))
    twice = apply_repair(once, repair_result(0.5, tasks, targets))
    assert twice["tasks"]["arithmetic"]["final"] == pytest.approx(0.7)
    assert twice["tasks"]["arithmetic"]["unrepaired_final"] == 0.5
    assert twice["target"]["final"] == 0.6 and twice["target"]["unrepaired_final"] == 0.9
    assert twice["repair"]["alpha"] == 0.5 and twice["summary"]["repair_alpha"] == 0.5


def test_apply_repair_leaves_a_target_measured_by_another_metric():
    tasks = {a: {"arithmetic": 0.9} for a in (0.0, 1.0)}
    result = {**repair_result(0.0, tasks, {0.0: 2.0, 1.0: 1.0}), "target_metric": "loss"}
    out = apply_repair(trained_report(), result)
    assert out["target"]["final"] == 0.9 and "unrepaired_final" not in out["target"]
    assert out["tasks"]["arithmetic"]["final"] == 0.9
    assert "unrepaired_final" not in out["tasks"]["reversal"]  # not on the curve: untouched
    assert out["tasks"]["reversal"]["final"] == 0.6


# ---------------------------------------------------------- the weights on the tiny base


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_base())


def load_base(model_dir: str):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()


def logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 55, 56]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def save_adapter(model_dir: str, out: Path, scale: float) -> Path:
    """A LoRA adapter whose lora_B is random (a trained-looking update), saved as peft does."""
    torch.manual_seed(0)
    model = get_peft_model(load_base(model_dir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(scale * torch.randn(param.shape, generator=g))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def lora_b(adapter_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(adapter_dir / ADAPTER_FILE))
    out = {k: v for k, v in weights.items() if ".lora_B." in k}
    assert out, f"{adapter_dir} holds no lora_B weights"
    return out


@pytest.fixture(scope="module")
def adapter(model_dir, tmp_path_factory) -> Path:
    return save_adapter(model_dir, tmp_path_factory.mktemp("trained") / "adapter", scale=0.5)


def test_interpolating_an_adapter_scales_its_update(model_dir, adapter, tmp_path):
    weights = Interpolation(quickstart(), model_dir, adapter, "cpu")
    assert len(weights.pairs) == len(lora_b(adapter))
    trained = logits(PeftModel.from_pretrained(load_base(model_dir), str(adapter)).eval())
    base = logits(load_base(model_dir))
    assert not torch.allclose(trained, base, atol=1e-3), "the adapter should change the logits"

    weights.set(0.0)
    assert torch.allclose(logits(weights.model), base, atol=1e-5)
    weights.set(1.0)
    assert torch.allclose(logits(weights.model), trained, atol=1e-5)

    halved = PeftModel.from_pretrained(load_base(model_dir), str(adapter)).eval()
    with torch.no_grad():
        for name, param in halved.named_parameters():
            if ".lora_B." in name:
                param.mul_(0.5)
    weights.set(0.5)
    assert torch.allclose(logits(weights.model), logits(halved), atol=1e-5)

    weights.set(0.3)
    weights.save(tmp_path / "out")
    original, saved = lora_b(adapter), lora_b(tmp_path / "out")
    assert saved.keys() == original.keys()
    for key, value in original.items():
        assert torch.allclose(saved[key], 0.3 * value, atol=1e-7), key
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_interpolating_an_adapter_moves_its_saved_modules_from_the_originals(model_dir, tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(load_base(model_dir), LoraConfig(r=4, target_modules=["q_proj"],
                                                            modules_to_save=["model.norm"]))
    with torch.no_grad():
        model.get_parameter("base_model.model.model.norm.modules_to_save.default.weight").add_(1.0)
    model.save_pretrained(str(tmp_path / "adapter"), safe_serialization=True)

    weights = Interpolation(quickstart(), model_dir, tmp_path / "adapter", "cpu")
    norm = weights.model.get_parameter("base_model.model.model.norm.modules_to_save.default.weight")
    original = load_base(model_dir).model.norm.weight
    assert any(param is norm for param, _, _ in weights.pairs)
    weights.set(0.5)
    assert torch.allclose(norm, original + 0.5, atol=1e-6)
    weights.set(0.0)
    assert torch.allclose(norm, original, atol=1e-6)


def test_interpolating_full_weights_moves_only_the_changed_ones(model_dir, tmp_path):
    tuned = load_base(model_dir)
    changed = ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in changed:
            param = tuned.get_parameter(name)
            param.add_(0.1 * torch.randn(param.shape, generator=g))
    tuned.save_pretrained(str(tmp_path / "model"), safe_serialization=True)

    weights = Interpolation(quickstart("method.kind=full", "method.lora=null"), model_dir, tmp_path / "model", "cpu")
    names = {id(p): n for n, p in weights.model.named_parameters()}
    assert sorted(names[id(param)] for param, _, _ in weights.pairs) == sorted(changed)

    base = dict(load_base(model_dir).named_parameters())
    after = dict(tuned.named_parameters())
    weights.set(0.25)
    for name, param in weights.model.named_parameters():
        expected = base[name] + 0.25 * (after[name] - base[name])
        assert torch.allclose(param, expected, atol=1e-6), name
    assert torch.equal(weights.model.get_parameter("model.layers.1.mlp.up_proj.weight"),
                       base["model.layers.1.mlp.up_proj.weight"])
    weights.set(0.0)
    assert torch.allclose(logits(weights.model), logits(load_base(model_dir)), atol=1e-5)


def test_full_weights_from_another_model_are_refused(model_dir, tmp_path):
    config = transformers.AutoConfig.from_pretrained(model_dir)
    config.intermediate_size = 256
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / "model"),
                                                                          safe_serialization=True)
    with pytest.raises(RepairError, match="was not trained from this base"):
        Interpolation(quickstart("method.kind=full", "method.lora=null"), model_dir, tmp_path / "model", "cpu")


# ------------------------------------------------------------------------------- repair()


# Rows the tiny base answers right; the random adapter of scale 0.5 breaks some of them at
# alpha 0.5 but none at 0.25 (found by trying; the first assert says so if that changes).
TASKS = [PreparedTask("arithmetic", "exact_match", rows=(("49+97=", "146"), ("53+05=", "058"), ("33+65=", "098"),
                                                         ("62+51=", "113"))),
         PreparedTask("sorting", "exact_match", rows=(("sort 93821=", "12389"), ("sort 7629=", "2679"),
                                                      ("sort 3786=", "3678"), ("sort 533625=", "233556")))]
SMALL_REPAIR = "forgetting.repair={grid: 3, refine: 1, max_drop: 0.0}"


def test_repair_writes_the_chosen_alpha_and_keeps_the_trained_adapter(model_dir, adapter, tmp_path):
    artifact = tmp_path / "run" / "adapter"
    shutil.copytree(adapter, artifact)
    (artifact / "tokenizer_config.json").write_text("{}")  # what the job leaves beside the weights
    original = lora_b(adapter)
    spec = quickstart(SMALL_REPAIR)

    result = repair(spec, artifact, model_dir, TASKS, None, None, None)
    alpha = result["alpha"]
    assert 0.0 < alpha < 1.0, f"the test adapter should break the tasks only part way (curve: {result['curve']})"
    alphas = [p["alpha"] for p in result["curve"]]
    assert len(alphas) == 4 and {0.0, 0.5, 1.0} <= set(alphas)  # the grid and one bisection
    assert alphas == sorted(alphas)
    chosen = next(p for p in result["curve"] if p["alpha"] == alpha)
    assert chosen["passed"] and all(not p["passed"] for p in result["curve"] if p["alpha"] > alpha)
    assert "broke" in result["reason"]
    assert result["base"] == result["curve"][0]["tasks"]  # measured at alpha 0
    assert result["target_metric"] == "loss" and result["target_gain_kept"] is None
    assert result["unrepaired"] == str(unrepaired_dir(artifact))

    unrepaired = unrepaired_dir(artifact)
    for key, value in lora_b(artifact).items():
        assert torch.allclose(value, alpha * original[key], atol=1e-7), key
    for key, value in lora_b(unrepaired).items():
        assert torch.equal(value, original[key]), key
    assert (artifact / "tokenizer_config.json").read_text() == "{}"
    assert not artifact.with_name("adapter.repairing").exists()

    again = repair(spec, artifact, model_dir, TASKS, None, None, None)
    assert again["alpha"] == alpha
    assert [p["tasks"] for p in again["curve"]] == [p["tasks"] for p in result["curve"]]
    for key, value in lora_b(artifact).items():  # alpha x the trained update, not alpha x alpha
        assert torch.allclose(value, alpha * original[key], atol=1e-7), key
    for key, value in lora_b(unrepaired).items():
        assert torch.equal(value, original[key]), key


def test_repair_without_an_artifact_or_a_budget_changes_nothing(model_dir, tmp_path):
    with pytest.raises(RepairError, match="no trained weights"):
        repair(quickstart(SMALL_REPAIR), tmp_path / "adapter", model_dir, TASKS, None, None, None)
    (tmp_path / "adapter").mkdir()
    with pytest.raises(RepairError, match="no source task has a max_drop"):
        repair(quickstart(), tmp_path / "adapter", model_dir, TASKS, None, None, None)
    assert not unrepaired_dir(tmp_path / "adapter").exists()
