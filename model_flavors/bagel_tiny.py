"""A tiny random-weight BAGEL made of the real upstream classes (Qwen2-MoT language model,
SigLIP-NaViT encoder, the FLUX-style `AutoEncoder`), for offline tests and `tiny:bagel`.

It is a checkpoint folder in BAGEL's own layout (`llm_config.json`, `vit_config.json`,
`ema.safetensors`, `ae.safetensors`, a Qwen2 tokenizer's `vocab.json` + `merges.txt`) plus
`umm_bagel_build.json` (the VAE parameters and image sizes upstream's notebook hard-codes for the
7B model) and `umm_bagel.json` (the adapter's reference: this folder and the checkout it needs).
About 1.4 M parameters; the upstream code comes from the user's checkout (`repo_path` or
UMM_BAGEL_REPO), never from this project.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model_flavors import bagel_cpu
from model_flavors.bagel import (
    BUILD_FILE,
    REFERENCE_FILE,
    build_inferencer,
    checkout_commit,
    import_upstream,
    resolve_checkout,
)
from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"  # Qwen2's unknown / end / padding token


@dataclass(frozen=True)
class TinySizes:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vit_hidden: int = 32
    vit_layers: int = 1  # used; the checkpoint's config says one more (BAGEL drops SigLIP's last layer)
    vae_channels: int = 32  # GroupNorm(32) needs multiples of 32
    latent_channels: int = 4
    image_size: int = 64  # 8×8 latents, 4×4 latent patches
    vae_transform: tuple[int, int, int] = (64, 32, 16)
    vit_transform: tuple[int, int, int] = (56, 28, 14)


def build_tiny(folder: str | Path, seed: int = 0, repo_path: str | Path | None = None,
               sizes: TinySizes = TinySizes()) -> Path:
    """Write the tiny checkpoint to `folder` and check it loads and answers; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    repo = resolve_checkout(repo_path)
    api = import_upstream(repo)
    torch.manual_seed(seed)

    tokenizer = train_tiny_tokenizer({"unk_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT})
    tokenizer.backend_tokenizer.model.save(str(folder))  # vocab.json + merges.txt, as Qwen2Tokenizer reads them
    vocab = len(api.add_special_tokens(api.Qwen2Tokenizer.from_pretrained(str(folder)))[0])

    llm_config = api.Qwen2Config(
        vocab_size=vocab, hidden_size=sizes.hidden, intermediate_size=2 * sizes.hidden,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=4096, qk_norm=True, tie_word_embeddings=False, layer_module="Qwen2MoTDecoderLayer",
    )
    vit_config = api.SiglipVisionConfig(
        hidden_size=sizes.vit_hidden, intermediate_size=2 * sizes.vit_hidden, num_hidden_layers=sizes.vit_layers + 1,
        num_attention_heads=2, patch_size=14, image_size=980,
    )
    llm_config.to_json_file(str(folder / "llm_config.json"))
    vit_config.to_json_file(str(folder / "vit_config.json"))

    vae_params = dict(resolution=256, in_channels=3, downsample=8, ch=sizes.vae_channels, out_ch=3,
                      ch_mult=[1, 1, 1, 1], num_res_blocks=1, z_channels=sizes.latent_channels,
                      scale_factor=0.3611, shift_factor=0.1159)
    vae = api.AutoEncoder(api.AutoEncoderParams(**vae_params))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "ae.safetensors"))

    used_vit = api.SiglipVisionConfig.from_dict(vit_config.to_dict())
    used_vit.rope = False
    used_vit.num_hidden_layers -= 1
    for config in (llm_config, used_vit):
        bagel_cpu.config_defaults(config)
    config = api.BagelConfig(
        visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=used_vit,
        vae_config=api.AutoEncoderParams(**vae_params), vit_max_num_patch_per_side=70,
        connector_act="gelu_pytorch_tanh", latent_patch_size=2, max_latent_size=64,
    )
    model = api.Bagel(api.Qwen2ForCausalLM(llm_config), api.SiglipVisionModel(used_vit), config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(used_vit)
    # Upstream zeroes the velocity head for training from scratch; random weights make the
    # language model's conditioning (prompt, CFG) reach the image.
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "ema.safetensors"))

    build = {"vae_params": vae_params, "vae_transform": list(sizes.vae_transform),
             "vit_transform": list(sizes.vit_transform), "image_size": sizes.image_size}
    (folder / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
    reference = {"route": "upstream", "checkpoint": ".", "repo_path": str(repo), "commit": checkout_commit(repo),
                 "revision": None, "think": False}
    (folder / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    build_inferencer(api, folder, "bfloat16", "cpu")  # refuse to leave a folder that does not load
    log.info("tiny BAGEL (%s parameters) written to %s", f"{sum(p.numel() for p in model.parameters()):,}", folder)
    return folder
