"""`reca`: reconstruction alignment (RecA), self-supervised.

The model is asked to generate an image while its prompt holds that same image's
*understanding* embeddings (vision encoder + aligner output at the image placeholder tokens)
in place of a caption; the loss is the generation head's cross-entropy over the image's VQ
codes (for Janus, `model_flavors.janus_training.image_generation_loss`). No captions are needed: any image set
will do, here the training split's understanding images. Dense semantic embeddings are a
richer "prompt" than a short caption, so this aligns what the model sees with what it draws.

The understanding encoder stays fixed by default (`reca.train_understanding_encoder`), so it
acts as the target-side semantic reference (and with it, on a mixture-of-transformers backbone such
as BAGEL, the understanding expert: only the generation expert trains, as in RecA on BAGEL); the
image-target encoder (VQ, VAE) is always frozen. Other
objectives (e.g. `understanding`) can be mixed in through the recipe's `objectives`.
"""

from __future__ import annotations

from torch import nn

from training import sft
from training.recipe import TrainRecipe
from umm_harness.core.training import Trainable


def prepare(backbone: Trainable, recipe: TrainRecipe) -> nn.Module:
    backbone.freeze(*backbone.frozen_groups)
    if not recipe.reca.train_understanding_encoder:
        backbone.freeze("vision_encoder")
        if "understanding_expert" in backbone.parameter_groups():  # a mixture-of-transformers backbone (BAGEL)
            backbone.freeze("understanding_expert")
    return backbone.model


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    return sft.rebuild(base, state, recipe)
