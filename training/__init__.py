"""Post-training on DeepSpeed → registered model versions (see DESIGN.md and issue 4).

One module per method (`sft`, `lora`, `reca`, `irg`, `unicot`) over one shared layer: `recipe`
(what to train), `data` (a benchmark split, an image file or conversations (`interleaved`) →
tensors), `objectives` (the losses), `engine` (DeepSpeed, the step loop, checkpoints), `launch`
(N ranks), `export` (flavor + registry) and `run.train`, the entry.
"""

from training.recipe import TrainRecipe, load_train_recipe

__all__ = ["TrainRecipe", "load_train_recipe", "train"]


def train(recipe: TrainRecipe, **kwargs):
    """`training.run.train` (imported on first use: it pulls in DeepSpeed and peft)."""
    from training.run import train as _train

    return _train(recipe, **kwargs)
