"""Per-worker memory estimate of a job, before any allocation: `ftctl estimate`.

Pure functions over a `JobSpec` and a `ModelShape` (read from a model's `config.json`, the
Hugging Face cache, or a small table of well-known architectures). No torch, no network.

The model is a Llama-style decoder (embeddings, blocks of GQA attention + gated MLP with
RMSNorms, final norm, output head). The figures are estimates of the steady-state peak:
they leave out allocator fragmentation and library workspaces beyond a fixed CUDA context,
so treat a verdict within ~10% of the budget as uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.models.shape import (BLOCK_LINEARS, ModelShape, block_linears, block_parameter_count, parameter_count,
                                        trainable_parameter_count)
from orchestrator.spec.models import JobSpec

GiB = 1024**3

# CUDA context, cuBLAS/NCCL workspaces and the caching allocator's slack, per GPU process.
CUDA_CONTEXT_BYTES = 1 * GiB

# QLoRA (Dettmers et al. 2023): NF4/FP4 store 4 bits per weight, plus one absmax constant per
# block of 64 weights. Without double quantisation the constant is fp32 (32/64 = 0.5 bit per
# weight); with it, 8-bit constants plus one fp32 per 256 of them (8/64 + 32/(64*256) = 0.127 bit).
NF4_BYTES_PER_PARAM = 0.5
QUANT_CONSTANT_BYTES = {True: 0.127 / 8, False: 0.5 / 8}

# AdamW keeps two moments per trainable parameter in fp32.
ADAM_BYTES_PER_PARAM = 8
# Mixed precision keeps an fp32 master copy of every trainable weight held in 16 bits
# (ZeRO and FSDP count it with the optimizer states, and shard/offload it with them).
MASTER_BYTES_PER_PARAM = 4

# DeepSpeed ZeRO-1/2 default reduce and all-gather bucket sizes (elements).
DEEPSPEED_BUCKET_ELEMENTS = 500_000_000



@dataclass
class MemoryEstimate:
    """Bytes per worker (on its GPU, or in RAM for CPU workers)."""

    weights: int
    """Base model weights (frozen or trained), in the load dtype; 4-bit for qlora."""
    adapter_weights: int
    """LoRA/QLoRA adapter weights (fp32)."""
    gradients: int
    optimizer_states: int
    """AdamW moments plus fp32 master weights where the trained weights are 16-bit."""
    activations: int
    """Kept for the backward pass of one micro-batch, including the logits and the loss."""
    buffers: int
    """Communication buckets (DDP, ZeRO-1/2) or gathered full layers (ZeRO-3, FSDP)."""
    overhead: int
    """CUDA context and workspaces (GPU only)."""
    offloaded: int
    """Moved to host RAM by resources.offload (not counted in total)."""
    total_params: int
    trainable_params: int
    on_gpu: bool
    budget: int | None
    """Memory available to one worker, or None when unknown."""
    notes: list[str] = field(default_factory=list)
    base_copy: int = 0
    """A frozen copy of the base for training.kl_to_base on full/freeze fine-tuning."""

    @property
    def total(self) -> int:
        return (self.weights + self.base_copy + self.adapter_weights + self.gradients + self.optimizer_states
                + self.activations + self.buffers + self.overhead)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.total <= self.budget

    def rows(self) -> list[tuple[str, int]]:
        """(label, bytes) per component, in display order."""
        copy = [("frozen base copy (kl_to_base)", self.base_copy)] if self.base_copy else []
        return [("weights", self.weights), *copy, ("adapter weights", self.adapter_weights),
                ("gradients", self.gradients), ("optimizer states", self.optimizer_states),
                ("activations", self.activations), ("buffers", self.buffers), ("CUDA context", self.overhead)]


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def load_dtype(spec: JobSpec, on_gpu: bool) -> str:
    """The dtype the base weights load in (`model.dtype`, or what `auto` means for this job).

    `auto` keeps every weight that trains in float32 under bf16 mixed precision, so ddp and
    fsdp hold fp32 master weights (and AdamW fp32 states) while computing in bf16; weights
    that stay frozen (lora, qlora, head) load in bfloat16 on a GPU, and so does a ZeRO job,
    which keeps its own fp32 master copy. bf16-pure loads everything in bfloat16. fp16 mixed
    precision wants fp32 weights: its loss scaler refuses fp16 gradients."""
    if spec.model.dtype != "auto":
        return spec.model.dtype
    precision = spec.training.precision
    if precision == "bf16-pure":
        return "bfloat16"
    if precision != "bf16" or not on_gpu:
        return "float32"
    trains_base = spec.method.kind in ("full", "freeze") and spec.resources.strategy != "deepspeed"
    return "float32" if trains_base else "bfloat16"


def load_dtype_bytes(spec: JobSpec) -> int:
    return _DTYPE_BYTES[load_dtype(spec, spec.resources.gpus_per_worker > 0)]


def estimate_memory(spec: JobSpec, shape: ModelShape, gpu_memory_gib: float | None = None) -> MemoryEstimate:
    """Per-worker memory of `spec` on a model of `shape`; `gpu_memory_gib` is memory per GPU
    (per worker RAM for CPU workers). Without it, `fits` is None."""
    m, r = spec.method, spec.resources
    on_gpu = r.gpus_per_worker > 0
    notes: list[str] = []
    h, v = shape.hidden_size, shape.vocab_size
    w_bytes = load_dtype_bytes(spec)
    total_params = parameter_count(shape)
    trainable = trainable_parameter_count(spec, shape)
    embeddings = v * h
    untied_head = 0 if shape.tie_embeddings else embeddings

    # ---- weights -----------------------------------------------------------------
    adapter_weights = 0
    if m.kind == "qlora":
        q = m.quantization
        compute_bytes = _DTYPE_BYTES[q.compute_dtype]
        linear = shape.num_layers * sum(a * b for a, b in block_linears(shape).values())
        # Block linears in 4 bits (+ constants); embeddings, norms and the head stay in the
        # compute dtype (bitsandbytes does not quantise them).
        weights = int(linear * (NF4_BYTES_PER_PARAM + QUANT_CONSTANT_BYTES[q.double_quant])
                      + (total_params - linear) * compute_bytes)
    elif m.kind == "head":
        # A sequence-classification model has no LM head: the classifier replaces it.
        weights = (total_params - untied_head + trainable) * w_bytes
    else:
        weights = total_params * w_bytes
    pure = spec.training.precision == "bf16-pure"
    if m.kind in ("lora", "qlora"):
        # PEFT keeps adapters in fp32 even over a 16-bit base (autocast_adapter_dtype),
        # except under bf16-pure.
        trained_bytes = 2 if pure else 4
        adapter_weights = trainable * trained_bytes
    else:
        trained_bytes = w_bytes

    # ---- gradients and optimizer -------------------------------------------------
    gradients = trainable * trained_bytes  # in the dtype of the weights they belong to
    # AdamW's moments take the dtype of their weights: bf16 under bf16-pure, which keeps no
    # fp32 master copy either; ZeRO adds a master copy to 16-bit weights.
    optimizer = trainable * (ADAM_BYTES_PER_PARAM // 2 if pure else ADAM_BYTES_PER_PARAM)
    if trained_bytes == 2 and not pure:
        optimizer += trainable * MASTER_BYTES_PER_PARAM

    # ---- sharding across workers ---------------------------------------------------
    n = r.workers
    shard_weights = shard_grads = shard_optimizer = 1
    if r.strategy == "deepspeed":
        stage = r.zero_stage or 2
        shard_optimizer = n
        shard_grads = n if stage >= 2 else 1
        shard_weights = n if stage >= 3 else 1
    elif r.strategy == "fsdp":  # FULL_SHARD: like ZeRO-3
        shard_weights = shard_grads = shard_optimizer = n
    weights //= shard_weights
    adapter_weights //= shard_weights
    gradients //= shard_grads
    optimizer //= shard_optimizer

    # ---- communication buffers -----------------------------------------------------
    buffers = 0
    if r.strategy == "ddp" and n > 1:
        # torch DDP reduces through flat buckets that copy every gradient
        # (gradient_as_bucket_view is off by default).
        buffers = trainable * trained_bytes
    elif r.strategy == "deepspeed" and (r.zero_stage or 2) < 3:
        buffers = 2 * min(trainable, DEEPSPEED_BUCKET_ELEMENTS) * trained_bytes  # reduce + all-gather
    elif r.strategy in ("deepspeed", "fsdp") and n > 1:
        # The unit being computed and the one prefetched are gathered whole; embeddings and
        # the head are gathered as one matrix each.
        unit = max(block_parameter_count(shape), embeddings)
        buffers = 2 * unit * (w_bytes if m.kind != "qlora" else _DTYPE_BYTES[m.quantization.compute_dtype])

    # ---- offload -------------------------------------------------------------------
    offloaded = 0
    if r.offload != "none" and r.strategy != "ddp":
        if not on_gpu:
            notes.append("offload has no effect on CPU workers: everything is in RAM already")
        else:
            offloaded += optimizer
            optimizer = 0
            if r.offload == "all":
                offloaded += weights + adapter_weights
                weights = adapter_weights = 0
                if r.strategy == "fsdp":  # FSDP's CPUOffload moves gradients with the parameters
                    offloaded += gradients
                    gradients = 0

    activations = activation_bytes(spec, shape, notes)
    base_copy = 0
    if spec.training.kl_to_base and m.kind in ("full", "freeze"):
        # Never trained: held in bf16 under bf16 precision on a GPU, else in the load dtype.
        copy_bytes = 2 if on_gpu and spec.training.precision in ("bf16", "bf16-pure") else w_bytes
        base_copy = total_params * copy_bytes
    if spec.forgetting.kl_every_steps and m.kind in ("full", "freeze") and not base_copy:
        notes.append("the KL meter keeps the base's log-probabilities of its probe in host RAM "
                     f"(up to {spec.forgetting.kl_probe_rows} rows x {spec.data.max_seq_len} tokens x {v} x 4 bytes)")
    overhead = CUDA_CONTEXT_BYTES if on_gpu else 0

    budget = None
    if gpu_memory_gib is not None:
        # A fractional GPU is shared; more than one GPU per worker does not split the model.
        share = min(1.0, r.gpus_per_worker) if on_gpu else 1.0
        budget = int(gpu_memory_gib * GiB * share)

    estimate = MemoryEstimate(weights=weights, adapter_weights=adapter_weights, gradients=gradients,
                              optimizer_states=optimizer, activations=activations, buffers=buffers,
                              overhead=overhead, offloaded=offloaded, total_params=total_params,
                              trainable_params=trainable, on_gpu=on_gpu, budget=budget, notes=notes,
                              base_copy=base_copy)
    notes.extend(_advice(spec, estimate))
    return estimate


def activation_bytes(spec: JobSpec, shape: ModelShape, notes: list[str] | None = None) -> int:
    """Activations autograd keeps for one micro-batch of per_device_batch_size x max_seq_len.

    Per block and token it counts what a Llama block saves for backward (cf. Korthikanti et
    al. 2022, who give 34*h bytes for a GPT block in 16 bits): the two norm inputs and
    outputs (4h), q and attention output (2 q_dim), k and v (2 kv_dim), and the MLP's gate,
    up, activation and product (4 intermediate). The attention matrix itself is not kept by
    SDPA/flash kernels; eager attention adds its scores and softmax (2 heads*seq per token).
    With gradient checkpointing only each block's input is kept, plus one block recomputed
    during backward. Frozen blocks that nothing before them trains keep nothing (freeze,
    head). The logits are kept in the compute dtype, upcast to fp32 for the loss, and the
    fp32 log-softmax is kept for backward.
    """
    notes = notes if notes is not None else []
    m, t = spec.method, spec.training
    b, s = t.per_device_batch_size, spec.data.max_seq_len
    h, i, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    w_bytes = load_dtype_bytes(spec)
    if t.precision in ("bf16", "bf16-pure", "fp16"):
        a_bytes = 2  # autocast (or the bf16 weights themselves) runs the matmuls in 16 bits
    elif m.kind == "qlora":
        a_bytes = _DTYPE_BYTES[m.quantization.compute_dtype]
    else:
        a_bytes = w_bytes
    if shape.max_position_embeddings and s > shape.max_position_embeddings:
        notes.append(f"data.max_seq_len={s} exceeds the model's {shape.max_position_embeddings} positions")

    block = (4 * h + 2 * shape.q_dim + 2 * shape.kv_dim + 4 * i) * a_bytes
    if m.kind in ("lora", "qlora") and m.lora.dropout > 0:
        # LoRA dropout keeps a dropped-out copy of each adapted input (and a 1-byte mask).
        targets = BLOCK_LINEARS if m.lora.target_modules == "all-linear" else m.lora.target_modules
        block += sum(a for name, (a, _) in block_linears(shape).items() if name in targets) * (a_bytes + 1)
    if spec.model.attn_implementation == "eager":
        block += 2 * shape.num_heads * s * a_bytes

    if m.kind == "freeze":
        active = shape.num_layers if m.freeze.train_embeddings else min(m.freeze.trainable_layers, shape.num_layers)
    elif m.kind == "head":
        active = 0
    else:
        active = shape.num_layers
    if active == 0:
        per_token = 0
    elif t.gradient_checkpointing:
        per_token = active * h * a_bytes + block
    else:
        per_token = active * block
    if m.kind != "head":
        per_token += v * (a_bytes + (4 if a_bytes < 4 else 0) + 4)
    if t.kl_to_base and m.kind != "head":
        # The base's logits (compute dtype) and both fp32 log-softmaxes of the KL term.
        per_token += v * (a_bytes + 4 + 4)

    # One (batch, 1, seq, seq) boolean mask where SDPA or eager attention is handed one:
    # padded batches, and packed rows on CPU (on a GPU they go through flash-attention's
    # varlen path or FlexAttention's block mask, which hold no dense mask).
    attention = spec.model.attn_implementation
    gpu_packed = spec.data.packing and attention is None and spec.resources.gpus_per_worker > 0
    mask = 0 if attention in ("flash_attention_2", "flex_attention") or gpu_packed else b * s * s
    return b * s * per_token + mask


def _advice(spec: JobSpec, e: MemoryEstimate) -> list[str]:
    """What to change when the job does not fit (or only just fits)."""
    if e.budget is None or e.fits is None:
        return []
    if e.fits:
        return ["within 10% of the budget: allocator fragmentation may still run it out of memory"] \
            if e.total > 0.9 * e.budget else []
    t, r = spec.training, spec.resources
    largest = max(e.rows(), key=lambda row: row[1])[0]
    advice = []
    if largest == "activations":
        if not t.gradient_checkpointing:
            advice.append("set training.gradient_checkpointing: true (keeps one block's activations)")
        advice.append("lower training.per_device_batch_size (raise grad_accum_steps to keep the global batch) "
                      "or data.max_seq_len")
    elif largest in ("optimizer states", "gradients"):
        if r.strategy == "ddp" or (r.strategy == "deepspeed" and (r.zero_stage or 2) < 3):
            advice.append("shard optimizer states and gradients: resources.strategy deepspeed (zero_stage 2-3) or fsdp")
        advice.append("use method lora or qlora (trains a fraction of a percent of the weights)")
        if r.strategy == "deepspeed" and r.offload == "none":
            advice.append("or resources.offload: optimizer (optimizer states in CPU RAM)")
    elif largest == "weights":
        if r.strategy != "fsdp" and not (r.strategy == "deepspeed" and r.zero_stage == 3):
            advice.append("shard the weights: resources.strategy fsdp, or deepspeed with zero_stage 3")
        if spec.method.kind != "qlora":
            advice.append("or method qlora (4-bit base weights)")
    else:
        advice.append("add workers to shard over, or use a larger GPU")
    return advice
