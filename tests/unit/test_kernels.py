"""training.kernels and training.compile: which kernels a run gets and why, the fused loss's
call contract, and that compiling the decoder blocks changes neither losses nor saved keys."""

from __future__ import annotations

from types import MethodType

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.models.kernels import (KernelError, choose_kernels, fused_loss_refusal, fused_token_loss_sum,
                                         prepare_kernels, token_loss_fn)
from orchestrator.models.loss import token_loss_sum
from orchestrator.spec import JobSpec, SpecError, resolve_spec

LIGER = {"llama", "qwen2", "gemma2"}


def job(**training) -> JobSpec:
    raw = {"name": "kernels", "data": {"train": {"path": "train.jsonl"}}, "training": {"max_steps": 3, **training}}
    return resolve_spec(raw, check_files=False)


@pytest.mark.parametrize("setting, on_gpu, model_type, installed, used, words", [
    ("none", True, "llama", LIGER, "none", "training.kernels is none"),
    ("auto", False, "llama", LIGER, "none", "auto: no CUDA"),
    ("auto", True, "llama", None, "none", "liger-kernel not installed"),
    ("auto", True, "gpt2", LIGER, "none", "no kernels for model type 'gpt2'"),
    ("auto", True, "llama", LIGER, "liger", "CUDA, model type 'llama'"),
    ("liger", True, "qwen2", LIGER, "liger", "liger: CUDA"),
])
def test_choice_and_its_reason(setting, on_gpu, model_type, installed, used, words):
    got, reason = choose_kernels(setting, on_gpu, model_type, installed)
    assert got == used and words in reason


@pytest.mark.parametrize("on_gpu, installed, model_type, words", [
    (False, LIGER, "llama", "needs CUDA"),
    (True, None, "llama", "pip install liger-kernel"),
    (True, LIGER, "gpt2", "no kernels for model type 'gpt2'"),
])
def test_liger_that_cannot_run_is_refused_with_what_to_do(on_gpu, installed, model_type, words):
    with pytest.raises(KernelError, match=words) as err:
        choose_kernels("liger", on_gpu, model_type, installed)
    assert "training.kernels auto or none" in str(err.value) and "\n" not in str(err.value)


def test_liger_on_a_cpu_job_is_refused_by_validation():
    with pytest.raises(SpecError, match="CUDA only"):
        job(kernels="liger")


def llama_like(model=None, rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=True,
               cross_entropy=False):
    pass


def granite_like(model=None, rope=True, cross_entropy=True, fused_linear_cross_entropy=False):
    pass


def test_fused_loss_is_refused_where_it_would_be_wrong():
    spec = job()
    assert fused_loss_refusal(llama_like, LlamaConfig(), spec) is None
    assert "no fused loss" in fused_loss_refusal(granite_like, LlamaConfig(), spec)
    assert "final_logit_softcapping=30.0" in fused_loss_refusal(llama_like, LlamaConfig(final_logit_softcapping=30.0),
                                                                 spec)
    zero3 = JobSpec.model_validate({**spec.model_dump(), "resources": {**spec.resources.model_dump(),
                                                                       "strategy": "deepspeed", "zero_stage": 3}})
    assert "ZeRO-3" in fused_loss_refusal(llama_like, LlamaConfig(), zero3)


def small_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def packed_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, 0] = labels[0, 5] = -100  # the first token of each packed example is never a target
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.tensor([list(range(5)) + list(range(7)), list(range(12))])}


def test_a_cpu_run_says_which_kernels_attention_and_compile_it_used():
    _, note = prepare_kernels(small_llama(), job(compile=True), on_gpu=False)
    assert note.startswith("kernels: none (auto: no CUDA)") and "attention:" in note and "compile: on" in note


def test_fused_loss_call_is_the_summed_token_loss():
    """The fused path's call (labels, num_items_in_batch=1: reduction sum) gives token_loss_sum
    on transformers' own forward, which Liger's forward mirrors without the logits."""
    model, batch = small_llama(), packed_batch()
    assert torch.allclose(fused_token_loss_sum(model, batch), token_loss_sum(model, batch), rtol=1e-5)


def test_the_fused_loss_is_chosen_only_where_liger_installed_its_forward():
    from peft import LoraConfig, get_peft_model

    plain = small_llama()
    assert token_loss_fn(plain) is token_loss_sum

    def liger_forward(self, **kwargs):  # stands in for Liger's lce_forward (CUDA only)
        return LlamaForCausalLM.forward(self, **kwargs)

    liger_forward.__module__ = "liger_kernel.transformers.model.llama"
    patched = small_llama()
    patched.forward = MethodType(liger_forward, patched)
    wrapped = get_peft_model(patched, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert token_loss_fn(wrapped) is fused_token_loss_sum


def train_losses(compile_blocks: bool, steps: int = 4) -> tuple[list[float], object]:
    from orchestrator.models.build import apply_method

    spec = job(compile=compile_blocks)
    model = apply_method(small_llama(), JobSpec.model_validate({**spec.model_dump(), "method": {"kind": "lora", "lora": {"dropout": 0.0}}}).method)
    model.get_input_embeddings().weight.requires_grad_(True)  # every block then gets inputs that need grad: one compile
    if compile_blocks:
        from orchestrator.models.kernels import apply_compile

        # aot_eager: dynamo captures each block and AOT autograd traces its backward, as with
        # inductor, without inductor's code generation (a minute of CPU here); inductor's own
        # numerics are torch's to test, and the GPU tests run it.
        apply_compile(model, backend="aot_eager")
    # SGD, not AdamW: Adam's first steps move every weight by about lr whatever the size of its
    # gradient, so rounding-level differences in near-zero gradients would show as loss gaps.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(steps):
        loss = token_loss_sum(model, packed_batch())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, model


def test_compiled_blocks_train_the_same_and_save_the_same_keys():
    eager, eager_model = train_losses(False)
    compiled, compiled_model = train_losses(True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()
    from peft import get_peft_model_state_dict

    assert get_peft_model_state_dict(compiled_model).keys() == get_peft_model_state_dict(eager_model).keys()
