"""A model's shape (sizes, layers, heads) from its config.json, the Hugging Face cache, or
a table of well-known architectures; and the parameter counts that follow from it. No
torch, no network."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.spec import paths
from orchestrator.spec.models import JobSpec, LoraSpec

BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelShapeError(ValueError):
    """The model's architecture cannot be read; the message says what to do."""


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool
    max_position_embeddings: int | None = None
    head_dim: int | None = None
    """Per-head width when it differs from hidden_size / num_heads (config `head_dim`)."""

    @property
    def q_dim(self) -> int:
        return (self.head_dim or self.hidden_size // self.num_heads) * self.num_heads

    @property
    def kv_dim(self) -> int:
        return (self.head_dim or self.hidden_size // self.num_heads) * self.num_kv_heads


# Public config.json values of well-known base models, for estimates without a download.
_LLAMA3_8B = ModelShape(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                        num_heads=32, num_kv_heads=8, tie_embeddings=False, max_position_embeddings=8192)
_LLAMA31_8B = replace(_LLAMA3_8B, max_position_embeddings=131072)
_MISTRAL_7B = ModelShape(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                         num_heads=32, num_kv_heads=8, tie_embeddings=False, max_position_embeddings=32768)
_QWEN25_7B = ModelShape(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                        num_heads=28, num_kv_heads=4, tie_embeddings=False, max_position_embeddings=131072)
_LLAMA2_7B = ModelShape(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                        num_heads=32, num_kv_heads=32, tie_embeddings=False, max_position_embeddings=4096)

KNOWN_SHAPES: dict[str, ModelShape] = {
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "mistralai/Mistral-7B-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "Qwen/Qwen2.5-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
}


# ----------------------------------------------------------------------- shapes


def model_shape(model_path: str, revision: str | None = None) -> ModelShape:
    """The architecture behind `model.path`: a local dir, `builtin:tiny-base`, or a hub id."""
    loc = paths.locate_model(model_path)
    if loc.kind == "builtin":
        return _tiny_base_shape()
    if loc.kind == "local":
        config = Path(loc.value) / "config.json"
        if not config.is_file():
            raise ModelShapeError(f"'{loc.value}' has no config.json; point model.path at a Hugging Face model directory")
        return shape_from_config(_read_config(config), source=str(config))
    cached = _hf_cache_config(model_path, revision)
    if cached is not None:
        return shape_from_config(_read_config(cached), source=str(cached))
    known = {k.lower(): v for k, v in KNOWN_SHAPES.items()}.get(model_path.lower())
    if known is not None:
        return known
    raise ModelShapeError(
        f"the architecture of '{model_path}' is unknown here (not in the Hugging Face cache, not a built-in "
        f"shape); download it (huggingface-cli download {model_path} --local-dir DIR) and set model.path to DIR, "
        f"or point model.path at a local model directory")


def shape_from_config(config: dict, source: str = "config.json") -> ModelShape:
    """Read a Llama-style Hugging Face `config.json` (Llama, Mistral, Qwen2, ...)."""
    config = config.get("text_config", config)  # multimodal wrappers keep the decoder here
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if not isinstance(config.get(k), int)]
    if missing:
        raise ModelShapeError(f"{source} lacks {', '.join(missing)}; the estimate models Llama-style decoders "
                              f"(Llama, Mistral, Qwen2) and cannot read this architecture")
    heads = config["num_attention_heads"]
    return ModelShape(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        # LlamaConfig's default; the configs of tied models say so explicitly.
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=config.get("max_position_embeddings"),
        head_dim=config.get("head_dim") if config.get("head_dim") != config["hidden_size"] // heads else None,
    )


def _tiny_base_shape() -> ModelShape:
    # Imported here: the build module keeps torch out of its module level, but the tiny
    # package is only needed for this one model.
    from orchestrator.models.tiny import build
    from orchestrator.models.tiny.tokenizer import SPECIAL_TOKENS

    config = build.tiny_base_dir() / "config.json"
    if config.is_file():
        return shape_from_config(_read_config(config), source=str(config))
    # Not built yet: the recipe's numbers, and the values its LlamaConfig fixes (byte-level
    # vocabulary of 256 symbols plus the special tokens, tied head, 128 positions).
    r = build.RECIPE
    return ModelShape(vocab_size=256 + len(SPECIAL_TOKENS), hidden_size=r.hidden_size,
                      intermediate_size=r.intermediate_size, num_layers=r.num_layers, num_heads=r.num_heads,
                      num_kv_heads=r.num_heads, tie_embeddings=True, max_position_embeddings=128)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelShapeError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise ModelShapeError(f"{path} is not a JSON object; expected a Hugging Face model config")
    return config


def _hf_cache_config(repo_id: str, revision: str | None) -> Path | None:
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    repo = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / (revision or "main")
    if ref.is_file():
        pinned = repo / "snapshots" / ref.read_text().strip() / "config.json"
        if pinned.is_file():
            return pinned
    if revision and (repo / "snapshots" / revision / "config.json").is_file():
        return repo / "snapshots" / revision / "config.json"
    found = sorted((repo / "snapshots").glob("*/config.json"))
    return found[0] if found else None


# ------------------------------------------------------------------- parameters


def block_linears(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer of one decoder block."""
    h, i = shape.hidden_size, shape.intermediate_size
    return {"q_proj": (h, shape.q_dim), "k_proj": (h, shape.kv_dim), "v_proj": (h, shape.kv_dim),
            "o_proj": (shape.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def block_parameter_count(shape: ModelShape) -> int:
    """One decoder block: its linears and its two RMSNorms (no biases, as in Llama)."""
    return sum(a * b for a, b in block_linears(shape).values()) + 2 * shape.hidden_size


def parameter_count(shape: ModelShape) -> int:
    """Embeddings + blocks + final norm + output head (unless tied to the embeddings)."""
    embeddings = shape.vocab_size * shape.hidden_size
    head = 0 if shape.tie_embeddings else embeddings
    return embeddings + shape.num_layers * block_parameter_count(shape) + shape.hidden_size + head


def adapter_parameter_count(shape: ModelShape, lora: LoraSpec) -> int:
    """LoRA parameters: r * (in + out) per adapted linear (+ out for DoRA's magnitude vector)."""
    linears = block_linears(shape)
    targets = list(BLOCK_LINEARS) if lora.target_modules == "all-linear" else lora.target_modules
    per_block = sum(lora.r * (a + b) + (b if lora.use_dora else 0)
                    for name, (a, b) in linears.items() if name in targets)
    v, h = shape.vocab_size, shape.hidden_size
    extra = 0
    if "lm_head" in targets:
        extra += lora.r * (h + v) + (v if lora.use_dora else 0)
    if "embed_tokens" in targets:  # PEFT's embedding LoRA: A is (r, vocab), B is (hidden, r)
        extra += lora.r * (v + h)
    return shape.num_layers * per_block + extra


def trainable_parameter_count(spec: JobSpec, shape: ModelShape) -> int:
    m = spec.method
    embeddings = shape.vocab_size * shape.hidden_size
    if m.kind == "full":
        return parameter_count(shape)
    if m.kind in ("lora", "qlora"):
        return adapter_parameter_count(shape, m.lora or LoraSpec())
    if m.kind == "freeze":
        f = m.freeze
        layers = min(f.trainable_layers, shape.num_layers)
        # Last N blocks + final norm + output head; a tied head *is* the embedding matrix.
        trainable = layers * block_parameter_count(shape) + shape.hidden_size + embeddings
        if f.train_embeddings and not shape.tie_embeddings:
            trainable += embeddings
        return trainable
    # head: a new linear classifier on the pooled hidden state (no bias, as in Llama's).
    return shape.hidden_size * m.head.num_labels


# -------------------------------------------------------------------- estimate
