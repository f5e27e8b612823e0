"""ftctl: a control plane for fine-tuning LLMs on Ray, with forgetting as a gated metric."""

__version__ = "0.1.0"
