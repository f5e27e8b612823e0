"""Check rendered manifests against the KubeRay CRDs' OpenAPI schemas (jsonschema).

The API server prunes fields a CRD does not declare, silently; here an undeclared field is
an error instead (every object with declared properties is closed, unless the schema says
x-kubernetes-preserve-unknown-fields), so a misspelt key is caught before it is applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def crd_schema(crd_file: Path, version: str = "v1") -> tuple[str, dict[str, Any]]:
    """(kind, closed JSON schema) of one version of a CustomResourceDefinition file."""
    # The CRDs are megabytes of YAML: libyaml's loader reads them in a fraction of the time.
    crd = yaml.load(Path(crd_file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in served:
        raise ValueError(f"{crd_file} has no version {version} (it has {', '.join(served)})")
    return crd["spec"]["names"]["kind"], _closed(served[version]["schema"]["openAPIV3Schema"])


def _closed(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def validate_manifest(manifest: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Every schema problem of a manifest, as 'path: message' lines ([] when valid)."""
    from jsonschema import Draft7Validator

    kind = manifest.get("kind")
    if kind not in schemas:
        return [f"no schema for kind {kind!r}"]
    validator = Draft7Validator(schemas[kind])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))]
