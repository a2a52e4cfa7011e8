"""An exponential moving average (EMA) of the trained weights, exported in their place.

BAGEL's trainer keeps one (decay 0.9999 in pretraining, 0.995 in IRG's post-training) and
releases it as the model (`ema.safetensors`); a recipe turns it on with `ema: <decay>`. After
every optimizer step each trained parameter's average moves `1 - decay` of the way to it. The
averages are fp32, live beside the DeepSpeed checkpoint (so a resumed run continues the same
average) and replace the trained parameters in the exported state dict; frozen weights never
move, so they are exported as they are.
"""

from __future__ import annotations

import torch
from torch import nn


class Ema:
    def __init__(self, model: nn.Module, decay: float, shadow: dict[str, torch.Tensor] | None = None):
        self.decay = decay
        self.shadow = shadow if shadow is not None else {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                average = self.shadow[name]
                average.mul_(self.decay).add_(p.detach().to(average.device, torch.float32), alpha=1 - self.decay)

    def applied(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` (a full state dict) with the averages in place of the trained parameters."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"the EMA holds parameters the state dict does not: {missing[:3]}")
        return {key: self.shadow[key].to(value.dtype) if key in self.shadow else value for key, value in state.items()}
