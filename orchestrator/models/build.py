"""Build the model and tokenizer a method trains: resolve the base, then apply the method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec import paths
from orchestrator.spec.models import JobSpec, MethodSpec, ModelSpec


class ModelError(Exception):
    """The base model cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable / {self.total:,} total ({100 * self.fraction:.2f}%)"


def resolve_model_dir(model: ModelSpec, progress=None) -> str:
    """A local directory (or hub id) that `from_pretrained` can load; installs the tiny base on first use."""
    loc = paths.locate_model(model.path)
    if loc.kind == "builtin":
        from orchestrator.models.tiny.build import ensure_tiny_base

        return str(ensure_tiny_base(progress=progress))
    if loc.kind == "local":
        if not (Path(loc.value) / "config.json").is_file():
            raise ModelError(f"model.path '{model.path}' is not a Hugging Face model directory (no config.json)")
        return loc.value
    return loc.value


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(model_dir: str) -> None:
    """A local model dir must hold safetensors weights: pickle files are refused before any
    worker starts (unpickling can run code), with how to convert them."""
    root = Path(model_dir)
    if not root.is_dir() or any(root.glob("*.safetensors")):
        return
    pickled = sorted(f.name for f in root.iterdir() if f.suffix in PICKLE_SUFFIXES)
    fix = "save it with save_pretrained(dir, safe_serialization=True) and point model.path at that dir"
    if pickled:
        raise ModelError(f"model dir '{model_dir}' holds its weights only as pickle files ({', '.join(pickled[:2])}); "
                         f"ftctl loads safetensors only, since unpickling a file can run code: {fix}")
    raise ModelError(f"model dir '{model_dir}' holds no weights (model.safetensors): {fix}")


def check_method_fits_model(spec: JobSpec, model_dir: str) -> None:
    """Checks that need the model's config, done on the driver before any worker starts."""
    from transformers import AutoConfig

    if spec.method.kind != "freeze":
        return
    config = AutoConfig.from_pretrained(model_dir, revision=spec.model.revision,
                                        trust_remote_code=spec.model.trust_remote_code)
    layers = getattr(config, "num_hidden_layers", None)
    wanted = spec.method.freeze.trainable_layers
    if layers is not None and wanted > layers:
        raise ModelError(f"method.freeze.trainable_layers={wanted} but the model has only {layers} blocks; "
                         f"use at most {layers}")


def load_tokenizer(model_dir: str, model: ModelSpec):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, revision=model.revision,
                                            trust_remote_code=model.trust_remote_code)
    except OSError as err:
        raise ModelError(_load_hint(model, err)) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_hint(model: ModelSpec, err: Exception) -> str:
    if paths.locate_model(model.path).kind == "hub":
        return (f"could not load model '{model.path}' from the hub or its local cache ({err.__class__.__name__}); "
                f"download it (huggingface-cli download {model.path} --local-dir DIR) and set model.path to DIR")
    return f"could not load model '{model.path}': {err}"


def torch_dtype(spec: JobSpec, on_gpu: bool):
    import torch

    from orchestrator.models.memory import load_dtype

    return getattr(torch, load_dtype(spec, on_gpu))


def attention_kernel(spec: JobSpec, on_gpu: bool) -> str | None:
    """The attention implementation a job loads its model with (None: transformers' sdpa).

    Packed rows on a GPU need a kernel that skips the blocks between examples:
    flash-attention's varlen path when flash-attn is installed, else FlexAttention's block
    mask (SDPA would be handed a dense mask and lose its fast kernels). Unpacked batches, and
    every CPU run, use SDPA."""
    if spec.model.attn_implementation:
        return spec.model.attn_implementation
    if not on_gpu or not spec.data.packing or spec.method.kind == "head":
        return None
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "flex_attention"


def build_model(spec: JobSpec, model_dir: str, on_gpu: bool, notes: list[str] | None = None) -> tuple[Any, ParamCount]:
    """Load the base model and make only the weights the method trains require grad. What
    was chosen for it (attention, kernels, compile) is appended to `notes` as one line."""
    from transformers import AutoModelForCausalLM

    m = spec.model
    kwargs: dict[str, Any] = dict(revision=m.revision, trust_remote_code=m.trust_remote_code,
                                  dtype=torch_dtype(spec, on_gpu))
    attention = attention_kernel(spec, on_gpu)
    if attention:
        kwargs["attn_implementation"] = attention
    if spec.method.kind == "head":
        from orchestrator.models.classifier import build_classifier

        head = spec.method.head
        model = build_classifier(model_dir, m.path, head.num_labels, head.pooling, kwargs["dtype"],
                                 m.revision, m.trust_remote_code)
        return model, count_params(model)
    if spec.method.kind == "qlora":
        kwargs["quantization_config"] = bnb_config(spec.method)
    if Path(model_dir).is_dir():  # never unpickle a local dir's weights (validation said so already)
        kwargs["use_safetensors"] = True
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        except ValueError as err:
            if m.attn_implementation or kwargs.get("attn_implementation") != "flex_attention":
                raise
            if notes is not None:
                notes.append(f"this architecture has no flex_attention ({str(err).splitlines()[0][:160]}); "
                             "using sdpa with a per-example mask")
            kwargs["attn_implementation"] = "sdpa"
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except OSError as err:
        raise ModelError(_load_hint(m, err)) from None
    from orchestrator.models.kernels import apply_compile, prepare_kernels

    model, kernels_note = prepare_kernels(model, spec, on_gpu)  # Liger patches the base, before PEFT wraps it
    if notes is not None:
        notes.append(kernels_note)
    if spec.method.kind == "qlora":
        from peft import prepare_model_for_kbit_training

        # Norms and head to fp32 and input grads on, so adapters on a 4-bit base train stably.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    model = apply_method(model, spec.method, pure=spec.training.precision == "bf16-pure")
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if spec.training.compile:
        apply_compile(model)
    return model, count_params(model)


def apply_method(model, method: MethodSpec, pure: bool = False):
    """Make only the weights `method` trains require grad. LoRA adapters are fp32 over a
    16-bit base (PEFT's autocast_adapter_dtype) unless `pure` (bf16-pure) keeps them bf16."""
    kind = method.kind
    if kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if kind in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lora = method.lora
        assert lora is not None  # filled by MethodSpec for lora and qlora
        config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, use_dora=lora.use_dora, use_rslora=lora.use_rslora,
            bias=lora.bias, task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config, autocast_adapter_dtype=not pure)
        if lora.init_adapter:
            warm_start(model, lora)
        return model
    if kind == "freeze":
        return freeze_early_layers(model, method.freeze.trainable_layers, method.freeze.train_embeddings)
    raise ModelError(f"method.kind={kind} is not available in this version of ftctl")


def warm_start(model, lora) -> None:
    """Load a trained adapter's weights into the fresh adapter built from `lora`; every
    adapter weight must be found, with its shape, and rank and alpha must agree."""
    import json
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    path = Path(lora.init_adapter).expanduser()
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ModelError(f"method.lora.init_adapter {path}: no adapter_config.json there; point it at a PEFT "
                         "adapter dir (a run's adapter/)")
    saved = json.loads(config_file.read_text())
    for key, want in (("r", lora.r), ("lora_alpha", lora.alpha), ("use_dora", lora.use_dora),
                      ("use_rslora", lora.use_rslora)):
        if saved.get(key, False if key.startswith("use_") else None) != want:
            raise ModelError(f"method.lora.init_adapter {path} has {key}={saved.get(key)} but this job sets "
                             f"{want}; use the adapter's settings to continue training it")
    try:
        weights = load_peft_weights(str(path), device="cpu")
        result = set_peft_model_state_dict(model, weights)
    except (RuntimeError, OSError, ValueError) as err:
        raise ModelError(f"method.lora.init_adapter {path} does not fit this model: "
                         f"{str(err).strip().splitlines()[0][:300]}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ModelError(f"method.lora.init_adapter {path} adapts other modules than this job "
                         f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]}); "
                         "set method.lora.target_modules to the adapter's")


def bnb_config(method: MethodSpec):
    """bitsandbytes 4-bit settings of a qlora job (the base stays frozen in 4 bits)."""
    import torch
    from transformers import BitsAndBytesConfig

    q = method.quantization
    assert q is not None  # filled by MethodSpec for qlora
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))


def freeze_early_layers(model, trainable_layers: int, train_embeddings: bool):
    """Train the last N decoder blocks, the final norm and the output head; freeze the rest."""
    layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise ModelError(f"method.freeze.trainable_layers={trainable_layers} but the model has only "
                         f"{len(layers)} blocks; use at most {len(layers)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in layers[len(layers) - trainable_layers:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for module in (getattr(model.get_decoder(), "norm", None), model.get_output_embeddings()):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)
    if train_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(True)
    return model


def decoder_layers(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__} to freeze")
    return list(layers)


def count_params(model) -> ParamCount:
    if hasattr(model, "get_nb_trainable_parameters"):
        # PEFT counts 4-bit weights by their real size (bitsandbytes packs two per byte).
        trainable, total = model.get_nb_trainable_parameters()
        return ParamCount(int(trainable), int(total))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParamCount(trainable, total)
