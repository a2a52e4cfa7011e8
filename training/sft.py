"""`sft`: full fine-tuning.

Every weight trains except the image tokenizer (for Janus, the VQ model), which stays frozen:
the generation objective's targets are its codes, so moving it would move the targets. The
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
    backbone.freeze("image_tokenizer")
    return backbone.model


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    """`base` (a fresh load of the base model) with the trained weights `state` put back."""
    base.model.load_state_dict(state, strict=True)
    return base
