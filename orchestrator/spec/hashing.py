"""A job's identity: the hash of its resolved spec."""

from __future__ import annotations

import hashlib
import json

from orchestrator.spec.models import JobSpec


def spec_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
