"""Model parameters that are sharded across ranks, gathered where a call needs them whole."""

from __future__ import annotations


class gathered_params:
    """Context in which an FSDP2 root's own parameters are unsharded, for `generate`, which
    calls the inner model and so skips the root's pre-forward hook. A no-op otherwise."""

    def __init__(self, model):
        self.model = model if hasattr(model, "unshard") and hasattr(model, "reshard") else None

    def __enter__(self):
        if self.model is not None:
            import torch

            # FSDP2 initialises lazily on the root's first forward; one token is enough.
            with torch.no_grad():
                device = next(self.model.parameters()).device
                self.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
            self.model.unshard()
        return self

    def __exit__(self, *exc):
        if self.model is not None:
            self.model.reshard()
        return False
