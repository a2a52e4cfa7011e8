"""Backbone keys → adapter classes, imported lazily so a key costs nothing until it is used."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from umm_harness.core.backbone import Backbone
from umm_harness.core.errors import ConfigError

BACKBONES: dict[str, str] = {
    "janus_pro": "model_flavors.janus:JanusPro",
    "emu3": "model_flavors.emu3:Emu3",
    "diffusers": "model_flavors.diffusers_backbone:DiffusersBackbone",
    "bagel": "model_flavors.bagel:Bagel",
    "blip3o_next": "model_flavors.blip3o_next:Blip3oNext",
    "mmada": "model_flavors.mmada:Mmada",
    "show_o": "model_flavors.show_o:ShowO",
    "show_o2": "model_flavors.upstream_only:ShowO2",
    "janus_flow": "model_flavors.janus_flow:JanusFlow",
    "tokenflow": "model_flavors.upstream_only:TokenFlow",
    "deepgen": "model_flavors.upstream_only:DeepGen",
    "emu3_5": "model_flavors.emu3p5:Emu3p5",
    "ovis_u1": "model_flavors.upstream_only:OvisU1",
    "omnigen2": "model_flavors.omnigen2:OmniGen2",
}

# Reference-system backbone names that an adapter above serves under another key.
ALIASES: dict[str, str] = {"janus": "janus_pro", "blip3o": "blip3o_next"}

# Published checkpoints whose backbone is known without reading their config (each adapter's
# `hub_ids`, written out here so resolving a reference imports no model library).
HUB_IDS: dict[str, str] = {
    "deepseek-community/Janus-Pro-1B": "janus_pro",
    "deepseek-community/Janus-Pro-7B": "janus_pro",
    "deepseek-community/Janus-1.3B": "janus_pro",
    "BAAI/Emu3-Gen-hf": "emu3",
    "BAAI/Emu3-Chat-hf": "emu3",
    "ByteDance-Seed/BAGEL-7B-MoT": "bagel",
    "BLIP3o/BLIP3o-NEXT-SFT-3B": "blip3o_next",
    "BLIP3o/BLIP3o-NEXT-GRPO-Geneval-3B": "blip3o_next",
    "Gen-Verse/MMaDA-8B-Base": "mmada",
    "Gen-Verse/MMaDA-8B-MixCoT": "mmada",
    "showlab/show-o": "show_o",
    "showlab/show-o-512x512": "show_o",
    "showlab/show-o2-1.5B": "show_o2",
    "showlab/show-o2-1.5B-HQ": "show_o2",
    "showlab/show-o2-7B": "show_o2",
    "deepseek-ai/JanusFlow-1.3B": "janus_flow",
    "ByteFlow-AI/TokenFlow-t2i": "tokenflow",
    "deepgenteam/DeepGen-1.0-diffusers": "deepgen",
    "deepgenteam/DeepGen-1.0": "deepgen",
    "BAAI/Emu3.5": "emu3_5",
    "BAAI/Emu3.5-Image": "emu3_5",
    "AIDC-AI/Ovis-U1-3B": "ovis_u1",
    "OmniGen2/OmniGen2": "omnigen2",
    "stabilityai/stable-diffusion-3.5-large": "diffusers",
    "stabilityai/stable-diffusion-3-medium-diffusers": "diffusers",
    "black-forest-labs/FLUX.1-dev": "diffusers",
    "black-forest-labs/FLUX.1-schnell": "diffusers",
    "black-forest-labs/FLUX.1-Kontext-dev": "diffusers",
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": "diffusers",
    "Qwen/Qwen-Image": "diffusers",
    "Qwen/Qwen-Image-Edit": "diffusers",
    "Shitao/OmniGen-v1-diffusers": "diffusers",
    "timbrooks/instruct-pix2pix": "diffusers",
}

# transformers `model_type` of a checkpoint folder → backbone key.
MODEL_TYPES: dict[str, str] = {"janus": "janus_pro", "emu3": "emu3", "blip3o_qwen_inference": "blip3o_next",
                               "mmada": "mmada"}

# Marker files of checkpoint folders that have no transformers config (the first one found wins).
MARKER_FILES: dict[str, str] = {"umm_omnigen2.json": "omnigen2", "umm_bagel.json": "bagel", "umm_mmada.json": "mmada",
                                "umm_show_o.json": "show_o", "umm_janus_flow.json": "janus_flow",
                                "model_index.json": "diffusers"}

# A diffusers-layout folder whose pipeline class is an upstream model's, not a diffusers one.
PIPELINE_CLASSES: dict[str, str] = {"OmniGen2Pipeline": "omnigen2"}

# `umm models init-tiny <name>` and `tiny:<name>` model references.
TINY_BUILDERS: dict[str, str] = {
    "janus-pro": "model_flavors.janus:build_tiny",
    "emu3": "model_flavors.emu3:build_tiny",
    "diffusers-sd": "model_flavors.diffusers_backbone:build_tiny",
    "diffusers-ip2p": "model_flavors.diffusers_backbone:build_tiny_editing",
    "blip3o-next": "model_flavors.blip3o_next:build_tiny",
    "mmada": "model_flavors.mmada:build_tiny",
    "show-o": "model_flavors.show_o:build_tiny",
    "bagel": "model_flavors.bagel_tiny:build_tiny",  # upstream code: --repo-path or UMM_BAGEL_REPO
    "omnigen2": "model_flavors.omnigen2_tiny:build_tiny",  # upstream code: --repo-path or UMM_OMNIGEN2_REPO
}


def _import(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def normalize_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def backbone_class(key: str) -> type[Backbone]:
    normalized = normalize_key(key)
    normalized = ALIASES.get(normalized, normalized)
    if normalized not in BACKBONES:
        raise ConfigError(f"unknown backbone '{key}'; known backbones: {', '.join(sorted(BACKBONES))}")
    return _import(BACKBONES[normalized])


def tiny_builder(name: str):
    if name not in TINY_BUILDERS:
        raise ConfigError(f"no tiny model named '{name}'; available: {', '.join(sorted(TINY_BUILDERS))}")
    return _import(TINY_BUILDERS[name])


def infer_backbone(source: str) -> str:
    """The backbone key of a hub id or a local checkpoint folder (its config's model_type)."""
    if source in HUB_IDS:
        return HUB_IDS[source]
    index = Path(source) / "model_index.json"
    if index.is_file():
        pipeline = json.loads(index.read_text()).get("_class_name", "")
        if pipeline in PIPELINE_CLASSES:
            return PIPELINE_CLASSES[pipeline]
    for marker, key in MARKER_FILES.items():
        if (Path(source) / marker).is_file():
            return key
    config = Path(source) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type", "")
        if model_type in MODEL_TYPES:
            return MODEL_TYPES[model_type]
        raise ConfigError(f"{config}: model_type '{model_type}' is not a known backbone; pass --backbone")
    raise ConfigError(f"cannot tell which backbone '{source}' is; pass --backbone (one of {', '.join(sorted(BACKBONES))})")
