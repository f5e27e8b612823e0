"""Cross-field rules: checks that relate several fields of a structurally valid JobSpec.

Each rule is a pure function `JobSpec -> list[Problem]`; `cross_field_problems` runs all
of them so that a user sees every problem in one go.
"""

from __future__ import annotations

from typing import Callable

from orchestrator.spec.models import BLOCK_KINDS, JobSpec
from orchestrator.spec.problems import Problem

Rule = Callable[[JobSpec], list[Problem]]


def method_blocks_match_kind(spec: JobSpec) -> list[Problem]:
    """A method block for another kind than method.kind. (One the job file gave for its own kind
    is dropped instead when the kind is changed on the command line: see adjustments.py.)"""
    m = spec.method
    problems = []
    if m.lora is not None and m.kind not in BLOCK_KINDS["lora"]:
        problems.append(Problem("method.lora", f"adapter settings do not apply to method.kind={m.kind}",
                                f"remove method.lora{_ON_THE_COMMAND_LINE.format(block='lora')}, "
                                "or set method.kind to lora or qlora"))
    if m.quantization is not None and m.kind not in BLOCK_KINDS["quantization"]:
        why = ("full fine-tuning cannot update 4-bit weights" if m.kind == "full"
               else f"method.kind={m.kind} trains unquantised weights")
        problems.append(Problem("method.quantization", f"a 4-bit base is only used by qlora; {why}",
                                "set method.kind=qlora, or remove method.quantization"
                                + _ON_THE_COMMAND_LINE.format(block="quantization")))
    if m.freeze is not None and m.kind not in BLOCK_KINDS["freeze"]:
        problems.append(Problem("method.freeze", f"layer freezing does not apply to method.kind={m.kind}",
                                f"remove method.freeze{_ON_THE_COMMAND_LINE.format(block='freeze')}, "
                                "or set method.kind=freeze"))
    if m.head is not None and m.kind not in BLOCK_KINDS["head"]:
        problems.append(Problem("method.head", f"a classification head does not apply to method.kind={m.kind}",
                                f"remove method.head{_ON_THE_COMMAND_LINE.format(block='head')}, "
                                "or set method.kind=head"))
    return problems


_ON_THE_COMMAND_LINE = " (on the command line: method.{block}=null)"


def head_needs_labels(spec: JobSpec) -> list[Problem]:
    problems = []
    sources = [("data.train", spec.data.train)]
    if spec.data.eval is not None:
        sources.append(("data.eval", spec.data.eval))
    for where, source in sources:
        if spec.method.kind == "head" and source.format != "classification":
            problems.append(Problem(f"{where}.format",
                                    f"method.kind=head trains a classifier and needs labelled rows, not '{source.format}'",
                                    "use format: classification (text + label columns)"))
        if spec.method.kind != "head" and source.format == "classification":
            problems.append(Problem(f"{where}.format",
                                    f"classification rows only train a classification head, not method.kind={spec.method.kind}",
                                    "set method.kind=head, or use text/instruction/chat data"))
    if spec.data.packing and spec.data.train.format == "classification":
        problems.append(Problem("data.packing", "packing mixes several examples in one row, which breaks per-example labels",
                                "set data.packing: false for classification"))
    return problems


def preference_pairs_kept_whole(spec: JobSpec) -> list[Problem]:
    """Preference pairs are trained and evaluated as pairs: not packed, not mixed with
    single-answer rows (an eval set of the other kind, replay rows)."""
    d = spec.data
    train_pairs = d.train.format == "preference"
    problems = []
    if d.packing and train_pairs:
        problems.append(Problem("data.packing", "packing mixes several examples in one row, and a preference pair "
                                "is compared as two whole examples", "set data.packing: false for preference data"))
    if d.eval is not None and (d.eval.format == "preference") != train_pairs:
        if train_pairs:
            why = f"preference training is measured on preference pairs, and data.eval is '{d.eval.format}' rows"
        else:
            why = f"a preference eval set measures preference training, and data.train is '{d.train.format}' rows"
        problems.append(Problem("data.eval.format", why, "use format: preference for both data.train and "
                                                         "data.eval, or for neither"))
    if d.replay is not None and train_pairs:
        problems.append(Problem("data.replay", "replay rows are single-answer (SFT) rows, which cannot be mixed "
                                "into preference pairs", "remove data.replay for preference data"))
    return problems


def strategy_options(spec: JobSpec) -> list[Problem]:
    r = spec.resources
    problems = []
    if r.zero_stage is not None and r.strategy != "deepspeed":
        problems.append(Problem("resources.zero_stage", f"ZeRO stages are a DeepSpeed setting; strategy is {r.strategy}",
                                "set resources.strategy=deepspeed or remove resources.zero_stage"))
    if r.offload != "none" and r.strategy == "ddp":
        problems.append(Problem("resources.offload", "CPU offload needs a sharding strategy; ddp keeps a full replica per worker",
                                "set resources.strategy to deepspeed or fsdp, or offload: none"))
    if r.offload == "optimizer" and r.strategy == "fsdp":
        problems.append(Problem("resources.offload", "FSDP offloads parameters and optimizer together, not the optimizer alone",
                                "use offload: all with fsdp, or strategy deepspeed for optimizer-only offload"))
    if r.offload == "all" and r.strategy == "deepspeed" and (r.zero_stage or 2) != 3:
        problems.append(Problem("resources.offload", "offloading parameters needs ZeRO stage 3 (stages 1-2 do not shard parameters)",
                                "set resources.zero_stage=3 or offload: optimizer"))
    return problems


def qlora_placement(spec: JobSpec) -> list[Problem]:
    r = spec.resources
    if spec.method.kind != "qlora":
        return []
    if r.strategy == "fsdp":
        return [Problem("resources.strategy", "qlora's 4-bit weights cannot be sharded by FSDP here",
                        "use strategy ddp (each worker holds the small 4-bit base) or deepspeed with zero_stage 1-2")]
    if r.strategy == "deepspeed" and r.zero_stage == 3:
        return [Problem("resources.zero_stage", "qlora's 4-bit weights cannot be partitioned by ZeRO-3 here",
                        "use zero_stage 1 or 2, or strategy ddp")]
    return []


def cuda_only_settings(spec: JobSpec) -> list[Problem]:
    """Settings whose kernels exist on CUDA only, on a job that trains on CPU."""
    if spec.resources.gpus_per_worker > 0:
        return []
    t, attention = spec.training, spec.model.attn_implementation
    gpu = "or set resources.gpus_per_worker"
    problems = []
    if t.precision == "fp16":
        problems.append(Problem("training.precision", "fp16 mixed precision needs a GPU (its loss scaler is CUDA-only)",
                                f"use precision bf16 or fp32 on CPU, {gpu}"))
    if t.kernels == "liger" and spec.method.kind != "head":
        problems.append(Problem("training.kernels", "Liger kernels run on CUDA only, and this job trains on CPU",
                                f"use kernels auto (none on CPU) or none, {gpu}"))
    if attention in ("flash_attention_2", "flex_attention"):
        problems.append(Problem("model.attn_implementation", f"{attention} trains on CUDA only (flash-attn is a CUDA "
                                "library; FlexAttention has no backward pass on CPU)",
                                f"leave model.attn_implementation unset (sdpa on CPU), {gpu}"))
    return problems


def precision_fits_strategy(spec: JobSpec) -> list[Problem]:
    if spec.training.precision == "bf16-pure" and spec.resources.strategy == "deepspeed":
        return [Problem("training.precision", "DeepSpeed ZeRO always keeps fp32 master weights, so bf16-pure "
                        "cannot apply there", "use precision bf16 with deepspeed, or strategy ddp or fsdp")]
    if spec.training.precision == "bf16-pure" and spec.method.kind == "qlora":
        return [Problem("training.precision", "qlora's base is 4-bit and its adapters train in fp32; bf16-pure "
                        "has nothing to apply to", "use precision bf16")]
    return []


def master_weights_kept(spec: JobSpec) -> list[Problem]:
    """precision bf16 promises fp32 master weights; a 16-bit model.dtype for weights that
    train under ddp or fsdp would quietly break that promise."""
    m, t = spec.model, spec.training
    if (t.precision == "bf16" and m.dtype in ("bfloat16", "float16") and spec.method.kind in ("full", "freeze")
            and spec.resources.strategy != "deepspeed"):
        return [Problem("model.dtype", f"model.dtype {m.dtype} with precision bf16 would train 16-bit weights with no "
                                       "fp32 master copy", "set model.dtype auto (fp32 master weights, bf16 compute), "
                                                           "or precision bf16-pure to train bf16 weights on purpose")]
    return []


def kernels_apply(spec: JobSpec) -> list[Problem]:
    """Liger and compile act on a causal LM's decoder blocks; method head trains a classifier
    over a frozen backbone, where neither applies."""
    t = spec.training
    asked = [f for f, on in (("kernels", t.kernels == "liger"), ("compile", t.compile)) if on]
    if spec.method.kind != "head" or not asked:
        return []
    return [Problem(f"training.{asked[0]}", "method head trains only a classifier over a frozen backbone; fused "
                    "kernels and compile apply to causal-LM training", "remove training.kernels=liger and "
                                                                       "training.compile")]


def steps_or_epochs(spec: JobSpec) -> list[Problem]:
    t = spec.training
    problems = []
    if t.max_steps is not None and t.epochs is not None:
        problems.append(Problem("training.epochs", "set training.max_steps or training.epochs, not both",
                                "remove one of them"))
    if t.eval_every_steps is not None and spec.data.eval is None:
        problems.append(Problem("training.eval_every_steps", "periodic evaluation needs evaluation data",
                                "set data.eval or remove training.eval_every_steps"))
    return problems


def forgetting_tasks_consistent(spec: JobSpec) -> list[Problem]:
    f = spec.forgetting
    problems = []
    seen: set[str] = set()
    for i, task in enumerate(f.tasks):
        where = f"forgetting.tasks.{i}"
        if task.name in seen:
            problems.append(Problem(f"{where}.name", f"task name '{task.name}' is used twice", "give each task its own name"))
        seen.add(task.name)
        if task.lm_eval is not None:
            fields = type(task).model_fields
            native = sorted(k for k in ("path", "format", "metric", "num_fewshot", "fewshot_path", "max_examples")
                            if getattr(task, k) != fields[k].default)
            if native:
                problems.append(Problem(f"{where}.{native[0]}", f"an lm_eval task takes its data, format and metric "
                                                               f"from lm-eval, so {', '.join(native)} do not apply",
                                        "remove them; set lm_eval.metric, lm_eval.num_fewshot or lm_eval.limit "
                                        "instead"))
            continue
        if task.path is None:
            problems.append(Problem(f"{where}.path", "a forgetting task needs its rows (path) or an lm-eval task (lm_eval)",
                                    "set path to a file of held-out rows, or lm_eval.task"))
        choice = task.metric in ("choice", "choice_norm")
        if choice != (task.format == "multiple_choice"):
            problems.append(Problem(f"{where}.metric", "multiple_choice rows are measured by choice or choice_norm, and "
                                                       "only they can be", "use format multiple_choice with metric choice "
                                                                           "(or choice_norm)"))
            continue
        if (task.num_fewshot or task.fewshot_path) and task.metric not in ("exact_match", "choice", "choice_norm"):
            problems.append(Problem(f"{where}.num_fewshot", f"few-shot prompting applies to exact_match and choice, "
                                                            f"not {task.metric}", "remove num_fewshot and fewshot_path"))
        if task.metric == "accuracy" and task.format != "classification":
            problems.append(Problem(f"{where}.metric", "accuracy is measured on classification rows",
                                    "use exact_match or loss for generative tasks, or format: classification"))
        if task.metric == "exact_match" and task.format not in ("instruction", "alpaca", "chat"):
            problems.append(Problem(f"{where}.metric", f"exact_match needs an expected answer, which format '{task.format}' has not",
                                    "use metric loss or perplexity, or format instruction/alpaca/chat"))
        if task.format == "classification" and task.metric != "accuracy":
            problems.append(Problem(f"{where}.metric", "classification tasks are measured by accuracy", "set metric: accuracy"))
        if task.format == "classification" and spec.method.kind != "head":
            problems.append(Problem(f"{where}.format", "a classification task needs a classification head to be evaluated",
                                    "use generative source tasks for generative methods"))
    if spec.method.kind == "head" and f.tasks:
        problems.append(Problem("forgetting.tasks", "method head keeps the whole backbone frozen, so it cannot forget "
                                                    "source tasks, and its new head has no base value to compare with",
                                "remove forgetting.tasks for head jobs"))
    gated = f.max_drop is not None or any(t.max_drop is not None for t in f.tasks)
    if (gated or f.every_steps is not None) and not f.tasks:
        problems.append(Problem("forgetting.tasks", "forgetting gates and cadence need at least one source task",
                                "list held-out source tasks under forgetting.tasks"))
    if f.action != "warn" and not gated and f.max_kl is None and (f.tasks or f.kl_every_steps):
        problems.append(Problem("forgetting.action", f"action '{f.action}' never fires without a gate",
                                "set forgetting.max_drop, a task's max_drop or forgetting.max_kl"))
    if f.action == "rollback" and spec.checkpoint.every_steps is None:
        problems.append(Problem("forgetting.action", "rollback needs intermediate checkpoints to roll back to",
                                "set checkpoint.every_steps"))
    if f.action == "rollback" and f.every_steps is None and f.tasks:
        problems.append(Problem("forgetting.every_steps", "rollback needs evaluations during training, not only at the end",
                                "set forgetting.every_steps to a multiple of checkpoint.every_steps"))
    every = spec.checkpoint.every_steps
    if f.action == "rollback" and f.every_steps and every and f.every_steps % every:
        problems.append(Problem("forgetting.every_steps", "rollback keeps a checkpoint that was evaluated and passed; "
                                f"evaluations every {f.every_steps} steps do not all land on checkpoints every {every}",
                                "make forgetting.every_steps a multiple of checkpoint.every_steps"))
    if f.action == "rollback" and f.max_kl is not None and f.kl_every_steps and every and f.kl_every_steps % every:
        problems.append(Problem("forgetting.kl_every_steps", "rollback keeps a checkpoint that was measured and "
                                f"passed; KL measured every {f.kl_every_steps} steps does not land on every checkpoint "
                                f"(every {every})", "make forgetting.kl_every_steps a multiple of checkpoint.every_steps"))
    return problems


def forgetting_controls_fit(spec: JobSpec) -> list[Problem]:
    """The no-source-data controls: the KL meter and its gate, KL to the base, repair."""
    f, t, kind = spec.forgetting, spec.training, spec.method.kind
    problems = []
    if f.max_kl is not None and f.kl_every_steps is None:
        problems.append(Problem("forgetting.max_kl", "a KL gate needs the KL meter, which is off",
                                "set forgetting.kl_every_steps (e.g. 50)"))
    for where, on in (("forgetting.kl_every_steps", f.kl_every_steps is not None),
                      ("training.kl_to_base", t.kl_to_base is not None), ("forgetting.repair", f.repair is not None)):
        if on and kind == "head":
            problems.append(Problem(where, "method head trains a classifier over a frozen backbone; it changes no "
                                           "next-token distribution and no base weight", f"remove {where}"))
    if t.kl_to_base is not None and spec.resources.strategy != "ddp":
        problems.append(Problem("training.kl_to_base", f"the base forward runs on a whole model per worker; strategy "
                                                       f"{spec.resources.strategy} shards it", "use strategy ddp"))
    repair = f.repair
    if repair is None or kind == "head":
        return problems
    if not f.tasks:
        problems.append(Problem("forgetting.repair", "repair chooses how much of the fine-tune to keep by the source "
                                                     "tasks' drops, and no source task is listed",
                                "list held-out source tasks under forgetting.tasks"))
    elif repair.max_drop is None and f.max_drop is None and all(x.max_drop is None for x in f.tasks):
        problems.append(Problem("forgetting.repair", "repair keeps every source-task drop within its max_drop, and "
                                                     "no task has one", "set forgetting.repair.max_drop, "
                                                                        "forgetting.max_drop or a task's max_drop"))
    if spec.data.eval is None:
        problems.append(Problem("forgetting.repair", "repair reports how much of the target gain each alpha keeps, "
                                                     "measured on data.eval, and this job has none", "add data.eval"))
    lora = spec.method.lora
    if lora is not None and kind in ("lora", "qlora") and (lora.use_dora or lora.bias != "none"):
        what = "DoRA's magnitude" if lora.use_dora else f"trained biases (bias {lora.bias})"
        problems.append(Problem("forgetting.repair", f"{what} make the adapter's update more than one scalable "
                                                     "delta, so scaling it does not interpolate toward the base",
                                "use plain LoRA (use_dora false, bias none) with repair"))
    return problems


def objective_fits(spec: JobSpec) -> list[Problem]:
    """DPO trains on preference pairs, and preference pairs train only with DPO."""
    t, fmt = spec.training, spec.data.train.format
    problems = []
    if t.dpo is not None and t.objective != "dpo":
        problems.append(Problem("training.dpo", f"DPO settings do not apply to objective {t.objective}",
                                "remove training.dpo (on the command line: training.dpo=null), or set "
                                "training.objective: dpo"))
    if t.objective == "dpo" and fmt != "preference":
        problems.append(Problem("training.objective", f"DPO learns from preference pairs, and data.train is "
                                                      f"'{fmt}' data", "use format: preference rows {prompt, chosen, "
                                                                       "rejected}, or objective sft"))
    if t.objective != "dpo" and fmt == "preference":
        problems.append(Problem("data.train.format", "preference pairs train with the DPO objective",
                                "set training.objective: dpo"))
    if t.objective == "dpo" and spec.method.kind == "head":
        problems.append(Problem("training.objective", "method head trains a classifier; DPO compares completions "
                                                      "of a causal LM", "use method lora, qlora, full or freeze"))
    if t.objective == "dpo" and t.kl_to_base is not None:
        problems.append(Problem("training.kl_to_base", "DPO already holds the policy to its reference (beta)",
                                "remove training.kl_to_base, or raise training.dpo.beta"))
    return problems


def merge_needs_adapter(spec: JobSpec) -> list[Problem]:
    if spec.merge.required and not spec.merge.enabled:
        return [Problem("merge.required", "merge.required makes a failed merge fail the job, and this job merges "
                        "nothing", "set merge.enabled: true, or remove merge.required")]
    if spec.merge.enabled and spec.method.kind not in ("lora", "qlora"):
        return [Problem("merge.enabled", f"method.kind={spec.method.kind} trains the weights themselves; there is no adapter to merge",
                        "set merge.enabled: false, or use lora/qlora")]
    if spec.merge.enabled and spec.method.kind == "qlora" and spec.data.eval is None:
        return [Problem("merge.enabled", "a qlora merge reports its quantisation gap (merged model vs 4-bit base + "
                        "adapter) on held-out data, and this job has none", "add data.eval, or set merge.enabled: false")]
    return []


def checkpoint_resume_value(spec: JobSpec) -> list[Problem]:
    if spec.checkpoint.resume.strip() == "":
        return [Problem("checkpoint.resume", "empty value", "use auto, never, or a checkpoint path")]
    return []


def mitigation_fits_method(spec: JobSpec) -> list[Problem]:
    problems = []
    t, r = spec.training, spec.resources
    if t.l2sp is not None and spec.method.kind not in ("full", "freeze"):
        problems.append(Problem("training.l2sp", f"L2-SP pulls trained weights toward the base weights; method "
                                                 f"{spec.method.kind} trains new weights that have no base value",
                                "use it with method full or freeze; for adapters lower the rank or the lr"))
    if t.l2sp is not None and r.strategy != "ddp":
        problems.append(Problem("training.l2sp", f"L2-SP is applied to replicated gradients; strategy {r.strategy} "
                                                 "shards them", "use strategy ddp"))
    replay = spec.data.replay
    if replay is not None and spec.data.train.format != "preference":  # preference_pairs_kept_whole refuses it
        for i, source in enumerate(replay.sources):
            if source.format != spec.data.train.format:
                problems.append(Problem(f"data.replay.sources[{i}].format", f"replay rows are mixed into training "
                                        f"batches, so they must have the training format ({spec.data.train.format})",
                                        f"convert the source to {spec.data.train.format}"))
        held_out = {t.path for t in spec.forgetting.tasks}
        for i, source in enumerate(replay.sources):
            if source.path in held_out:
                problems.append(Problem(f"data.replay.sources[{i}].path", "this file is also a held-out forgetting "
                                        "task: training on it would hide the forgetting it measures",
                                        "replay the source task's training data, not its held-out set"))
    return problems


def checkpoint_best_measured(spec: JobSpec) -> list[Problem]:
    """best_metric must be measured at every checkpoint it is compared on."""
    c, t = spec.checkpoint, spec.training
    problems = []
    if c.best_mode is not None and c.best_metric is None:
        problems.append(Problem("checkpoint.best_mode", "best_mode without best_metric does nothing",
                                "set checkpoint.best_metric, or remove best_mode"))
    if c.best_metric is None:
        return problems
    if c.best_metric.startswith("eval_"):
        if spec.data.eval is None:
            problems.append(Problem("checkpoint.best_metric", f"{c.best_metric} needs data.eval", "add data.eval or use loss"))
        elif c.every_steps and (not t.eval_every_steps or c.every_steps % t.eval_every_steps):
            problems.append(Problem("checkpoint.best_metric", f"{c.best_metric} is not measured at every checkpoint",
                                    "make checkpoint.every_steps a multiple of training.eval_every_steps"))
        if c.best_metric == "eval_accuracy" and spec.method.kind != "head":
            problems.append(Problem("checkpoint.best_metric", "eval_accuracy exists only for classification heads",
                                    "use eval_loss"))
    elif c.every_steps and c.every_steps % t.log_every_steps:
        problems.append(Problem("checkpoint.best_metric", "the training loss is not logged at every checkpoint",
                                "make checkpoint.every_steps a multiple of training.log_every_steps"))
    return problems


def checkpoint_storage_usable(spec: JobSpec) -> list[Problem]:
    if spec.checkpoint.storage is None:
        return []
    from orchestrator.spec.storage import check_uri

    problem = check_uri(spec.checkpoint.storage)
    return [Problem("checkpoint.storage", problem, "use s3://, gs:// or file:// with its package installed")] if problem else []


def promotion_has_gates(spec: JobSpec) -> list[Problem]:
    """Gated promotion needs an adapter, a target to improve and a source task to protect."""
    p = spec.promotion
    if not p.auto:
        return []
    problems = []
    if spec.method.kind not in ("lora", "qlora"):
        problems.append(Problem("promotion.auto", f"only adapters are registered and promoted; method.kind is "
                                                  f"{spec.method.kind}", "use method.kind lora or qlora"))
    if spec.data.eval is None:
        problems.append(Problem("promotion.auto", "the target gate compares data.eval loss, and data.eval is not set",
                                "add data.eval"))
    if not any(t.max_drop is not None for t in spec.forgetting.tasks) and spec.forgetting.max_drop is None:
        problems.append(Problem("promotion.auto", "no forgetting gate is set, so nothing protects the source tasks",
                                "add forgetting.tasks and forgetting.max_drop (or a task's max_drop)"))
    return problems


RULES: tuple[Rule, ...] = (
    method_blocks_match_kind,
    head_needs_labels,
    preference_pairs_kept_whole,
    strategy_options,
    qlora_placement,
    cuda_only_settings,
    precision_fits_strategy,
    master_weights_kept,
    kernels_apply,
    steps_or_epochs,
    forgetting_tasks_consistent,
    forgetting_controls_fit,
    objective_fits,
    merge_needs_adapter,
    checkpoint_resume_value,
    checkpoint_best_measured,
    checkpoint_storage_usable,
    mitigation_fits_method,
    promotion_has_gates,
)


def cross_field_problems(spec: JobSpec) -> list[Problem]:
    return [p for rule in RULES for p in rule(spec)]


# Refusals of features the job file can describe but this version cannot run use this
# phrase, so tools can tell them from mistakes in the job file. Every feature of this
# version's job file runs.
NOT_YET_AVAILABLE = "is not available in this version of ftctl"
