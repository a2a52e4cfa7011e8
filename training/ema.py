"""An exponential moving average (EMA) of the trained weights, exported in their place.

BAGEL's trainer keeps one (decay 0.9999 in pretraining, 0.995 in IRG's post-training) and
releases it as the model (`ema.safetensors`); a recipe turns it on with `ema: <decay>`. After
every optimizer step each trained parameter's average moves `1 - decay` of the way to it. The
averages are fp32 and replace the trained parameters in the exported state dict; frozen weights
never move, so they are exported as they are.

Under ZeRO-3 a rank holds only its partition of each parameter (DeepSpeed's `ds_tensor`, a flat
slice), so it averages only that: the EMA is sharded like the weights and costs no gathering per
step. Each rank saves its own averages in the checkpoint (`training.engine.save_checkpoint`'s
per-rank state), so a resumed run continues the same average; at export the partitions are
gathered one parameter at a time into whole tensors.
"""

from __future__ import annotations

import torch
from torch import nn


def _local(parameter: nn.Parameter) -> torch.Tensor:
    """What this rank holds of `parameter`: its ZeRO-3 partition, or the whole of it."""
    return getattr(parameter, "ds_tensor", parameter)


class Ema:
    def __init__(self, model: nn.Module, decay: float, shadow: dict[str, torch.Tensor] | None = None):
        self.decay = decay
        self.shadow = shadow if shadow is not None else {
            name: _local(p).detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                average = self.shadow[name]
                average.mul_(self.decay).add_(_local(p).detach().to(average.device, torch.float32),
                                              alpha=1 - self.decay)

    @torch.no_grad()
    def whole(self, model: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
        """The averages as whole parameters on the CPU, where `keep` (rank 0; else empty). Every rank
        calls it: a ZeRO-3 parameter's average is all-gathered from the ranks' partitions."""
        import deepspeed.comm as dist

        parameters = dict(model.named_parameters())
        averages = {}
        for name, average in self.shadow.items():
            p = parameters[name]
            if hasattr(p, "ds_tensor"):
                group = getattr(p, "ds_process_group", None)
                parts = [torch.empty_like(average) for _ in range(dist.get_world_size(group=group))]
                dist.all_gather(parts, average, group=group)
                average = torch.cat(parts)[:p.ds_numel].view(p.ds_shape)
            if keep:
                averages[name] = average.to("cpu", copy=True)
        return averages

    def applied(self, state: dict[str, torch.Tensor], averages: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` (a full state dict) with `averages` (`whole`) in place of the trained parameters."""
        missing = sorted(set(averages) - set(state))
        if missing:
            raise KeyError(f"the EMA holds parameters the state dict does not: {missing[:3]}")
        return {key: averages[key].to(value.dtype) if key in averages else value for key, value in state.items()}
