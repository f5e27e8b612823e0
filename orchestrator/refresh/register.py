"""The register step of a job: a succeeded lora/qlora job's adapter enters the registry."""

from __future__ import annotations

from typing import Any

from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec


def register_run(spec: JobSpec, run: RunDir, summary: dict[str, Any], job_id: str | None, store: str | None,
                 console) -> dict[str, Any]:
    """The register step of a job: its adapter becomes a new version in the registry; with
    promotion.auto, gated and maybe promoted. A registry that cannot be written fails the
    job (the adapter stays). The summary's "promotion" block."""
    import sqlite3

    from orchestrator.models.build import ModelError
    from orchestrator.refresh.promote import open_registry, register_and_judge
    from orchestrator.store.registry import RegistryError

    try:
        block = register_and_judge(spec, run.root, summary, job_id, open_registry(store),
                                   progress=lambda m: console.print(f"  {m}"))
    except (RegistryError, sqlite3.Error, ModelError, OSError, ValueError, RuntimeError) as err:
        console.print(f"[red]✗ registering the adapter failed:[/red] {err}")
        return {"error": f"registering the adapter failed: {err}"}
    assert block is not None  # a succeeded lora/qlora job with an adapter always registers
    line = f"  adapter {block['adapter']} v{block['version']}"
    if block["verdict"] == "promoted":
        console.print(f"{line}: [green]promoted[/green] ({block['reason']})")
    elif block["verdict"] == "rejected":
        console.print(f"{line}: [red]not promoted[/red]: {block['reason']}")
    else:
        console.print(f"{line}: registered (promote it with `ftctl adapters promote {block['adapter']} "
                      f"{block['version']}`)")
    return block
