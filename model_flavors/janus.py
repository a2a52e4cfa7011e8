"""Janus and Janus-Pro on transformers' `JanusForConditionalGeneration`.

Understanding goes through `generate()` (greedy, left-padded batches). Image generation uses
our own sampling loop instead of `generate(generation_mode="image")`: the upstream loop draws
every row from the global RNG, so a sample's image would depend on its batch neighbours. Here
each row has its own `torch.Generator` seeded from the request, with the conditional and
unconditional CFG streams in one forward pass.

Defaults follow the Janus-Pro model card: CFG weight 5, temperature 1, 384 px, 576 tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from torch import nn

from model_flavors import janus_presets, janus_training
from model_flavors.replies import greedy_params, text_results
from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer
from umm_harness.core.acceleration import compile_forward, select_attn_implementation
from umm_harness.core.backbone import Backbone, ModelInfo, require_safetensors
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind
from umm_harness.core.training import Example, TokenSet, Trainable

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class JanusPro(Backbone, Trainable):
    key: ClassVar[str] = "janus_pro"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    hub_ids: ClassVar[tuple[str, ...]] = tuple(janus_presets.hub_ids())
    notes: ClassVar[str] = "Janus 1.3B, Janus-Pro 1B and 7B (transformers-format checkpoints)"
    tunable_attention: ClassVar[bool] = True
    objectives: ClassVar[frozenset[str]] = frozenset({"understanding", "generation", "reconstruction"})
    frozen_groups: ClassVar[tuple[str, ...]] = ("image_tokenizer",)
    loads_adapters: ClassVar[bool] = True  # transformers' PEFT integration in from_pretrained

    def __init__(self, model: JanusForConditionalGeneration, processor: JanusProcessor, info: ModelInfo):
        self.model = model.eval()
        self.processor = processor
        self.info = info

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             allow_pickle: bool = False, attn_implementation: str = "auto", compile: bool = False) -> JanusPro:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        require_safetensors(source, allow_pickle)
        attention = select_attn_implementation(attn_implementation, device=device, dtype=dtype)
        model = JanusForConditionalGeneration.from_pretrained(
            source, revision=revision, dtype=_DTYPES[dtype], use_safetensors=not allow_pickle,
            attn_implementation=attention,
        ).to(device)
        if compile:  # the language model runs every understanding and image-token step
            compile_forward(model.model.language_model, device)
        # Without torchvision installed, transformers picks the PIL image processor by itself.
        processor = JanusProcessor.from_pretrained(source, revision=revision)
        backbone = cls(model, processor, ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype))
        backbone.attn_implementation, backbone.compiled = attention, compile
        return backbone

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def native_image_size(self) -> int:
        return self.model.config.vision_config.image_size

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=5.0, temperature=1.0, image_size=self.native_image_size)
        return InferenceParams(seed=0, max_new_tokens=32, temperature=0.0)

    # -- understanding -------------------------------------------------------------------

    def _chat_prompt(self, text: str, num_images: int) -> str:
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    @torch.inference_mode()
    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        start = time.perf_counter()
        params = greedy_params(self, requests)
        texts = [self._chat_prompt(r.prompt or "", len(r.images)) for r in requests]
        images = [img for r in requests for img in r.images]
        inputs = self.processor(text=texts, images=images or None, generation_mode="text", padding=True)
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        longest = max(p.max_new_tokens for p in params)
        output = self.model.generate(
            **inputs, max_new_tokens=longest, do_sample=False, pad_token_id=self.processor.tokenizer.pad_token_id
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return text_results(self.processor.tokenizer, new_tokens, params, (time.perf_counter() - start) / len(requests))

    # -- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        start = time.perf_counter()
        params = [r.params.merged_over(self.default_params("generation")) for r in requests]
        for p in params:
            if p.image_size != self.native_image_size:
                raise ValueError(
                    f"janus_pro generates {self.native_image_size}px images only; got image_size={p.image_size}"
                )
        tokens = self._sample_image_tokens([r.prompt or "" for r in requests], params)
        pixels = self.model.model.vqmodel.decode(tokens).float()
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        elapsed = (time.perf_counter() - start) / len(requests)
        return [
            InferenceResult(images=[Image.fromarray(array)], params=p, elapsed_s=elapsed)
            for array, p in zip(pixels, params)
        ]

    def generation_inputs(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded conditional prompts ending in <begin_of_image> (shared with training)."""
        texts = [self._chat_prompt(p, 0) for p in prompts]
        inputs = self.processor(text=texts, generation_mode="image", padding=True)
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def _sample_image_tokens(self, prompts: Sequence[str], params: Sequence[InferenceParams]) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        inputs = self.generation_inputs(prompts)
        cond_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch = cond_ids.shape[0]
        # The unconditional stream keeps only BOS and <begin_of_image>, as Janus was trained.
        keep = (cond_ids == tokenizer.bos_token_id) | (cond_ids == tokenizer.convert_tokens_to_ids(tokenizer.boi_token))
        uncond_ids = torch.where(keep, cond_ids, torch.full_like(cond_ids, tokenizer.pad_token_id))
        ids = torch.cat([cond_ids, uncond_ids])
        mask = torch.cat([mask, mask])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.model.get_input_embeddings()(ids)

        guidance = torch.tensor([p.guidance_scale for p in params], device=ids.device).unsqueeze(-1)
        temperature = torch.tensor([max(p.temperature, 1e-5) for p in params], device=ids.device).unsqueeze(-1)
        generators = [torch.Generator(device=ids.device).manual_seed(p.seed) for p in params]
        num_tokens = self.model.config.vision_config.num_image_tokens
        out_tokens = torch.zeros(batch, num_tokens, dtype=torch.long, device=ids.device)

        language_model = self.model.model.language_model
        past = None
        for step in range(num_tokens):
            out = language_model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = self.model.model.generation_head(out.last_hidden_state[:, -1]).float()
            cond, uncond = logits[:batch], logits[batch:]
            probs = torch.softmax((uncond + guidance * (cond - uncond)) / temperature, dim=-1)
            picked = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(batch)])
            out_tokens[:, step] = picked
            embeds = self.model.prepare_embeddings_for_image_generation(picked.repeat(2)).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(2 * batch, 1)], dim=1)
            positions = positions[:, -1:] + 1
        return out_tokens

    # -- training contract (umm_harness.core.training; losses in model_flavors.janus_training) --

    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        inner = self.model.model
        return {"image_tokenizer": [inner.vqmodel], "vision_encoder": [inner.vision_model, inner.aligner]}

    def encode(self, examples: list[Example], objective: str) -> TokenSet:
        if objective == "understanding":
            return janus_training.encode_understanding(self, examples)
        if objective == "generation":
            return janus_training.encode_generation(self, examples)
        if objective == "reconstruction":
            return janus_training.encode_reconstruction(self, examples)
        raise ValueError(f"unknown objective '{objective}'")

    def loss(self, model: nn.Module, objective: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return janus_training.loss(model, objective, batch)

    def unconditional_ids(self, input_ids: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Rows in `drop` keep only BOS and <begin_of_image>, as the sampler's unconditional stream."""
        tokenizer = self.processor.tokenizer
        keep = (input_ids == tokenizer.bos_token_id) | (input_ids == tokenizer.convert_tokens_to_ids(tokenizer.boi_token))
        blanked = torch.where(keep, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))
        return torch.where(drop.unsqueeze(-1), blanked, input_ids)

    def with_model(self, model: nn.Module) -> JanusPro:
        return JanusPro(model, self.processor, self.info)


# -- tiny model for tests and the embedded default ------------------------------------------

_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image_placeholder>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def build_tiny(path: Path, seed: int = 0, hidden: int = 128, layers: int = 2) -> JanusPro:
    """A ~3.8 M-parameter random Janus-Pro (64 px, 64 image tokens, 256 VQ codes), saved at `path`;
    `hidden` and `layers` size its language model up (a slower model for speed figures).

    Sizes follow the constraints of the real classes: the VQ downsample (2^(levels-1)) equals
    the vision patch size, and every projection equals the text hidden size.
    """
    tokenizer = train_tiny_tokenizer(
        {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜▁pad▁｜>"},
        {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"},
        ["<|User|>", "<|Assistant|>"],
    )
    image_size, patch = 64, 8
    config = JanusConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=JanusVisionConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=patch,
            projection_dim=hidden, num_image_tokens=(image_size // patch) ** 2, mlp_ratio=2.0,
        ),
        vq_config=JanusVQVAEConfig(
            num_embeddings=256, embed_dim=8, base_channels=32, channel_multiplier=[1, 1, 2, 2], latent_channels=32,
            num_res_blocks=1, projection_dim=hidden, image_token_embed_dim=hidden,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(tokenizer.boi_token)}
    image_processor = JanusImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = JanusProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=_TINY_CHAT_TEMPLATE,
        num_image_tokens=config.vision_config.num_image_tokens,
    )
    backbone = JanusPro(model, processor, ModelInfo(backbone=JanusPro.key, source=str(path)))
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(path)
    return backbone
