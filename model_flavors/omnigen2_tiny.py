"""A tiny random-weight OmniGen2 (about 0.7 M parameters) for offline tests and `tiny:omnigen2`:
native Qwen2.5-VL and AutoencoderKL from small configs, the upstream
`OmniGen2Transformer2DModel` and scheduler from the user's checkout, a locally trained
tokenizer with Qwen's special tokens and chat template, saved in the hub checkpoint's layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model_flavors.omnigen2 import REFERENCE_FILE, TextImageProcessor, import_upstream, resolve_checkout
from model_flavors.upstream_checkout import checkout_commit
from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>", "<|img|>"]
# Qwen's ChatML turns: what the pipeline's `apply_chat_template` call expects of the tokenizer.
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IMAGE_SIZE = 64


def build_tiny(folder: str | Path, seed: int = 0, repo_path: str | Path | None = None) -> Path:
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    repo = resolve_checkout(repo_path)
    api = import_upstream(repo)
    torch.manual_seed(seed)

    tokenizer = train_tiny_tokenizer({"unk_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                                      "pad_token": "<|endoftext|>"}, additional_tokens=SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    # 28-px patches after merging: a 64×48 scene becomes 2×2 merged patches.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    TextImageProcessor(tokenizer, image_processor).save_pretrained(folder / "processor")

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in [*SPECIAL_TOKENS, "<|endoftext|>"]}
    ends = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    mllm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         **ends),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **ends,
    ))
    mllm.save_pretrained(str(folder / "mllm"))
    AutoencoderKL(block_out_channels=(32, 32), latent_channels=16, norm_num_groups=32,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(str(folder / "vae"))
    # head dim 24 = sum(axes_dim_rope); axes_lens above the longest prompt + image positions.
    transformer = api.OmniGen2Transformer2DModel(
        in_channels=16, hidden_size=48, num_layers=2, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1,
        multiple_of=16, axes_dim_rope=(8, 8, 8), axes_lens=(1024, 512, 512), text_feat_dim=64,
    )
    # Upstream zero-initialises the output projection and modulations (training from scratch);
    # random values there let the prompt and the CFG scales reach the image.
    with torch.no_grad():
        for parameter in transformer.parameters():
            if not parameter.any():
                parameter.normal_(std=0.02)
    transformer.save_pretrained(str(folder / "transformer"))
    api.FlowMatchEulerDiscreteScheduler().save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "OmniGen2Pipeline", "mllm": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "processor": ["transformers", "Qwen2_5_VLProcessor"],
        "scheduler": ["scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["transformer_omnigen2", "OmniGen2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2) + "\n")
    reference = {"checkpoint": ".", "repo_path": str(repo), "commit": checkout_commit(repo), "image_size": IMAGE_SIZE}
    (folder / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    return folder
