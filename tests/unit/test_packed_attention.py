"""Packed rows keep each example to itself, without a dense mask of ftctl's own: the loss and
gradients of a packed batch equal those of the same examples unpacked."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.data.collate import collate
from orchestrator.data.packing import pack_examples
from orchestrator.models.loss import block_causal_mask, derives_packed_masks, packed_or_padded_inputs, token_loss_sum

PAD = 0


def tiny_llama(attn: str = "sdpa", cls=LlamaForCausalLM):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return cls._from_config(config, attn_implementation=attn)


def examples(*shapes):
    """(input_ids, labels) pairs of the given (length, prompt length); the prompt tokens are
    masked like chat data's."""
    g = torch.Generator().manual_seed(1)
    out = []
    for length, prompt in shapes:
        ids = torch.randint(1, 48, (length,), generator=g).tolist()
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


def test_block_causal_mask_allows_only_earlier_tokens_of_the_same_example():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]), torch.float32)[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [0, 0, 0, 1, 0],
                       [0, 0, 0, 1, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_example_gets_the_same_logits_as_alone(attn):
    model = tiny_llama(attn).eval()
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11]])
    batch = {"input_ids": torch.cat([a, b], 1), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]]),
             "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    inputs = packed_or_padded_inputs(model, batch)
    assert "attention_mask" not in inputs  # transformers derives the per-example mask itself
    with torch.no_grad():
        packed = model(**inputs).logits
        alone_a = model(input_ids=a).logits
        alone_b = model(input_ids=b).logits
    assert torch.allclose(packed[0, :4], alone_a[0], atol=1e-5)
    assert torch.allclose(packed[0, 4:], alone_b[0], atol=1e-5)


def loss_and_grads(model, batches):
    model.zero_grad()
    loss = sum(token_loss_sum(model, b) for b in batches)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_has_the_loss_and_gradients_of_the_examples_unpacked(attn):
    model = tiny_llama(attn)
    pairs = examples((7, 3), (9, 4), (5, 0), (4, 1), (7, 2))
    rows = list(pack_examples(pairs, 16))  # 7+9 | 5+4+7: no example is split across rows
    assert [r["position_ids"].count(0) for r in rows] == [2, 3]
    packed = collate(rows[:1], PAD), collate(rows[1:], PAD)
    unpacked = [collate([{"input_ids": ids, "labels": labels}], PAD) for ids, labels in pairs]

    packed_loss, packed_grads = loss_and_grads(model, packed)
    alone_loss, alone_grads = loss_and_grads(model, unpacked)
    assert packed_loss == pytest.approx(float(alone_loss), rel=1e-5)
    for name, grad in alone_grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=1e-5, atol=1e-6), name


def test_packed_rows_with_padding_keep_the_padding_apart():
    """The last row of a batch is padded with a fresh position run: it is a separate 'example'
    whose labels are ignored, so it changes neither the loss nor the gradients."""
    model = tiny_llama()
    rows = list(pack_examples(examples((7, 3), (9, 4), (5, 0), (4, 1)), 16))
    assert [len(r["input_ids"]) for r in rows] == [16, 9]
    together, _ = loss_and_grads(model, [collate(rows, PAD)])  # the second row is padded to 16
    apart, _ = loss_and_grads(model, [collate([r], PAD) for r in rows])
    assert float(together) == pytest.approx(float(apart), rel=1e-5)


class _RemoteCodeLlama(LlamaForCausalLM):
    """Stands for model code that does not come with transformers' mask helpers."""


def test_model_code_without_mask_helpers_gets_the_dense_block_mask():
    assert derives_packed_masks(tiny_llama())
    model = tiny_llama(cls=_RemoteCodeLlama)
    assert not derives_packed_masks(model)
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "position_ids": torch.tensor([[0, 0, 1]])}
    mask = packed_or_padded_inputs(model, batch)["attention_mask"]
    assert mask.shape == (1, 1, 3, 3) and float(mask[0, 0, 1, 0]) < -1e30
