"""The Janus family as named presets of the one Janus adapter (`model_flavors.janus.JanusPro`).

Janus 1.3B, Janus-Pro 1B and Janus-Pro 7B share the architecture transformers implements as
`JanusForConditionalGeneration`; they differ in weights and size only. Each preset names the
transformers-format checkpoint the adapter loads (`hub_id`), the original DeepSeek release it was
converted from (`upstream_id`: custom code, needs DeepSeek's `janus` package, not loaded here),
and the model card's generation settings.

Model cards (deepseek-ai/Janus-1.3B, Janus-Pro-1B, Janus-Pro-7B, "Text-to-Image Generation"
examples): `cfg_weight=5`, `temperature=1`, `img_size=384` (patch 16 → 24×24 = 576 image tokens
per image), `parallel_size=16` images per prompt. The adapter's `default_params("generation")`
already equals these (guidance 5, temperature 1, native 384 px); `samples_per_prompt` is for a
runner or suite that wants the card's 16 images per prompt (GenEval itself fixes its own count).

`hub_ids()` gives the entries for `model_flavors.registry.HUB_IDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from umm_harness.core.requests import InferenceParams

BACKBONE = "janus_pro"  # the registry key of the adapter every preset uses


@dataclass(frozen=True)
class JanusPreset:
    name: str
    hub_id: str  # transformers-format checkpoint (what `JanusPro.load` takes)
    upstream_id: str  # DeepSeek's original release
    parameters: str
    generation: InferenceParams  # model card defaults for text-to-image
    samples_per_prompt: int  # the card's `parallel_size`
    image_tokens: int  # tokens per generated image (img_size / patch)²

    @property
    def backbone(self) -> str:
        return BACKBONE


_CARD = InferenceParams(guidance_scale=5.0, temperature=1.0, image_size=384)

PRESETS: dict[str, JanusPreset] = {
    preset.name: preset
    for preset in (
        JanusPreset("janus-1.3b", "deepseek-community/Janus-1.3B", "deepseek-ai/Janus-1.3B", "1.3B",
                    _CARD, samples_per_prompt=16, image_tokens=576),
        JanusPreset("janus-pro-1b", "deepseek-community/Janus-Pro-1B", "deepseek-ai/Janus-Pro-1B", "1B",
                    _CARD, samples_per_prompt=16, image_tokens=576),
        JanusPreset("janus-pro-7b", "deepseek-community/Janus-Pro-7B", "deepseek-ai/Janus-Pro-7B", "7B",
                    _CARD, samples_per_prompt=16, image_tokens=576),
    )
}


def preset(name_or_id: str) -> JanusPreset | None:
    """The preset named `name_or_id` (e.g. `janus-pro-7b`) or whose hub id (either form) it is."""
    key = name_or_id.strip()
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    for candidate in PRESETS.values():
        if key in (candidate.hub_id, candidate.upstream_id):
            return candidate
    return None


def hub_ids() -> dict[str, str]:
    """Hub id → backbone key, for `model_flavors.registry.HUB_IDS`."""
    return {p.hub_id: p.backbone for p in PRESETS.values()}


def upstream_hint(source: str) -> str | None:
    """A message for a user who passed DeepSeek's original (custom-code) id instead of the converted one."""
    match = preset(source)
    if match and source == match.upstream_id:
        return (f"'{source}' is DeepSeek's original release (custom code); the janus adapter loads the "
                f"transformers-format conversion '{match.hub_id}'")
    return None
