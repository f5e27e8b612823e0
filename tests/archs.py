"""Small random-initialised models of real architectures, made offline for tests.

Each keeps what makes its architecture different (grouped-query ratio, rope scaling, qk-norm,
decoupled head_dim, sliding windows, logit softcapping, fused projections, experts, tied or
untied embeddings) and shrinks the rest (hidden 64, 2 layers). The tokenizer is the tiny
base's byte-level one plus the architecture's own chat-turn tokens, and the chat template is
written in the architecture's style, so chat data goes through a real template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
                "{% else %}{{ raise_exception('only user and assistant roles') }}{% endif %}{% endfor %}")
GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}"
              "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
              "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3_CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=256)


@dataclass(frozen=True)
class Arch:
    name: str
    config_class: str                 # transformers config class
    settings: dict                    # what the real model sets (besides the small sizes)
    chat_template: str
    chat_tokens: tuple[str, ...]
    moe: bool = False
    extra: dict = field(default_factory=dict)


ARCHS = {a.name: a for a in (
    # Llama 3 8B: 32 heads / 8 KV heads, llama3 rope scaling (3.1), untied head.
    Arch("llama3", "LlamaConfig", dict(
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
         LLAMA3_CHAT, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    # Qwen2.5 0.5B-3B: 7 query heads per KV head, qkv biases, tied head.
    Arch("qwen2.5", "Qwen2Config", dict(
        hidden_size=56, num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), CHATML, ("<|im_start|>", "<|im_end|>")),
    # Qwen3 0.6B-4B: qk-norm, head_dim decoupled from hidden / heads, tied head.
    Arch("qwen3", "Qwen3Config", dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), CHATML, ("<|im_start|>", "<|im_end|>")),
    # Mistral 7B v0.1: sliding-window attention (4096 there), 4 query heads per KV head.
    Arch("mistral", "MistralConfig", dict(
        num_attention_heads=8, num_key_value_heads=2, sliding_window=16, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), MISTRAL_CHAT, ("[INST]", "[/INST]")),
    # Gemma 2: attention and final logit softcapping, sliding and full layers alternating,
    # query_pre_attn_scalar, large head_dim, tied head.
    Arch("gemma2", "Gemma2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention"]), GEMMA_CHAT, ("<start_of_turn>", "<end_of_turn>")),
    # Phi-3 mini 128k: fused qkv_proj and gate_up_proj, longrope scaling, untied head.
    Arch("phi3", "Phi3Config", dict(
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, original_max_position_embeddings=64,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                         "long_factor": [1.0 + i / 4 for i in range(8)]}),
         PHI3_CHAT, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    # Qwen3-30B-A3B: experts stored fused as 3-D tensors, top-k routing with normalised
    # weights, qk-norm, untied head.
    Arch("qwen3-moe", "Qwen3MoeConfig", dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, norm_topk_prob=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
         CHATML, ("<|im_start|>", "<|im_end|>"), moe=True),
    # Mixtral 8x7B: experts saved one tensor each (w1, w2, w3) under block_sparse_moe, fused
    # on load; top-2 routing, untied head.
    Arch("mixtral", "MixtralConfig", dict(
        num_attention_heads=8, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        intermediate_size=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
         MISTRAL_CHAT, ("[INST]", "[/INST]"), moe=True),
)}


def make_tokenizer(arch: Arch):
    """The tiny base's byte-level tokenizer with the architecture's turn tokens and chat template."""
    from orchestrator.models.tiny.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(arch.chat_tokens)})
    tokenizer.chat_template = arch.chat_template
    return tokenizer


def make_model_dir(arch: Arch | str, out: Path, seed: int = 0) -> Path:
    """Save a small random-initialised `arch` model (safetensors) with its tokenizer into `out`."""
    import torch
    import transformers

    arch = ARCHS[arch] if isinstance(arch, str) else arch
    tokenizer = make_tokenizer(arch)
    config = getattr(transformers, arch.config_class)(
        **{**SMALL, **arch.settings, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
