"""`unicot`: Uni-CoT, LoRA adapters on the language model over interleaved chain-of-thought data.

Uni-CoT's data are self-reflection conversations (draw, critique the drawing, draw again) and
breakdown conversations (a task split into sequential sub-steps, each with its image), in the
interleaved format of `training.interleaved` (subsets `self_reflection`, `breakdown`). The
reference trains it with LoRA, rank 256 and alpha 512 (the recipe's `lora` section defaults to
them for this method), on the language model of both experts; everything else is frozen. The loss
is BAGEL's objective on each conversation (text CE + flow-matching MSE). Adapters are merged at
export (`lora.merge: true`), or kept as peft adapter files beside the base weights (`lora.merge:
false`), which BAGEL's loader applies on its language model (`lora`).
"""

from __future__ import annotations

from peft import PeftModel

from training import lora
from training.recipe import TrainRecipe
from umm_harness.core.training import Trainable


def prepare(backbone: Trainable, recipe: TrainRecipe) -> PeftModel:
    return lora.prepare(backbone, recipe)


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    return lora.rebuild(base, state, recipe)
