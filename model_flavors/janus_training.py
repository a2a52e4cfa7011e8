"""Janus-Pro's side of the training contract (`umm_harness.core.training`): losses and encoding.

- `understanding`: next-token cross-entropy on the answer tokens (Janus' own forward with labels;
  the prompt and the image tokens carry label -100);
- `generation`: cross-entropy of the image-generation head over the target image's VQ codes,
  teacher-forced after <begin_of_image>. Janus' forward only trains the text head, so this is
  ours; it mirrors `JanusPro._sample_image_tokens` (left-padded prompt, positions counted from
  the first real token, code embeddings through `prepare_embeddings_for_image_generation`);
- `reconstruction` (RecA): the same generation loss, but the prompt holds the image's own
  understanding embeddings (vision encoder + aligner) in place of a caption, and the target is
  that image's VQ codes.

Generation targets are the reference images' VQ codes, computed once with the frozen VQ encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from umm_harness.core.training import IGNORE, Example, TokenSet

if TYPE_CHECKING:
    from model_flavors.janus import JanusPro


def janus_model(model: nn.Module) -> nn.Module:
    """The Janus model inside a peft wrapper (with its LoRA layers), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_loss(janus: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = janus.model.vision_model.embeddings.patch_embedding.weight.dtype
    out = janus(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"].to(dtype), labels=batch["labels"], use_cache=False)
    return out.loss.float()


def _image_features(janus: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    vision = janus.model.vision_model
    dtype = vision.embeddings.patch_embedding.weight.dtype
    if any(p.requires_grad for p in vision.parameters()):
        return janus.model.get_image_features(pixel_values.to(dtype)).pooler_output
    with torch.no_grad():
        return janus.model.get_image_features(pixel_values.to(dtype)).pooler_output


def image_generation_loss(janus: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          codes: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced loss of the generation head over `codes` after the (left-padded) prompt."""
    embeds = janus.get_input_embeddings()(input_ids)
    if pixel_values is not None:
        features = _image_features(janus, pixel_values).to(embeds.dtype)
        slots = (input_ids == janus.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, features.reshape(-1))
    code_embeds = janus.prepare_embeddings_for_image_generation(codes[:, :-1]).to(embeds.dtype)
    prompt_len = input_ids.shape[1]
    inputs = torch.cat([embeds, code_embeds], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_ones(codes.shape[0], codes.shape[1] - 1)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = janus.model.language_model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                                        use_cache=False).last_hidden_state
    logits = janus.model.generation_head(hidden[:, prompt_len - 1:]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def loss(model: nn.Module, objective: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    janus = janus_model(model)
    if objective == "understanding":
        return text_loss(janus, batch)
    if objective == "generation":
        return image_generation_loss(janus, batch["input_ids"], batch["attention_mask"], batch["codes"])
    if objective == "reconstruction":
        return image_generation_loss(janus, batch["input_ids"], batch["attention_mask"], batch["codes"],
                                     pixel_values=batch["pixel_values"])
    raise ValueError(f"unknown objective '{objective}'")


# -- encoding ------------------------------------------------------------------------------


def _vq_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images → [-1, 1] tensors at the VQ model's resolution (the range `decode` returns)."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
              for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def vq_codes(model: nn.Module, images: list[Image.Image], size: int, batch_size: int = 64) -> torch.Tensor:
    """The frozen VQ encoder's codes of `images`, [N, num_image_tokens]."""
    vq = model.model.vqmodel
    was_training = vq.training
    vq.eval()
    out = []
    dtype = next(vq.parameters()).dtype
    device = next(vq.parameters()).device
    for start in range(0, len(images), batch_size):
        pixels = _vq_pixels(images[start:start + batch_size], size).to(device, dtype)
        out.append(vq.encode(pixels).image_tokens.view(pixels.shape[0], -1).cpu())
    vq.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 0), dtype=torch.long)


def _pixel_values(backbone: JanusPro, images: list[Image.Image]) -> torch.Tensor:
    return backbone.processor.image_processor(images, return_tensors="pt")["pixel_values"]


def encode_understanding(backbone: JanusPro, examples: list[Example]) -> TokenSet:
    tokenizer = backbone.processor.tokenizer
    ids, labels = [], []
    for e in examples:
        prompt = backbone.processor(text=[backbone._chat_prompt(e.prompt, 1)], images=[e.image],
                                    generation_mode="text", return_tensors="pt")["input_ids"][0]
        answer = tokenizer(" " + e.answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        answer = torch.tensor(answer, dtype=torch.long)
        ids.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE), answer]))
    return TokenSet("understanding", ids, labels, _pixel_values(backbone, [e.image for e in examples]),
                    pad_id=tokenizer.pad_token_id)


def encode_generation(backbone: JanusPro, examples: list[Example]) -> TokenSet:
    tokenizer = backbone.processor.tokenizer
    ids = [backbone.processor(text=[backbone._chat_prompt(e.prompt, 0)], generation_mode="image",
                              return_tensors="pt")["input_ids"][0] for e in examples]
    codes = vq_codes(backbone.model, [e.image for e in examples], backbone.native_image_size)
    return TokenSet("generation", ids, codes=codes, pad_id=tokenizer.pad_token_id)


def encode_reconstruction(backbone: JanusPro, examples: list[Example]) -> TokenSet:
    """Images → (prompt: the image's understanding tokens + the example's instruction, the image's VQ codes)."""
    tokenizer = backbone.processor.tokenizer
    images = [e.image for e in examples]
    templates: dict[str, torch.Tensor] = {}  # every image takes as many tokens: one template per instruction
    for e in examples:
        if e.prompt not in templates:
            templates[e.prompt] = backbone.processor(text=[backbone._chat_prompt(e.prompt, 1)], images=[e.image],
                                                     generation_mode="image", return_tensors="pt")["input_ids"][0]
    codes = vq_codes(backbone.model, images, backbone.native_image_size)
    return TokenSet("reconstruction", [templates[e.prompt] for e in examples],
                    pixel_values=_pixel_values(backbone, images), codes=codes, pad_id=tokenizer.pad_token_id)
