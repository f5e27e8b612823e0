"""The job file: typed models, YAML loading, overrides and validation that reports every problem."""

from orchestrator.spec.models import JobSpec
from orchestrator.spec.problems import Note, Problem, SpecError
from orchestrator.spec.load import load_spec, resolve_spec

__all__ = ["JobSpec", "Note", "Problem", "SpecError", "load_spec", "resolve_spec"]
