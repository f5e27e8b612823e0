"""KL(tuned || base) on response tokens: the sum itself, which positions count, the base a
LoRA model compares against (adapters off) or a frozen copy, the kl_to_base loss and the live
KL meter, on the built-in tiny base."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from orchestrator.data.collate import collate
from orchestrator.data.formats import encode_rows
from orchestrator.models.build import load_tokenizer
from orchestrator.models.divergence import (BaseModel, KLMeter, kl_sum, loss_and_kl_sums, response_log_probs,
                                            response_mask)
from orchestrator.models.loss import token_loss_sum
from orchestrator.models.tiny.build import ensure_tiny_base
from orchestrator.spec.models import ColumnsSpec, ModelSpec

ROWS = [{"prompt": "12+30=", "response": "042"}, {"prompt": "rev abcd=", "response": "dcba"},
        {"prompt": "sort 93172=", "response": "12379"}, {"prompt": "a=7 b=2 c=0 d=1 ?c", "response": "0"}]


@pytest.fixture(autouse=True)
def one_thread():
    # Small models on a busy machine run many times faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- kl_sum


def random_log_probs(rows: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(3 * torch.randn(rows, vocab, generator=g), dim=-1)


def test_kl_sum_is_the_kl_of_tuned_from_base_summed_over_rows():
    tuned, base = random_log_probs(7, 11, seed=0), random_log_probs(7, 11, seed=1)
    # kl_div(input, target) is KL(target || input): the tuned distribution is the target.
    expected = torch.nn.functional.kl_div(base, tuned, log_target=True, reduction="sum")
    assert float(kl_sum(tuned, base)) == pytest.approx(float(expected), rel=1e-5)
    by_rows = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=tuned),
                                                torch.distributions.Categorical(logits=base))
    assert float(kl_sum(tuned, base)) == pytest.approx(float(by_rows.sum()), rel=1e-5)
    # Not symmetric: the direction is KL(tuned || base).
    assert float(kl_sum(base, tuned)) != pytest.approx(float(kl_sum(tuned, base)), rel=1e-3)


def test_kl_sum_is_zero_for_identical_distributions_and_never_negative():
    same = random_log_probs(5, 9, seed=2)
    assert float(kl_sum(same, same.clone())) == pytest.approx(0.0, abs=1e-6)
    for seed in range(5):
        assert float(kl_sum(random_log_probs(3, 9, seed), random_log_probs(3, 9, seed + 100))) >= 0.0


def test_kl_sum_takes_a_half_precision_base_as_float32():
    tuned, base = random_log_probs(4, 8, seed=3), random_log_probs(4, 8, seed=4)
    out = kl_sum(tuned, base.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(kl_sum(tuned, base.to(torch.bfloat16).float())), rel=1e-6)


# ------------------------------------------------------------ which positions count


def test_response_mask_marks_the_positions_that_predict_a_label_token():
    labels = torch.tensor([[-100, -100, 5, 6, -100],
                           [-100, 7, 8, 9, 10]])
    mask = response_mask(labels)
    # Position t predicts token t + 1, so it counts when labels[t + 1] is a label.
    assert mask.tolist() == [[False, True, True, False],
                             [True, True, True, True]]


def test_response_log_probs_are_float32_normalised_rows_at_the_masked_positions_only():
    labels = torch.tensor([[-100, -100, 5, 6, -100],
                           [-100, -100, -100, 9, -100]])
    logits = torch.randn(2, 5, 13, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = response_log_probs(logits, response_mask(labels))
    assert out.dtype == torch.float32 and out.shape == (3, 13)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-5)
    expected = torch.stack([logits[0, 1], logits[0, 2], logits[1, 2]]).float().log_softmax(-1)
    assert torch.allclose(out, expected, atol=1e-6)


# ------------------------------------------------------------------- on the tiny base


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_base())


@pytest.fixture(scope="module")
def batch(model_dir) -> dict[str, torch.Tensor]:
    """Four instruction rows, right-padded, -100 on prompts and padding."""
    tokenizer = load_tokenizer(model_dir, ModelSpec(path=model_dir))
    examples = encode_rows(ROWS, "instruction", ColumnsSpec(), tokenizer, 64)
    out = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples], tokenizer.pad_token_id)
    assert (out["attention_mask"] == 0).any(), "the rows should differ in length so the batch has padding"
    return out


def inputs_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def load_base(model_dir: str):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()


def with_lora(model_dir: str):
    torch.manual_seed(0)
    return get_peft_model(load_base(model_dir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj"]))


def perturb_lora_b(model, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(scale * torch.randn(param.shape, generator=g))


def test_the_base_of_a_lora_model_is_the_model_with_its_adapters_off(model_dir, batch):
    with torch.no_grad():
        expected = load_base(model_dir)(**inputs_of(batch)).logits
    model = with_lora(model_dir)
    perturb_lora_b(model)
    with torch.no_grad():
        tuned = model(**inputs_of(batch)).logits
    assert not torch.allclose(tuned, expected, atol=1e-4), "the perturbed adapter should change the logits"
    assert torch.allclose(BaseModel(model).logits(inputs_of(batch)), expected, atol=1e-5)
    # The adapters are back on afterwards.
    with torch.no_grad():
        assert torch.allclose(model(**inputs_of(batch)).logits, tuned)


def test_a_model_without_adapters_needs_a_frozen_copy_whose_logits_are_the_base(model_dir, batch):
    plain = load_base(model_dir)
    with pytest.raises(ValueError, match="frozen copy"):
        BaseModel(plain)
    copy = load_base(model_dir)
    with torch.no_grad():
        copy.model.embed_tokens.weight.mul_(1.5)  # so that the copy and the model are told apart
        expected = copy(**inputs_of(batch)).logits
    assert torch.equal(BaseModel(plain, frozen_copy=copy).logits(inputs_of(batch)), expected)


def test_loss_and_kl_sums_at_lora_init_and_after_the_adapter_moves(model_dir, batch):
    model = with_lora(model_dir)
    base = BaseModel(model)
    loss, kl = loss_and_kl_sums(model, batch, base)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(token_loss_sum(model, batch)), rel=1e-5)
    assert abs(float(kl.detach())) < 1e-6  # lora_B starts at zero: the tuned model is the base

    perturb_lora_b(model)
    loss, kl = loss_and_kl_sums(model, batch, base)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(token_loss_sum(model, batch)), rel=1e-5)
    assert float(kl.detach()) > 1e-4
    kl.backward()
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lora_b)
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert frozen and all(p.grad is None for p in frozen)


def test_kl_meter_on_adapters_is_zero_at_init_and_grows_when_the_adapter_moves(model_dir, batch):
    model = with_lora(model_dir)
    meter = KLMeter(model, [batch], "cpu", has_adapters=True, shard=False)
    meter.snapshot()  # a no-op with adapters: the base is measured afresh each time
    assert meter.snapshots is None
    assert meter.measure() == pytest.approx(0.0, abs=1e-6)
    perturb_lora_b(model)
    assert meter.measure() > 1e-4


def test_kl_meter_without_adapters_compares_to_its_snapshot(model_dir, batch):
    model = load_base(model_dir)
    half = {k: v[:2] for k, v in batch.items()}
    meter = KLMeter(model, [half, {k: v[2:] for k, v in batch.items()}], "cpu", has_adapters=False, shard=False)
    with pytest.raises(RuntimeError, match="snapshot"):
        meter.measure()
    model.train()
    meter.snapshot()
    assert model.training, "snapshot should leave the model in the mode it found it"
    assert meter.snapshots is not None and len(meter.snapshots) == 2
    assert meter.measure() == pytest.approx(0.0, abs=1e-6)

    weight = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
    assert meter.measure() > 1e-4
    meter.snapshot()  # the perturbed weights are the base now
    assert meter.measure() == pytest.approx(0.0, abs=1e-6)
