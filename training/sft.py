"""`sft`: full fine-tuning.

Every weight trains except the encoder of generation targets (`Trainable.frozen_groups`: Janus'
VQ model, BAGEL's VAE), which stays frozen: moving it would move the targets. The
objectives are the recipe's (`understanding` by default, `generation` on request; see
`training.objectives`). Export puts the trained state dict back into a fresh copy of the base
model.
"""

from __future__ import annotations

from torch import nn

from training.recipe import TrainRecipe
from umm_harness.core.training import Trainable


def prepare(backbone: Trainable, recipe: TrainRecipe) -> nn.Module:
    """The module whose trainable parameters the optimizer gets."""
    backbone.freeze(*backbone.frozen_groups)
    return backbone.model


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    """`base` (a fresh load of the base model) with the trained weights `state` put back, exported
    through the contract (`with_model`: e.g. BAGEL then saves these weights, not its base checkpoint's)."""
    base.model.load_state_dict(state, strict=True)
    return base.with_model(base.model)
