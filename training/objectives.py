"""The weighted sum of a backbone's training losses, as one module DeepSpeed can step.

Which losses exist and how they are computed is the backbone's business (`Trainable.loss`, e.g.
`model_flavors.janus_training`); a recipe picks the terms of the sum and their weights
(`TrainRecipe.loss_terms`: an objective, or a data subset of an interleaved method with its
`interleaved` loss; IRG's learning-mode weights, sampling probabilities upstream, are the same
expected gradient up to a constant factor as loss weights). A fraction of
generation prompts is replaced by the unconditional prompt, as classifier-free guidance at
sampling time needs. `TrainingModule` sums the weighted losses inside one `forward`, so
DeepSpeed (ZeRO-3 included) sees a single module call per micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from umm_harness.core.training import Trainable


class TrainingModule(nn.Module):
    """The trained model plus its objectives; `forward` returns (weighted total, per-objective losses)."""

    def __init__(self, model: nn.Module, backbone: Trainable, terms: dict[str, tuple[str, float]], *,
                 cfg_dropout: float = 0.0):
        super().__init__()
        self.model = model
        self._backbone = backbone  # a plain attribute: its losses run on `self.model`, never its own copy
        self.terms = dict(terms)  # name → (objective, weight)
        self.cfg_dropout = cfg_dropout

    @property
    def trained(self) -> nn.Module:
        """The model inside a peft wrapper (with its LoRA layers), or the model itself."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, batches: dict[str, dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        total = None
        for name, batch in batches.items():
            objective, weight = self.terms[name]
            if objective == "generation" and self.cfg_dropout > 0:
                ids = batch["input_ids"]
                drop = torch.rand(ids.shape[0], device=ids.device) < self.cfg_dropout
                batch = {**batch, "input_ids": self._backbone.unconditional_ids(ids, drop)}
            loss = self._backbone.loss(self.model, objective, batch)
            parts[name] = loss.detach()
            weighted = weight * loss
            total = weighted if total is None else total + weighted
        return total, parts
