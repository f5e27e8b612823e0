"""Method `head`: a frozen backbone used as a feature extractor, plus a new linear classifier."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head_config.json"


class SequenceClassifier(nn.Module):
    """Pools the backbone's last hidden states (last non-pad token, or mean) into logits."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str, base_model: str):
        super().__init__()
        self.backbone = backbone
        self.score = nn.Linear(hidden_size, num_labels)
        self.pooling = pooling
        self.base_model = base_model
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:  # right padding: the last real token sits at length - 1
            last = attention_mask.sum(1).long().clamp(min=1) - 1
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return self.score(pooled.to(self.score.weight.dtype))

    def save_pretrained(self, out_dir: str, state_dict: dict[str, torch.Tensor] | None = None,
                        safe_serialization: bool = True) -> None:
        """Write only the head (the backbone is the unchanged base model) and how to rebuild it."""
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else self.state_dict()
        head = {k: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith("score.")}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(head, str(out / HEAD_WEIGHTS))
        (out / HEAD_CONFIG).write_text(json.dumps({
            "base_model": self.base_model, "num_labels": self.score.out_features,
            "hidden_size": self.score.in_features, "pooling": self.pooling}, indent=2))


def build_classifier(model_dir: str, base_model: str, num_labels: int, pooling: str, dtype, revision=None,
                     trust_remote_code: bool = False) -> SequenceClassifier:
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(model_dir, dtype=dtype, revision=revision,
                                         trust_remote_code=trust_remote_code)
    return SequenceClassifier(backbone, backbone.config.hidden_size, num_labels, pooling, base_model)
