"""`ftctl merge`: adapters into a base model, verified before the model dir is written."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.arguments import MAX_EXAMPLES, METRIC
from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console, fail
from orchestrator.exitcodes import ExitCode


@command(
    "merge",
    Arg("--adapter", type=Path, action="append", required=True,
        help="a PEFT adapter dir or a run dir holding adapter/ (repeat for a multi-adapter merge)"),
    Arg("--weight", type=float, action="append", default=None,
        help="weight of the matching --adapter, in order (default 1.0 each)"),
    Arg("--base", default=None, help="base model dir or builtin:tiny-base (default: the adapter's recorded base)"),
    Arg("--method", default="linear", choices=["linear", "ties", "dare_linear", "dare_ties", "cat"],
        help="how several adapters combine (default linear: the weighted sum of their updates)"),
    Arg("--density", type=float, default=None, help="ties/dare: fraction of each update kept (default 0.5)"),
    Arg("--seed", type=int, default=0, help="dare: seed of the random drops (default 0)"),
    Arg("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of the merged weights (default auto: the base's stored dtype)"),
    Arg("--tolerance", type=float, default=None,
        help="largest allowed |logit difference| (default by dtype: float32 1e-4)"),
    Arg("--shard-size", default="2GB", help="largest output shard (default 2GB)"),
    Arg("--tasks", nargs="*", default=[], metavar="[NAME=]PATH",
        help="report these tasks' metric on the base, each adapter alone and the merged model"),
    METRIC,
    MAX_EXAMPLES,
    Arg("--heldout", type=Path, default=None,
        help="held-out instruction rows: the verification batch, and the qlora quantisation gap's data"),
    Arg("--job", type=Path, default=None,
        help="the job the adapter was trained by: its qlora settings, data.eval and forgetting tasks "
             "(default: the adapter's run dir job.yaml, for the first two)"),
    Arg("--quantized", default=None, choices=["nf4", "fp4"],
        help="the adapter was trained on a 4-bit base of this type (qlora) and no job file says so"),
    Arg("--out", type=Path, required=True, help="new dir for the merged model"),
    Arg("--json", type=Path, default=None, dest="manifest_out", metavar="JSON",
        help="also write the merge manifest here"),
    exits="The merged model is compared with base + adapter(s) on a held-out batch and written only when the largest"
          " logit difference is within the tolerance. Exit 0 when merged, 1 when verification failed, 2 when the merge"
          " was refused (bad input, an adapter the base already carries, an existing --out).")
def cmd_merge(adapter: list[Path], weight: list[float] | None, base: str | None, method: str, density: float | None,
              seed: int, dtype: str, tolerance: float | None, shard_size: str, tasks: list[str], metric: str,
              max_examples: int, heldout: Path | None, job: Path | None, quantized: str | None, out: Path,
              manifest_out: Path | None) -> int:
    """Merge one or more LoRA/QLoRA adapters into a base model, verify it, and write a model dir."""
    from orchestrator.merging.export import MergeVerificationFailed, merge_and_verify
    from orchestrator.merging.inputs import build_request
    from orchestrator.merging.merge import MergeError
    from orchestrator.spec import SpecError

    if weight and len(weight) != len(adapter):
        return fail(f"{len(adapter)} --adapter but {len(weight)} --weight; give one --weight per --adapter, or none "
                    f"(1.0 each)", ExitCode.INVALID)
    try:
        with console.status("preparing the merge") as status:
            request = build_request(
                adapters=adapter, out=out, base=base, weights=weight, method=method, dtype=dtype, density=density,
                seed=seed, tolerance=tolerance, shard_size=shard_size, tasks=tasks, metric=metric,
                max_examples=max_examples, heldout=heldout, job=job, quantized=quantized, progress=console.print)
            manifest = merge_and_verify(request, progress=status.update)
    except MergeVerificationFailed as err:
        fail(escape(str(err)))
        if manifest_out is not None:
            manifest_out.write_text(json.dumps(err.report, indent=2))
        return ExitCode.FAILED
    except (MergeError, SpecError) as err:
        return fail(escape(str(err)), ExitCode.INVALID)
    if manifest_out is not None:
        manifest_out.write_text(json.dumps(manifest, indent=2))
    print_merge(manifest)
    return ExitCode.OK


def print_merge(manifest: dict) -> None:
    """What was merged, how, the verification and (when measured) each model's task metrics."""
    from rich.table import Table

    v, stats = manifest["verification"], manifest["merge"]
    names = ", ".join(f"{a['path']} (x{a['weight']:g})" for a in manifest["adapters"])
    console.print(f"[green]✓[/green] merged {names} into {manifest['base']['path']} -> {manifest['path']}")
    console.print(f"  method {manifest['method']}" + (f" (density {manifest['density']:g}, seed {manifest['seed']})"
                                                     if manifest["method"] not in ("linear", "cat") else "")
                  + f", {manifest['output_dtype']}, {len(stats['shards'])} shard(s), {stats['tensors_changed']} of "
                    f"{stats['tensors']} tensors changed, {stats['seconds']:.1f}s")
    console.print(f"  verified: max |logit difference| vs {v['reference']} = {v['max_abs_logit_diff']:.2e} "
                  f"(tolerance {v['tolerance']:g}, {v['probe']} {v['probe_shape']})")
    if stats.get("peak_rss_growth_bytes") is not None:
        console.print(f"  memory: peak RSS grew {stats['peak_rss_growth_bytes'] / 2**20:.0f} MiB while merging "
                      f"(largest output shard {stats['largest_shard_bytes'] / 2**20:.0f} MiB)")
    if manifest.get("quantisation_gap"):
        from orchestrator.merging.export import gap_line

        console.print(f"  {gap_line(manifest['quantisation_gap'])}")
    metrics = manifest.get("task_metrics")
    if metrics:
        tasks = list(next(iter(metrics.values())))
        table = Table(title="task metrics: each adapter alone (before) and the merged model (after)")
        table.add_column("model")
        for t in tasks:
            table.add_column(t, justify="right")
        for model, values in metrics.items():
            table.add_row(model, *(f"{values[t]:.3f}" for t in tasks))
        console.print(table)
