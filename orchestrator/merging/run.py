"""The merge step of a job: its adapter merged into the base right after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec


def merge_run(spec: JobSpec, run: RunDir, model_dir: str, eval_cache: str | None, console) -> dict[str, Any]:
    """The merge step of a job (merge.enabled): merge the adapter into the base, verify,
    write merged/. The summary's "merge" block; with "error", one line saying why, when the
    merge was refused, failed verification or broke (the adapter is kept either way, and the
    caller decides what that means for the job: merge.required)."""
    import shutil

    from orchestrator.merging.export import MergeRequest, MergeVerificationFailed, gap_line, merge_and_verify
    from orchestrator.merging.merge import MergeError

    out = run.merged
    shutil.rmtree(out, ignore_errors=True)  # an earlier attempt's merge of an earlier adapter
    try:
        request = MergeRequest(
            adapters=[run.adapter], base=model_dir, out=out, dtype=spec.merge.dtype,
            tolerance=spec.merge.tolerance, shard_size=spec.merge.shard_size,
            quantization=spec.method.quantization.model_dump(mode="json") if spec.method.kind == "qlora" else None,
            heldout=heldout_batches(spec, model_dir, eval_cache),
            device="cuda" if spec.resources.gpus_per_worker > 0 else "cpu")
        with console.status("merging the adapter into the base model") as status:
            manifest = merge_and_verify(request, progress=status.update)
    except MergeVerificationFailed as err:
        return {"error": f"merge: {err}", "verification": err.report["verification"]}
    except MergeError as err:
        return {"error": f"merge: {err}"}
    except Exception as err:  # a bug or a full disk: training succeeded, so say it and keep the adapter
        return {"error": f"merge: {type(err).__name__}: {' '.join(str(err).split())}"}
    v = manifest["verification"]
    console.print(f"merged: {out} ({manifest['output_dtype']}, {len(manifest['merge']['shards'])} shard(s)); "
                  f"max |logit difference| vs base + adapter {v['max_abs_logit_diff']:.2e} <= {v['tolerance']:g}")
    gap = manifest.get("quantisation_gap")
    if gap:
        console.print(f"  {gap_line(gap)}")
    return {"path": str(out), "verification": v, "quantisation_gap": gap, "seconds": manifest["seconds"],
            "shards": manifest["merge"]["shards"], "output_dtype": manifest["output_dtype"]}


def heldout_batches(spec: JobSpec, model_dir: str, eval_cache: str | None) -> list[dict] | None:
    """The first prepared data.eval rows, collated: the merge's probe and held-out set."""
    if not eval_cache:
        return None
    from orchestrator.data.pipeline import load_prepared
    from orchestrator.merging.inputs import first_batches
    from orchestrator.models.build import load_tokenizer

    pad_id = int(load_tokenizer(model_dir, spec.model).pad_token_id)
    return first_batches(load_prepared(Path(eval_cache)), pad_id) or None
