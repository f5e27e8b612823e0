"""DPO's loss, rewards and reference: equal to a direct computation from the policy's and the
reference's log-probabilities, and to TRL's DPOTrainer on the same batch."""

from __future__ import annotations

import pytest
import torch

from orchestrator.models.preference import (Reference, completion_logps, dpo_losses, dpo_sums,
                                            reference_table)
from orchestrator.models.tiny.build import ensure_tiny_base

IGNORE = -100


def test_dpo_losses_are_the_formulas():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    for beta in (0.1, 0.5):
        losses, chosen, rejected = dpo_losses(pc, pr, rc, rr, beta)
        margin = (pc - rc) - (pr - rr)
        expected = torch.log1p(torch.exp(-beta * margin))  # -log sigmoid(x) = log(1 + e^-x)
        assert torch.allclose(losses, expected, atol=1e-12)
        assert torch.allclose(chosen, beta * (pc - rc)) and torch.allclose(rejected, beta * (pr - rr))
        ipo, _, _ = dpo_losses(pc, pr, rc, rr, beta, "ipo")
        assert torch.allclose(ipo, (margin - 1 / (2 * beta)) ** 2, atol=1e-12)
    with pytest.raises(ValueError):
        dpo_losses(pc, pr, rc, rr, 0.1, "hinge")


def test_completion_logps_sum_the_label_tokens_log_probabilities():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 6, 0]])
    sums, counts = completion_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected = [logp[0, 1, 3] + logp[0, 2, 4], logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 0]]
    assert torch.allclose(sums, torch.stack(expected), atol=1e-6)
    assert counts.tolist() == [2, 4]


def pair_batch(tokenizer, pairs: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    """A preference batch by hand: chosen rows, then rejected rows, labels on the completions."""
    rows = []
    for side in (1, 2):
        for pair in pairs:
            prompt = tokenizer(pair[0], add_special_tokens=False)["input_ids"]
            completion = tokenizer(pair[side], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((prompt + completion, [IGNORE] * len(prompt) + completion))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels in rows]),
            "pairs": torch.tensor(len(pairs))}


PAIRS = [("shift abc=", "bcd", "cde"), ("shift xyz=", "yza", "zab"), ("shift hello=", "ifmmp", "jgnnq")]


@pytest.fixture(scope="module")
def tiny():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.models.build import load_tokenizer
    from orchestrator.spec.models import ModelSpec

    base_dir = str(ensure_tiny_base())
    tokenizer = load_tokenizer(base_dir, ModelSpec(path=base_dir))
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    return base_dir, tokenizer, policy


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_sums_equal_a_direct_computation_from_policy_and_reference(tiny, loss):
    base_dir, tokenizer, policy = tiny
    batch = pair_batch(tokenizer, PAIRS)
    beta = 0.2
    total, stats = dpo_sums(policy, batch, Reference.of(policy), beta, loss)

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        logp = torch.log_softmax(policy(**inputs).logits.double(), -1)
        with policy.disable_adapter():
            ref_logp = torch.log_softmax(policy(**inputs).logits.double(), -1)

    def summed(lp):  # by hand: each row's label tokens, one by one
        out, counts = [], []
        for row in range(batch["input_ids"].size(0)):
            picked = [lp[row, t - 1, batch["labels"][row, t]] for t in range(1, batch["labels"].size(1))
                      if batch["labels"][row, t] != IGNORE]
            out.append(torch.stack(picked).sum())
            counts.append(len(picked))
        return torch.stack(out), torch.tensor(counts, dtype=torch.float64)

    pol, n = summed(logp)
    ref, _ = summed(ref_logp)
    b = len(PAIRS)
    if loss == "ipo":
        margin = (pol[:b] / n[:b] - ref[:b] / n[:b]) - (pol[b:] / n[b:] - ref[b:] / n[b:])
        expected = ((margin - 1 / (2 * beta)) ** 2).sum()
    else:
        margin = (pol[:b] - ref[:b]) - (pol[b:] - ref[b:])
        expected = -torch.nn.functional.logsigmoid(beta * margin).sum()
    assert float(total) == pytest.approx(float(expected), abs=1e-5)
    chosen, rejected = beta * (pol[:b] - ref[:b]), beta * (pol[b:] - ref[b:])
    assert stats.tolist() == pytest.approx([float(chosen.sum()), float(rejected.sum()), float((chosen > rejected).sum()),
                                            float(pol[:b].sum()), float(pol[b:].sum())], abs=1e-4)
    total.backward()
    grads = [p.grad for name, p in policy.named_parameters() if "lora_" in name]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    policy.zero_grad(set_to_none=True)


def test_a_model_without_adapters_is_its_own_reference_and_a_table_serves_full_fine_tuning(tiny):
    from transformers import AutoModelForCausalLM

    base_dir, tokenizer, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    batch = pair_batch(tokenizer, PAIRS)
    total, stats = dpo_sums(model, batch, Reference.of(model), 0.1)
    assert float(total) == pytest.approx(len(PAIRS) * float(torch.log(torch.tensor(2.0))), abs=1e-5)  # margin 0
    assert stats[:3].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)

    rows = []  # prepared pair rows, as the data pipeline stores them
    for pair in PAIRS:
        one = pair_batch(tokenizer, [pair])
        keep = one["attention_mask"].bool()
        rows.append({"input_ids": one["input_ids"][0][keep[0]].tolist(), "labels": one["labels"][0][keep[0]].tolist(),
                     "rejected_input_ids": one["input_ids"][1][keep[1]].tolist(),
                     "rejected_labels": one["labels"][1][keep[1]].tolist()})
    table = reference_table(model, rows, tokenizer.pad_token_id, 2, "cpu", shard=False)
    direct = completion_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])[0]
    assert table[:, 0].tolist() == pytest.approx(direct[:3].tolist(), abs=1e-4)
    assert table[:, 1].tolist() == pytest.approx(direct[3:].tolist(), abs=1e-4)
    with torch.no_grad():  # the table stands in for the base: the same loss as the base's own forward
        from_table, _ = dpo_sums(model, {**batch, "rows": torch.arange(3)}, Reference(table=table), 0.1)
    assert float(from_table) == pytest.approx(float(total), abs=1e-4)


def test_loss_and_rewards_equal_trls_dpo_trainer_on_the_same_batch(tiny, tmp_path):
    trl = pytest.importorskip("trl")
    import datasets

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    base_dir, tokenizer, _ = tiny
    data = datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(PAIRS), beta=0.2, report_to=[],
                         use_cpu=True, max_length=64, logging_steps=1, save_strategy="no")
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base_dir), args=args, train_dataset=data,
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a new adapter is zero; move it so that the policy is not its reference
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch)
    metrics = {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels,
            "pairs": torch.tensor(len(PAIRS))}
    total, stats = dpo_sums(trainer.model, ours, Reference.of(trainer.model), 0.2)
    assert float(total) / len(PAIRS) == pytest.approx(float(theirs), abs=1e-6)
    assert float(stats[0]) / len(PAIRS) == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert float(stats[1]) / len(PAIRS) == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    assert float(stats[2]) / len(PAIRS) == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)
