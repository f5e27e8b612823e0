"""What loading a job changes on its own instead of refusing it; each change is said as a Note.

A rule (rules.py) refuses a combination of fields. An adjustment takes the one reading of a
combination that routine use produces and says what it did:

- a run shortened on the command line keeps the job file's warmup: the warmup is cut to a
  tenth of the run (`fit_warmup`);
- `method.kind=full` on the command line, for a LoRA job file: the file's `method.lora`, which
  served the file's own kind, is dropped (`drop_blocks_of_replaced_kind`);
- `training.objective=sft` on the command line, for a DPO job file: the file's `training.dpo`
  is dropped the same way.

Nothing else is adjusted: a block the job file gives for another kind than its own, or one
given on the command line together with the kind, is still refused.
"""

from __future__ import annotations

from typing import Any, Sequence

from orchestrator.spec.models import BLOCK_KINDS, JobSpec, MethodSpec
from orchestrator.spec.problems import Note

WARMUP_SHARE = 10  # a warmup cut to fit is max_steps // WARMUP_SHARE steps long


def fit_warmup(spec: JobSpec) -> list[Note]:
    """Cut a warmup that is not shorter than max_steps to a tenth of the run (rounded down), so
    that the learning rate reaches its peak and then follows lr_schedule."""
    t = spec.training
    if t.max_steps is None or t.warmup_steps < t.max_steps:
        return []
    cut = t.max_steps // WARMUP_SHARE
    note = Note("training.warmup_steps",
                f"warmup ({t.warmup_steps} steps) is not shorter than training.max_steps ({t.max_steps}); "
                f"it is cut to a tenth of the run, {cut} step(s)",
                f"set training.warmup_steps below {t.max_steps} to choose it yourself")
    t.warmup_steps = cut
    return [note]


def drop_blocks_of_replaced_kind(raw: dict[str, Any], data: dict[str, Any], overrides: Sequence[str]) -> list[Note]:
    """When `method.kind` is set on the command line, drop from `data` (the job with its overrides
    applied) each method block that the job file gave for its own kind and that does not apply
    to the new one. Blocks given on the command line, and blocks the file's own kind did not use,
    stay for the rules to refuse."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    notes = _drop_dpo_of_replaced_objective(raw, data, keys)
    method, file_method = data.get("method"), raw.get("method")
    if "method.kind" not in keys or not isinstance(method, dict) or not isinstance(file_method, dict):
        return notes
    new_kind = method.get("kind")
    old_kind = file_method.get("kind", MethodSpec.model_fields["kind"].default)
    for block, kinds in BLOCK_KINDS.items():
        on_command_line = any(k == "method" or k == f"method.{block}" or k.startswith(f"method.{block}.")
                              for k in keys)
        if (method.get(block) is None or file_method.get(block) is None or on_command_line
                or old_kind not in kinds or new_kind in kinds):
            continue
        del method[block]
        notes.append(Note(f"method.{block}", f"method.kind={new_kind} was set on the command line; the job file's "
                                             f"{block} block (for method.kind={old_kind}) does not apply to it and "
                                             f"is dropped"))
    return notes


def _drop_dpo_of_replaced_objective(raw: dict[str, Any], data: dict[str, Any], keys: list[str]) -> list[Note]:
    training, file_training = data.get("training"), raw.get("training")
    if ("training.objective" not in keys or not isinstance(training, dict) or not isinstance(file_training, dict)
            or training.get("objective") == "dpo" or file_training.get("objective") != "dpo"
            or training.get("dpo") is None or any(k == "training.dpo" or k.startswith("training.dpo.") for k in keys)):
        return []
    del training["dpo"]
    return [Note("training.dpo", f"training.objective={training.get('objective')} was set on the command line; the "
                                 "job file's dpo block does not apply to it and is dropped")]
