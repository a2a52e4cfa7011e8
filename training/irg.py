"""`irg`: interleaving reasoning generation (IRG), full fine-tuning on interleaved conversations.

IRG teaches a model to think in text, draw, reflect on the drawing in text and draw a better one,
all in one sequence. Its data are conversations (`training.interleaved`) in six learning modes:
`initial_` / `improving_` × `thinking_understanding` (learn the text), `thinking_generation`
(learn the image), `full_learning` (both). Everything trains except the encoder of generation
targets (as `sft`), with BAGEL's objective on each conversation (text CE + flow-matching MSE).

Two stages: stage 1 weighs all six modes (full learning 1.0, the others 0.5; the understanding
modes may be absent); stage 2 starts from stage 1's registered version (`model`) and keeps only the
full-learning modes (`training.recipe.IRG_MODES`). Each stage registers a version tagged with its
stage (`STAGE_TAG`); a stage-2 recipe whose base is not a stage-1 version is refused before any run
starts (`check_parent`).
"""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion
from torch import nn

from training import sft
from training.recipe import TrainRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.core.training import Trainable

STAGE_TAG = "umm.irg_stage"


def check_parent(recipe: TrainRecipe, parent: ModelVersion) -> None:
    """Stage 2 continues stage 1: its base must be a version that an IRG stage-1 training registered."""
    if recipe.irg.stage != 2:
        return
    tags = parent.tags or {}
    if tags.get("umm.method") != "irg" or tags.get(STAGE_TAG) != "1":
        found = f"method {tags.get('umm.method', 'none')}, stage {tags.get(STAGE_TAG, 'none')}"
        raise ConfigError(f"irg stage 2 continues from an IRG stage-1 version, but model '{recipe.model}' is "
                          f"version {parent.version} ({found}); train stage 1 first and use its version")


def prepare(backbone: Trainable, recipe: TrainRecipe) -> nn.Module:
    return sft.prepare(backbone, recipe)


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    return sft.rebuild(base, state, recipe)
