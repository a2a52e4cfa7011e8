"""`lora`: the same objectives as `sft`, trained through peft LoRA adapters.

Adapters of rank `lora.rank` and scale `lora.alpha / lora.rank` go on `lora.target_modules`
(by default the language model's attention and MLP projections); every base weight is frozen.
At export the adapters are either merged into the base weights (`lora.merge: true`, a plain
checkpoint) or kept: the exported weights folder then holds the untouched base weights plus
peft's `adapter_config.json` / `adapter_model.safetensors`, which the backbone's loader applies
(`Trainable.loads_adapters`: Janus through transformers' PEFT integration in `from_pretrained`,
BAGEL through `model_flavors.bagel.with_adapters`).
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from training.recipe import TrainRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.core.training import Trainable


def lora_config(recipe: TrainRecipe) -> LoraConfig:
    settings = recipe.lora
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, bias="none")


def check_rank(model: nn.Module, config: LoraConfig) -> None:
    """A rank above a targeted layer's smaller side adds nothing a full update could not: refuse it."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and check_target_module_exists(config, name):
            side = min(module.in_features, module.out_features)
            if config.r > side:
                raise ConfigError(f"lora.rank {config.r} is larger than layer '{name}' "
                                  f"({module.out_features}×{module.in_features}); use a rank of at most {side}")


def prepare(backbone: Trainable, recipe: TrainRecipe) -> PeftModel:
    if not recipe.lora.merge and not backbone.loads_adapters:
        raise ConfigError(f"lora.merge: false keeps adapter files that backbone '{backbone.key}' does not load; "
                          "use lora.merge: true")
    backbone.freeze(*backbone.frozen_groups)
    config = lora_config(recipe)
    check_rank(backbone.model, config)
    try:
        return get_peft_model(backbone.model, config)
    except ValueError as exc:  # e.g. target modules that match nothing
        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    """`base` with the trained adapters: merged into its weights, or kept as adapters."""
    plain = None if recipe.lora.merge else base.with_model(copy.deepcopy(base.model))
    peft_model = get_peft_model(base.model, lora_config(recipe))
    peft_model.load_state_dict(state, strict=True)
    if recipe.lora.merge:
        return base.with_model(peft_model.merge_and_unload())
    return _keeping_adapters(base.with_model(peft_model.get_base_model()), peft_model, plain)


def _keeping_adapters(exported: Trainable, peft_model: PeftModel, plain: Trainable) -> Trainable:
    """`exported` runs with the adapters and saves the base weights (without adapter layers) plus the
    adapter files side by side."""

    def save_pretrained(path: Path) -> None:
        plain.save_pretrained(path)
        peft_model.save_pretrained(path)

    exported.save_pretrained = save_pretrained
    return exported
