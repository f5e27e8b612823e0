"""Real architectures, small and random-initialised (tests/archs.py), through ftctl's own model
build, chat data path, packing and loss: a packed row has the loss of its examples alone, LoRA
and full fine-tuning learn, and a trained LoRA adapter merges into weights whose logits are
peft's base + adapter, a Mixture-of-Experts model's experts included."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from orchestrator.data.collate import collate
from orchestrator.data.formats import encode_rows
from orchestrator.data.packing import pack_examples
from orchestrator.merging.export import MergeRequest, merge_and_verify
from orchestrator.models.build import build_model, load_tokenizer
from orchestrator.models.loss import token_loss_sum
from orchestrator.spec import resolve_spec
from orchestrator.spec.models import ColumnsSpec
from tests.archs import ARCHS, make_model_dir

ROWS = [{"messages": [{"role": "user", "content": f"add {i} and {i + 3}"},
                      {"role": "assistant", "content": f"{2 * i + 3}"}]} for i in range(6)]

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = make_model_dir(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get


def load(model_dir, kind: str):
    method = {"kind": kind, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}} if kind == "lora" else {"kind": kind}
    spec = resolve_spec({"name": "arch", "model": {"path": str(model_dir)}, "method": method,
                         "data": {"train": {"path": "train.jsonl", "format": "chat"}, "packing": True}},
                        check_files=False)
    model, _ = build_model(spec, str(model_dir), on_gpu=False)
    return model, load_tokenizer(str(model_dir), spec.model)


def examples(tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(e.input_ids, e.labels) for e in encode_rows(ROWS, "chat", ColumnsSpec(), tokenizer, 128)]


def packed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Every example in one packed row (none is cut at a row's end)."""
    pairs = examples(tokenizer)
    return collate(list(pack_examples(pairs, sum(len(ids) for ids, _ in pairs))), tokenizer.pad_token_id)


def train(model, batch, lr: float, steps: int = 5) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    losses = []
    for _ in range(steps):
        loss = token_loss_sum(model, batch) / tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", ARCHS)
def test_a_packed_row_has_the_loss_of_its_examples_alone(name, model_dir):
    model, tokenizer = load(model_dir(name), "full")
    model.eval()
    with torch.no_grad():
        packed = float(token_loss_sum(model, packed_batch(tokenizer)))
        # Packing never trains an example's first token (it would be predicted from the example before).
        alone = sum(float(token_loss_sum(model, collate([{"input_ids": ids, "labels": [-100, *labels[1:]]}],
                                                        tokenizer.pad_token_id)))
                    for ids, labels in examples(tokenizer))
    assert packed == pytest.approx(alone, rel=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_full_fine_tuning_learns_on_packed_rows(name, model_dir):
    model, tokenizer = load(model_dir(name), "full")
    losses = train(model, packed_batch(tokenizer), lr=3e-3)
    assert losses[-1] < 0.85 * losses[0], losses


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


@pytest.mark.parametrize("name", ARCHS)
def test_a_trained_lora_adapter_merges_into_weights_that_give_base_plus_adapter(name, model_dir, tmp_path):
    base = model_dir(name)
    model, tokenizer = load(base, "lora")
    losses = train(model, packed_batch(tokenizer), lr=1e-2)
    assert losses[-1] < 0.95 * losses[0], losses  # random weights: a rank-4 adapter moves the loss slowly
    model.save_pretrained(tmp_path / "adapter")

    manifest = merge_and_verify(MergeRequest(adapters=[tmp_path / "adapter"], base=str(base), out=tmp_path / "merged"))
    check = manifest["verification"]
    assert check["passed"] and check["max_abs_logit_diff"] <= 1e-4 and check["reference"].startswith("peft")
    before, after = tensors(base), tensors(tmp_path / "merged")
    assert set(before) == set(after)  # stored as the base stores them
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".self_attn." in k for k in changed), sorted(changed)
    if ARCHS[name].moe:  # peft's all-linear adapts the experts too, and the merge wrote them
        assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_parameters"]
        assert any(".experts." in k for k in changed), sorted(changed)


@pytest.mark.parametrize("name, refused", [("qwen3-moe", True), ("mixtral", True), ("qwen3", False)])
def test_lora_dropout_on_a_moe_model_is_refused_before_anything_runs(name, refused, model_dir, tmp_path):
    from orchestrator.spec import SpecError

    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    job = {"name": "arch", "model": {"path": str(model_dir(name))}, "method": {"kind": "lora", "lora": {"dropout": 0.05}},
           "data": {"train": {"path": str(tmp_path / "train.jsonl"), "format": "text"}}}
    if not refused:
        resolve_spec(job)
        return
    with pytest.raises(SpecError) as err:
        resolve_spec(job)
    assert "method.lora.dropout" in str(err.value) and "dropout=0" in str(err.value)
