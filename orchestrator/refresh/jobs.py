"""The job a refresh runs: the schedule's job, warm-started from the promoted version, on
the data visible when it fired.

`refresh_spec` is what a firing (or `ftctl refresh`) queues:
- name and registry name: the schedule's;
- method.lora.init_adapter: the promoted version's adapter (none yet: fresh weights);
- promotion.parent / promotion.auto: that version, and gated promotion;
- data.train.files: what data.train.path's glob matches now, so rows that land after the
  firing wait for the next refresh and the version's data is exactly known.
"""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.spec.models import JobSpec
from orchestrator.spec.paths import is_glob


def refresh_spec(spec: dict[str, Any], name: str, head) -> JobSpec:
    """The validated job for one refresh of `name`; `head` is its promoted Version or None."""
    from orchestrator.data.sources import snapshot_files
    from orchestrator.spec import resolve_spec
    from orchestrator.spec.models import DataSourceSpec

    out = copy.deepcopy(spec)
    out["name"] = name
    out["promotion"] = {**(out.get("promotion") or {}), "adapter": name, "auto": True,
                        "parent": head.version if head is not None else None}
    lora = out.setdefault("method", {}).get("lora") or {}
    lora["init_adapter"] = head.adapter if head is not None else None
    out["method"]["lora"] = lora
    train = out["data"]["train"]
    train["files"] = snapshot_files(DataSourceSpec(**train)) if is_glob(train["path"]) else None
    return resolve_spec(out)


def check_refreshable(spec) -> list[str]:
    """Why a job cannot be refreshed on a schedule (empty when it can): refreshes are gated."""
    from orchestrator.spec.rules import promotion_has_gates

    gated = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"auto": True})})
    return [f"{p.message} ({p.hint})" if p.hint else p.message for p in promotion_has_gates(gated)]
