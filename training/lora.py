"""`lora`: the same objectives as `sft`, trained through peft LoRA adapters.

Adapters of rank `lora.rank` and scale `lora.alpha / lora.rank` go on `lora.target_modules`
(by default the language model's attention and MLP projections); every base weight is frozen.
At export the adapters are either merged into the base weights (`lora.merge: true`, a plain
checkpoint) or kept: the exported weights folder then holds the untouched base weights plus
peft's `adapter_config.json` / `adapter_model.safetensors`, which transformers' own PEFT
integration applies when the flavor loads the folder with `from_pretrained`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from model_flavors.janus import JanusPro
from training import sft
from training.recipe import TrainRecipe


def lora_config(recipe: TrainRecipe) -> LoraConfig:
    settings = recipe.lora
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, bias="none")


def prepare(model: nn.Module, recipe: TrainRecipe) -> PeftModel:
    sft.freeze_vq(model)
    try:
        return get_peft_model(model, lora_config(recipe))
    except ValueError as exc:  # e.g. target modules that match nothing
        from umm_harness.core.errors import ConfigError

        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None


class AdapterJanusPro(JanusPro):
    """A Janus-Pro with unmerged LoRA adapters; saves base weights + adapter files side by side."""

    def __init__(self, peft_model: PeftModel, plain: JanusPro):
        super().__init__(peft_model.get_base_model(), plain.processor, plain.info)
        self._peft = peft_model
        self._plain = plain  # the base weights, without adapter layers

    def save_pretrained(self, path: Path) -> None:
        self._plain.save_pretrained(path)
        self._peft.save_pretrained(path)


def rebuild(base: JanusPro, state: dict, recipe: TrainRecipe) -> JanusPro:
    """`base` with the trained adapters: merged into its weights, or kept as adapters."""
    plain = None if recipe.lora.merge else JanusPro(copy.deepcopy(base.model), base.processor, base.info)
    peft_model = get_peft_model(base.model, lora_config(recipe))
    peft_model.load_state_dict(state, strict=True)
    if recipe.lora.merge:
        return JanusPro(peft_model.merge_and_unload(), base.processor, base.info)
    return AdapterJanusPro(peft_model, plain)
