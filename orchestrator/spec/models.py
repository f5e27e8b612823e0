"""JobSpec: the one input of a job. Every field is documented where it is declared.

Structural checks (types, ranges, unknown keys) live here; rules that relate several
fields live in `orchestrator.spec.rules`, so that all of them can be reported at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MethodKind = Literal["full", "lora", "qlora", "freeze", "head"]
Strategy = Literal["ddp", "fsdp", "deepspeed"]
DataFormat = Literal["text", "instruction", "alpaca", "chat", "sharegpt", "classification", "preference"]
TaskFormat = Literal["text", "instruction", "alpaca", "chat", "classification", "multiple_choice"]
ChatRole = Literal["system", "user", "assistant"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

# Job, adapter and schedule names (a schedule names its jobs and adapter after itself); each
# is also used as a file name.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=False, allow_inf_nan=False)


# --------------------------------------------------------------------------- model


class ModelSpec(Strict):
    path: str = "builtin:tiny-base"
    """Base model: `builtin:tiny-base` (made locally on first use), a local Hugging Face model
    directory, or a hub id such as `meta-llama/Llama-3.1-8B` (needs the hub or its cache)."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) when `path` is a hub id."""

    dtype: Dtype = "auto"
    """Dtype the base weights are loaded in. `auto`: weights that train load in float32 (the
    fp32 master copy under bf16 autocast); frozen base weights (lora) load in bfloat16 on a GPU
    with bf16; everything loads in bfloat16 with precision bf16-pure."""

    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run. Off unless you trust the source."""

    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] | None = None
    """Attention kernel. None chooses: flash_attention_2 on a GPU where flash-attn is installed
    (packed rows go through its varlen path), flex_attention on other GPUs, sdpa on CPU. Packed
    rows never build a dense mask of their own: each kernel keeps attention inside each example
    from the position ids. flash_attention_2 and flex_attention train on a GPU only."""


# -------------------------------------------------------------------------- method


class LoraSpec(Strict):
    r: int = Field(8, ge=1, le=4096)
    """Rank of the low-rank update."""

    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input. Off by default: at 0 the adapter reads the layer's input as
    it is, while any dropout keeps a dropped-out copy of every adapted input (seven per block
    with all-linear), which costs LoRA memory and time; MoE experts take none."""

    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` for every linear layer
    except the output head."""

    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): learns magnitude and direction separately."""

    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(r), which keeps high ranks trainable."""

    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained alongside the adapter."""

    init_adapter: str | None = None
    """Start from the weights of this trained adapter (a PEFT adapter dir) instead of fresh
    ones: a refresh continues from the promoted version. Its rank, alpha and target modules
    must be the ones this section sets."""


class QuantizationSpec(Strict):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen base weights (bitsandbytes). NF4 suits normally
    distributed weights and is the QLoRA default."""

    double_quant: bool = True
    """Quantise the quantisation constants too (saves about 0.4 bits per parameter)."""

    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Dtype the dequantised weights are multiplied in."""


class FreezeSpec(Strict):
    trainable_layers: int = Field(2, ge=0)
    """Train only the last N transformer blocks (plus final norm and output head); the
    earlier blocks and the embeddings stay frozen."""

    train_embeddings: bool = False
    """Also train the input embeddings (tied heads are trained either way)."""


class HeadSpec(Strict):
    num_labels: int = Field(2, ge=2)
    """Number of classes of the new classification head."""

    pooling: Literal["last", "mean"] = "last"
    """How a sequence becomes one feature vector: the last non-pad token, or the mean."""


# The kinds each method block serves. A block for another kind is refused, except that one the
# job file gave for its own kind is dropped, with a note, when method.kind is changed on the
# command line (spec.adjustments).
BLOCK_KINDS: dict[str, tuple[str, ...]] = {
    "lora": ("lora", "qlora"), "quantization": ("qlora",), "freeze": ("freeze",), "head": ("head",),
}


class MethodSpec(Strict):
    kind: MethodKind = "lora"
    """full: every weight; lora: low-rank adapters; qlora: adapters over a 4-bit base;
    freeze: last N blocks only; head: frozen backbone + new classification head."""

    lora: LoraSpec | None = None
    """Adapter settings (lora and qlora only). Defaults apply when omitted."""

    quantization: QuantizationSpec | None = None
    """4-bit base settings (qlora only). Defaults apply when omitted."""

    freeze: FreezeSpec | None = None
    """Which blocks train (freeze only)."""

    head: HeadSpec | None = None
    """Classification head (head only)."""

    @model_validator(mode="after")
    def _fill_defaults_for_kind(self) -> "MethodSpec":
        # Only fill the block that belongs to the chosen kind: a block given for another
        # kind stays visible to the cross-field rules, which report it.
        if self.kind in ("lora", "qlora") and self.lora is None:
            self.lora = LoraSpec()
        if self.kind == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()
        if self.kind == "freeze" and self.freeze is None:
            self.freeze = FreezeSpec()
        if self.kind == "head" and self.head is None:
            self.head = HeadSpec()
        return self


# ---------------------------------------------------------------------------- data


class ColumnsSpec(Strict):
    text: str = "text"
    """Column with raw text (format `text` and `classification`)."""

    prompt: str = "prompt"
    """Column with the instruction/prompt (formats `instruction` and `preference`; in
    `preference` a string or a list of messages)."""

    response: str = "response"
    """Column with the expected answer (format `instruction`)."""

    system: str | None = None
    """Column with a system prompt put before the prompt, joined by a blank line ("\n\n").
    Format `instruction` (and `preference`): none unless set, and then every row needs it; in a
    conversational preference row it becomes a leading system message. Format `alpaca`:
    `system` when unset; a row without it, or with it blank, has no system prompt."""

    instruction: str = "instruction"
    """Column with the task (format `alpaca`)."""

    input: str = "input"
    """Column with the optional input to the task (format `alpaca`). The prompt is the
    instruction, then a blank line ("\n\n"), then the input; a missing, null or blank input
    leaves the prompt the instruction alone. Nothing is put between prompt and output."""

    output: str = "output"
    """Column with the expected answer, the only text trained on (format `alpaca`)."""

    messages: str = "messages"
    """Column with the list of messages (format `chat`)."""

    conversations: str = "conversations"
    """Column with the list of turns (format `sharegpt`)."""

    role: str | None = None
    """Key of each message's role; unset: `role` (chat) or `from` (sharegpt)."""

    content: str | None = None
    """Key of each message's text; unset: `content` (chat) or `value` (sharegpt)."""

    role_map: dict[str, ChatRole] = Field(default_factory=dict)
    """The file's role names -> system, user or assistant (formats `sharegpt` and `chat`).
    sharegpt knows human/user, gpt/assistant and system already, and refuses a row with any
    other role until it is mapped here; chat passes unmapped names to the chat template."""

    label: str = "label"
    """Column with the integer class (format `classification`)."""

    chosen: str = "chosen"
    """Column with the preferred completion of the prompt (format `preference`): a string, or
    with a list-of-messages prompt a string (one assistant message) or a list of messages."""

    rejected: str = "rejected"
    """Column with the dispreferred completion, shaped like `chosen` (format `preference`)."""


class DataSourceSpec(Strict):
    path: str
    """A local .jsonl/.json/.parquet/.csv file (relative paths are taken from the current
    directory), a glob of local files of one format (`data/nightly/*.jsonl`: every match, in
    name order), `builtin:demo/<file>` for the generated demo data, or a hub dataset id."""

    files: list[str] | None = None
    """The exact files a glob `path` stood for, fixed when a scheduled refresh fired: files
    that arrive later are not read. Set by ftctl; leave it out in job files."""

    format: DataFormat = "instruction"
    """text: continued pre-training on raw text; instruction: prompt + response, loss on the
    response only; alpaca: instruction (+ input) + output, loss on the output only; chat:
    messages through the tokenizer's chat template, loss on assistant turns; sharegpt:
    conversations of {from, value} turns, encoded like chat; classification: text + label
    (for method `head`); preference: prompt + chosen + rejected, each side encoded like
    instruction (string prompt) or chat (list-of-messages prompt), loss on the completions."""

    split: str = "train"
    """Split to read when `path` is a hub id."""

    columns: ColumnsSpec = Field(default_factory=ColumnsSpec)
    """Column names, when the file uses other names than the defaults."""

    max_examples: int | None = Field(None, ge=1)
    """Use only the first N rows (after skipping bad ones)."""


class ReplaySpec(Strict):
    sources: list[DataSourceSpec] = Field(min_length=1)
    """Source-task data to mix into training (what the base model was trained on; not the
    held-out forgetting sets)."""

    ratio: float = Field(gt=0, lt=1)
    """Share of every epoch's training examples drawn from `sources` (e.g. 0.2: one in five).
    Replay rows are sampled with the seed, repeating when the sources are small."""


class DataSpec(Strict):
    train: DataSourceSpec
    """Training data."""

    eval: DataSourceSpec | None = None
    """Optional target-task evaluation data (same formats as train)."""

    max_seq_len: int = Field(512, ge=8, le=1_048_576)
    """Examples longer than this are truncated (the count is reported)."""

    packing: bool = False
    """Concatenate examples into full max_seq_len rows (no padding waste). Loss masks are kept."""

    on_bad_row: Literal["error", "skip"] = "error"
    """error: stop at the first malformed row, naming file and row; skip: drop it and report
    how many were dropped."""

    shuffle: bool = True
    """Shuffle training rows each epoch (seeded by training.seed)."""

    replay: ReplaySpec | None = None
    """Mitigate forgetting by mixing source-task data into the training batches."""


# ------------------------------------------------------------------------ training


class DPOSpec(Strict):
    beta: float = Field(0.1, gt=0, le=100)
    """How far the policy may move from the reference: the implicit reward of a completion is
    beta x (its log-probability under the policy - under the reference)."""

    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: DPO's -log sigmoid(beta x margin) on summed log-probabilities; ipo: IPO's
    (margin - 1/(2 beta))^2 on per-token mean log-probabilities, which does not push the
    margin to infinity on pairs it already separates."""


class TrainingSpec(Strict):
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run. Set this or `epochs` (not both); neither means one epoch."""

    epochs: float | None = Field(None, gt=0)
    """Passes over the training data (may be fractional)."""

    per_device_batch_size: int = Field(8, ge=1, le=65536)
    """Examples per worker per micro-step."""

    grad_accum_steps: int = Field(1, ge=1, le=65536)
    """Micro-steps accumulated per optimizer step. Global batch = workers x batch x accum."""

    lr: float = Field(2e-4, gt=0, le=10)
    """Peak learning rate."""

    weight_decay: float = Field(0.0, ge=0, le=10)
    """AdamW weight decay."""

    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""

    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps from 0 to `lr`. A warmup as long as max_steps or longer (a run
    shortened on the command line) is cut to a tenth of max_steps, rounded down, with a note."""

    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; null disables clipping."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""

    precision: Literal["fp32", "bf16", "bf16-pure", "fp16"] = "fp32"
    """fp32; bf16: bf16 compute with fp32 master weights and optimizer states on every strategy
    (ddp: fp32 parameters under bf16 autocast; fsdp: fp32 shards, bf16 gathered for compute;
    ZeRO: its own fp32 master copy); bf16-pure: bf16 weights, gradients and AdamW updates, no
    fp32 copy, AdamW moments in bf16: 8 bytes per trained parameter instead of 16, but updates
    smaller than bf16's resolution (~0.4% of a weight) are lost, so losses drift from bf16's
    on long runs (ddp and fsdp only); fp16: needs a GPU."""

    kernels: Literal["auto", "liger", "none"] = "auto"
    """Fused kernels. liger: Liger Kernel's RMSNorm, RoPE, SwiGLU/GeGLU and fused linear
    cross-entropy (never materialises the full logits); needs CUDA, the liger-kernel package
    and an architecture it supports. auto: liger where all three hold, otherwise none; the run
    says which it used."""

    compile: bool = False
    """torch.compile each decoder block (the first steps are slower while it compiles)."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seeds model init, data order and dropout: the same seed gives the same run."""

    l2sp: float | None = Field(None, gt=0)
    """L2-SP: add l2sp/2 x ||w - w_base||^2 over the trainable weights to the loss, pulling
    full and freeze fine-tunes toward the base model (mitigates forgetting; ddp only)."""

    objective: Literal["sft", "dpo"] = "sft"
    """sft: next-token loss on the response tokens; dpo: Direct Preference Optimization on
    preference pairs (data format preference): raise the policy's log-probability of the
    chosen completion over the rejected one, relative to the reference model (the base with
    adapters disabled for lora/qlora; for full/freeze, the base's log-probabilities of every
    pair, computed once before training)."""

    dpo: DPOSpec | None = None
    """DPO settings (objective dpo; filled with defaults when absent)."""

    kl_to_base: float | None = Field(None, gt=0)
    """Add kl_to_base x KL(tuned || base) on the training batch's response tokens to the loss:
    the model learns the target while its next-token distribution stays close to the base
    model's (mitigates forgetting without source data). The base forward is the same model
    with its adapters disabled (lora, qlora), or a frozen copy of the base on each worker
    (full, freeze: the memory estimate counts it). One extra forward pass per micro-batch;
    ddp only; Liger's fused loss is not used (the KL needs the logits)."""

    log_every_steps: int = Field(1, ge=1)
    """Write a metrics.jsonl line every N optimizer steps."""

    eval_every_steps: int | None = Field(None, ge=1)
    """Evaluate on data.eval every N steps (and at the end). Needs data.eval."""

    @model_validator(mode="after")
    def _fill_dpo_defaults(self) -> "TrainingSpec":
        if self.objective == "dpo" and self.dpo is None:
            self.dpo = DPOSpec()
        return self


# ----------------------------------------------------------------------- resources


class ResourcesSpec(Strict):
    workers: int = Field(1, ge=1, le=4096)
    """Ray Train workers (ranks). Each holds a model replica or shard."""

    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each worker."""

    gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each worker; 0 trains on CPU over gloo."""

    strategy: Strategy = "ddp"
    """ddp: full replica per worker; fsdp: shard params/grads/optimizer (torch FSDP);
    deepspeed: ZeRO stages 1-3."""

    zero_stage: Literal[1, 2, 3] | None = None
    """DeepSpeed ZeRO stage (deepspeed only; default 2). 1 shards optimizer states, 2 adds
    gradients, 3 adds parameters."""

    offload: Literal["none", "optimizer", "all"] = "none"
    """Offload to CPU memory (deepspeed or fsdp): optimizer states, or optimizer + params."""

    placement: Literal["pack", "spread"] = "pack"
    """Where Ray puts the workers: pack them on as few nodes as possible (fast collectives),
    or spread them over nodes (one node's loss takes fewer ranks; uses every node's CPUs)."""


# ---------------------------------------------------------------------- checkpoint


class CheckpointSpec(Strict):
    every_steps: int | None = Field(None, ge=1)
    """Save every N optimizer steps (a final checkpoint is always written)."""

    keep_last: int = Field(3, ge=1)
    """Keep the N newest complete checkpoints."""

    resume: str = "auto"
    """auto: continue from the latest good checkpoint in the run dir; never: start fresh;
    or a path to a checkpoint directory."""

    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts Ray may do after a failure (-1: unlimited); each restart
    resumes from the latest good checkpoint and is recorded in summary.json."""

    sigterm_grace_s: float = Field(60.0, gt=0, le=3600)
    """On SIGTERM (preemption): seconds allowed to finish the current step and commit a
    checkpoint before the workers are stopped; the job then exits with code 75 (resume me)."""

    best_metric: Literal["loss", "eval_loss", "eval_accuracy"] | None = None
    """Also keep the checkpoint with the best value of this metric (measured at the
    checkpoint's step), beside the keep_last newest."""

    best_mode: Literal["min", "max"] | None = None
    """Whether lower or higher best_metric is better (default: max for accuracy, else min)."""

    storage: str | None = None
    """Also mirror every committed checkpoint to this URI (s3://bucket/prefix, gs://...,
    file:///path), uploaded in the background; a resume fetches from it when the run dir
    has no usable checkpoint."""


# ---------------------------------------------------------------------- forgetting


class LmEvalTaskSpec(Strict):
    task: str = Field(min_length=1)
    """An lm-evaluation-harness task or group name (arc_easy, mmlu_stem, gsm8k, ...), from
    lm-eval's own registry or from `include_path`."""

    num_fewshot: int | None = Field(None, ge=0, le=64)
    """Few-shot examples per prompt; None keeps the task's own default."""

    limit: int | None = Field(None, ge=1)
    """Evaluate at most N documents per task (bounds cost; lm-eval takes the first N)."""

    include_path: str | None = None
    """A folder of local task YAMLs (offline clusters); `builtin:demo/lm_eval` holds the
    built-in base model's source tasks in multiple-choice form."""

    metric: str | None = None
    """The lm-eval metric the gate reads (acc, acc_norm, exact_match, ...); None: the task's
    primary metric, the first of its metric_list."""


class ForgettingTaskSpec(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Task name used in reports."""

    path: str | None = None
    """Held-out source-task data (same path rules as data.train.path); not with lm_eval."""

    lm_eval: LmEvalTaskSpec | None = None
    """Measure an lm-evaluation-harness task instead of a file of rows: its metric is exactly
    what lm-eval computes for a Hugging Face model."""

    format: TaskFormat = "instruction"
    """Row format of the file: a training format (sharegpt excepted), or multiple_choice for
    rows {prompt, choices: [...], answer: index}. Columns take their default names."""

    metric: Literal["loss", "perplexity", "exact_match", "accuracy", "choice", "choice_norm"] = "exact_match"
    """exact_match: greedy answer equals the response; loss/perplexity: on the response
    (or whole text); accuracy: classification rows; choice: the choice with the highest
    log-likelihood is the answer (choice_norm: log-likelihood per byte of the choice)."""

    num_fewshot: int = Field(0, ge=0, le=64)
    """exact_match and choice: put this many solved examples before each prompt, drawn with a
    fixed seed from `fewshot_path` (default: the task's own file, never the row itself)."""

    fewshot_path: str | None = None
    """Where few-shot examples come from (same format as the task's rows)."""

    max_examples: int | None = Field(200, ge=1)
    """Evaluate on at most N rows (keeps evaluation cheap)."""

    max_drop: float | None = Field(None, ge=0)
    """Gate for this task: the largest allowed worsening versus the base model (absolute,
    in the metric's units). Overrides forgetting.max_drop."""


class RepairSpec(Strict):
    method: Literal["interpolate"] = "interpolate"
    """interpolate: weights base + alpha x (tuned - base), alpha in [0, 1] (lora/qlora: the
    adapter's update scaled by alpha). The largest alpha whose every source-task drop is within
    its max_drop becomes the job's artifact; the unrepaired weights are kept beside it."""

    grid: int = Field(11, ge=2, le=101)
    """Alphas evaluated evenly over [0, 1] (11: 0, 0.1, ..., 1)."""

    refine: int = Field(3, ge=0, le=10)
    """Bisection steps between the largest passing alpha and the next one that failed."""

    max_drop: float | None = Field(None, ge=0)
    """The drop allowed on every source task; default: each task's own gate (its max_drop,
    else forgetting.max_drop)."""


class ForgettingSpec(Strict):
    tasks: list[ForgettingTaskSpec] = Field(default_factory=list)
    """Held-out source tasks measured on the base model and during training."""

    every_steps: int | None = Field(None, ge=1)
    """Evaluate every N steps (and always at the end)."""

    max_drop: float | None = Field(None, ge=0)
    """Gate for every task without its own max_drop."""

    action: Literal["warn", "stop", "rollback"] = "warn"
    """When a gate trips (a task's max_drop or max_kl): warn and go on; stop the job (non-zero
    exit); or finish and keep the latest checkpoint that passed every gate."""

    kl_every_steps: int | None = Field(None, ge=1)
    """Live forgetting meter: every N steps (and at the end), the mean KL(tuned || base) of the
    next-token distributions on a fixed probe of training rows (response tokens only), logged
    as forgetting/kl. Needs no source data. lora/qlora: the base is the same model with its
    adapters disabled; full/freeze: the base's log-probabilities of the probe are computed
    once before training and kept in host memory (probe tokens x vocabulary x 4 bytes)."""

    kl_probe_rows: int = Field(16, ge=1, le=4096)
    """Training rows in the meter's probe (a fixed, seeded sample)."""

    max_kl: float | None = Field(None, gt=0)
    """Gate on the meter: a KL above this trips like a task's max_drop (same action).
    Needs kl_every_steps."""

    repair: RepairSpec | None = None
    """After training, interpolate between the base and the trained weights to bring every
    source task within its max_drop (see RepairSpec)."""


# --------------------------------------------------------------------------- merge


class MergeSpec(Strict):
    enabled: bool = False
    """Merge the trained adapter into the base model after training (lora/qlora), verify it and
    write it to the run dir's merged/ (a Hugging Face model dir with merge_manifest.json)."""

    dtype: Dtype = "auto"
    """Dtype of the merged weights; auto keeps the base model's stored dtype. A qlora adapter is
    merged into the original-precision base, never into its 4-bit form."""

    tolerance: float | None = Field(None, gt=0)
    """Largest allowed |logit difference| between the merged model and base + adapter on a
    held-out batch (both run in float64); the merge fails above it. Default by the merged
    dtype: float32 1e-4, float16 3e-2, bfloat16 2.5e-1."""

    shard_size: str = Field("2GB", pattern=r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][Ii]?)?[Bb]?\s*$")
    """Largest safetensors shard of the merged model (e.g. 2GB, 500MB); merging holds about one
    shard in memory."""

    required: bool = False
    """Fail the job when the merge is refused or fails verification. By default such a merge
    is a warning: the job succeeds with its adapter, and summary.json's merge.error says why."""


# ----------------------------------------------------------------------- promotion


class PromotionSpec(Strict):
    adapter: str | None = Field(None, pattern=NAME_PATTERN)
    """Name the trained adapter is registered under in the adapter registry (lora and qlora
    jobs register a version when they succeed); default: the job name."""

    auto: bool = False
    """Promote the new version when every gate passes. Scheduled refreshes always do; other
    jobs register and wait for `ftctl adapters promote`."""

    parent: int | None = Field(None, ge=1)
    """The version this job refines (a refresh warm-starts from it, see
    method.lora.init_adapter). Set by ftctl for scheduled refreshes."""

    min_target_gain: float = Field(0.0, ge=0)
    """Gate: the target task (data.eval loss) must improve on the previous promoted version
    (on the base model for a first version) by more than this."""

    max_drop_vs_previous: float | None = Field(None, ge=0)
    """Gate: the largest drop of any source task versus the previous promoted version, in
    the metric's units. Default: each task's own gate versus the base model (its max_drop).
    Gates versus the original base model (forgetting.max_drop) always apply too, so drift
    cannot accumulate over a chain of refreshes."""


# ------------------------------------------------------------------------ tracking


class TrackingSpec(Strict):
    tensorboard: bool = False
    """Also write TensorBoard event files to <run dir>/tensorboard (metrics.jsonl is always written)."""

    mlflow: bool = False
    """Also log params and metrics to MLflow."""

    mlflow_tracking_uri: str | None = None
    """MLflow server or file store; default: MLFLOW_TRACKING_URI or ./mlruns."""

    experiment: str | None = None
    """Experiment name in trackers; default: the job name."""


# ----------------------------------------------------------------------------- job


class JobSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    """Job name: lowercase letters, digits, '.', '_' and '-'; used in run dirs and Ray."""

    description: str = ""
    """Free text shown in listings."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    """Base model."""

    method: MethodSpec = Field(default_factory=MethodSpec)
    """Fine-tuning method."""

    data: DataSpec
    """Training (and optional evaluation) data."""

    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Optimisation settings."""

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Workers and distribution strategy."""

    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing and recovery."""

    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)
    """Catastrophic-forgetting measurement and gates."""

    merge: MergeSpec = Field(default_factory=MergeSpec)
    """Adapter merging."""

    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    """Adapter registry name and the gates that promote a new version."""

    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment trackers."""
