"""Packed rows must not let an example attend to the example before it."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.models.loss import block_causal_mask, packed_or_padded_inputs


def test_block_causal_mask_allows_only_earlier_tokens_of_the_same_example():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]), torch.float32)[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [0, 0, 0, 1, 0],
                       [0, 0, 0, 1, 1]]


def test_packed_example_gets_the_same_logits_as_alone():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=32)).eval()
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11]])
    batch = {"input_ids": torch.cat([a, b], 1), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]]),
             "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    with torch.no_grad():
        packed = model(**packed_or_padded_inputs(batch)).logits
        alone_a = model(input_ids=a).logits
        alone_b = model(input_ids=b).logits
    assert torch.allclose(packed[0, :4], alone_a[0], atol=1e-5)
    assert torch.allclose(packed[0, 4:], alone_b[0], atol=1e-5)
