"""Emu3 on transformers' `Emu3ForConditionalGeneration`: the Chat checkpoint understands, the Gen
checkpoint generates.

Weights: one logged model stands for the *pair*. Loaded from the hub, either published id
(`BAAI/Emu3-Gen-hf` or `BAAI/Emu3-Chat-hf`) resolves to both, each in its role, and the flavor
records the model by reference (two ~17 GB bf16 checkpoints are never copied silently). Loaded
from disk (the tiny model, a fine-tuned pair) the weights are bundled: the folder *is* the Gen
checkpoint (so it stays a valid transformers Emu3 checkpoint whose `model_type` the registry
recognises) and its `chat/` subfolder holds the Chat checkpoint; `save_pretrained` writes that
layout, so logging and reloading keep the pair together under one digest. A single checkpoint
folder without `chat/` (e.g. one fine-tuned model) serves both roles. `umm_emu3.json` (optional)
records the bundle's native defaults (image size, answer length).

Each role's weights load on first use, so an evaluation that only generates never holds the
Chat model in memory. When both are loaded and their VQ tokenizers are identical (they are in
the published pair) the Chat model reuses the Gen model's VQ module.

Understanding: left-padded batches through `generate()` (greedy). Each image is VQ-encoded on
its own and scattered into the prompt embeddings, so a sample's answer does not depend on the
padding of other images in its batch: a batch answers exactly as one-at-a-time.

Generation: our own sampling loop, as in `janus.py`. The conditional prompt and the negative
prompt (model card: the Emu3 negative prompt, plus its positive-quality suffix on the prompt)
run as one left-padded batch; every row has its own `torch.Generator` seeded from its request.
`Emu3ImageGridLogitsProcessor` restricts every step to the visual tokens, forces the end-of-line
token at the end of each row and EOF/EOI/EOS after the last row. Defaults (model card):
CFG 3.0, temperature 1.0, top-k 2048, 720 px (image area 518400, 90×90 tokens).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from transformers import (
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    Emu3TextConfig,
    Emu3VQVAEConfig,
    LogitsProcessor,
)

from model_flavors.replies import greedy_params, text_results
from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer
from umm_harness.core.acceleration import compile_forward, select_attn_implementation
from umm_harness.core.backbone import Backbone, ModelInfo, require_safetensors
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The published pair: each hub id names its partner and the role it plays.
HUB_PAIRS: dict[str, tuple[str, str]] = {
    "BAAI/Emu3-Gen-hf": ("gen", "BAAI/Emu3-Chat-hf"),
    "BAAI/Emu3-Chat-hf": ("chat", "BAAI/Emu3-Gen-hf"),
}
CHAT_SUBFOLDER = "chat"
DEFAULTS_FILE = "umm_emu3.json"

# Model card (BAAI/Emu3-Gen): prompts get a quality suffix, CFG runs against this negative prompt.
POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)
SYSTEM_PROMPT = "You are a helpful assistant."
CARD_IMAGE_SIZE = 720  # image_area 518400 = 720², ratio 1:1
CARD_MAX_NEW_TOKENS = 1024
CARD_TOP_K = 2048
EOL_TOKEN = "<|extra_200|>"
DOWNSAMPLE = 8


class Emu3ImageGridLogitsProcessor(LogitsProcessor):
    """Constrain decoding to one `height`×`width` Emu3 image after the image-wrapper token.

    Step k (0-based, counted from the first generated token) allows only visual tokens inside a
    row, only EOL at the end of each row (k % (width+1) == width), then EOF, EOI, EOS, and pad
    afterwards. Works as a `generate()` logits processor (steps counted from `prompt_length`)
    and through `allowed(step)` in a hand-written loop.
    """

    def __init__(self, height: int, width: int, visual_token_ids: Sequence[int], eol_id: int, eof_id: int,
                 eoi_id: int, eos_id: int, pad_id: int, prompt_length: int = 0):
        self.height, self.width = height, width
        self.visual = torch.as_tensor(sorted(visual_token_ids), dtype=torch.long)
        self.eol, self.eof, self.eoi, self.eos, self.pad = eol_id, eof_id, eoi_id, eos_id, pad_id
        self.prompt_length = prompt_length

    @property
    def grid_length(self) -> int:
        """Tokens of the image grid itself: `height` rows of `width` visual tokens and one EOL."""
        return self.height * (self.width + 1)

    def forced(self, step: int) -> int | None:
        """The only token allowed at `step`, or None when any visual token is."""
        if step < self.grid_length:
            return self.eol if step % (self.width + 1) == self.width else None
        return [self.eof, self.eoi, self.eos][step - self.grid_length] if step < self.grid_length + 3 else self.pad

    def allowed(self, step: int) -> torch.Tensor:
        token = self.forced(step)
        return self.visual if token is None else torch.tensor([token], dtype=torch.long)

    def mask(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        if self.visual.device != scores.device:
            self.visual = self.visual.to(scores.device)  # once, not at each of the ~8k steps
        keep = self.allowed(step).to(scores.device)
        masked = torch.full_like(scores, float("-inf"))
        masked[:, keep] = scores[:, keep]
        return masked

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.mask(scores, input_ids.shape[1] - self.prompt_length)


@dataclass
class _Role:
    model: Emu3ForConditionalGeneration
    processor: Emu3Processor


@dataclass
class _RoleSource:
    source: str
    subfolder: str | None = None
    revision: str | None = None


class Emu3(Backbone):
    key: ClassVar[str] = "emu3"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    hub_ids: ClassVar[tuple[str, ...]] = tuple(HUB_PAIRS)
    notes: ClassVar[str] = "Chat checkpoint understands, Gen checkpoint generates; either hub id loads the pair"
    tunable_attention: ClassVar[bool] = True

    def __init__(self, roles: dict[str, _RoleSource], info: ModelInfo, device: str = "cpu",
                 image_size: int = CARD_IMAGE_SIZE, max_new_tokens: int = CARD_MAX_NEW_TOKENS,
                 loaded: dict[str, _Role] | None = None):
        self.info = info
        self.device = device
        self.image_size = image_size
        self.max_new_tokens = max_new_tokens
        self._sources = roles
        self._loaded: dict[str, _Role] = dict(loaded or {})


    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             attn_implementation: str = "auto", compile: bool = False) -> Emu3:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        require_safetensors(source)
        backbone = cls._locate(source, revision, dtype, device)
        # Chosen now (a bad choice fails before anything runs), applied as each role loads.
        backbone.attn_implementation = select_attn_implementation(attn_implementation, device=device, dtype=dtype)
        backbone.compiled = compile
        return backbone

    @classmethod
    def _locate(cls, source: str, revision: str | None, dtype: str, device: str) -> Emu3:
        """Where each role's weights are (nothing loads yet)."""
        info = ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype)
        folder = Path(source)
        if source in HUB_PAIRS:
            role, partner = HUB_PAIRS[source]
            other = "chat" if role == "gen" else "gen"
            roles = {role: _RoleSource(source, revision=revision), other: _RoleSource(partner)}
            return cls(roles, info, device)
        if not (folder / "config.json").is_file():
            # Any other hub id: one checkpoint that serves both roles.
            roles = {"gen": _RoleSource(source, revision=revision), "chat": _RoleSource(source, revision=revision)}
            return cls(roles, info, device)
        chat = folder / CHAT_SUBFOLDER
        roles = {"gen": _RoleSource(source),
                 "chat": _RoleSource(source, subfolder=CHAT_SUBFOLDER) if (chat / "config.json").is_file()
                 else _RoleSource(source)}
        defaults = json.loads((folder / DEFAULTS_FILE).read_text()) if (folder / DEFAULTS_FILE).is_file() else {}
        return cls(roles, info, device, image_size=int(defaults.get("image_size", CARD_IMAGE_SIZE)),
                   max_new_tokens=int(defaults.get("max_new_tokens", CARD_MAX_NEW_TOKENS)))

    def _role(self, role: str) -> _Role:
        """The model and processor of `role`, loaded on first use (shared when both are one checkpoint)."""
        if role in self._loaded:
            return self._loaded[role]
        spec = self._sources[role]
        for other, other_spec in self._sources.items():
            if other != role and other in self._loaded and other_spec == spec:
                self._loaded[role] = self._loaded[other]
                return self._loaded[role]
        kwargs = {"revision": spec.revision, **({"subfolder": spec.subfolder} if spec.subfolder else {})}
        attention = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        model = Emu3ForConditionalGeneration.from_pretrained(
            spec.source, dtype=_DTYPES[self.info.dtype], use_safetensors=True, **kwargs, **attention
        ).to(self.device).eval()
        if self.compiled:
            compile_forward(model.model.text_model, self.device)
        processor = Emu3Processor.from_pretrained(spec.source, **kwargs)
        processor.tokenizer.padding_side = "left"
        for other in self._loaded.values():
            _share_vq_if_identical(other.model, model)
        self._loaded[role] = _Role(model, processor)
        return self._loaded[role]

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        gen, chat = self._role("gen"), self._role("chat")
        gen.model.save_pretrained(path)
        gen.processor.save_pretrained(path)
        if chat is not gen:
            chat.model.save_pretrained(path / CHAT_SUBFOLDER)
            chat.processor.save_pretrained(path / CHAT_SUBFOLDER)
        defaults = {"image_size": self.image_size, "max_new_tokens": self.max_new_tokens}
        (path / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=3.0, temperature=1.0, image_size=self.image_size)
        return InferenceParams(seed=0, max_new_tokens=self.max_new_tokens, temperature=0.0)

    # -- understanding -------------------------------------------------------------------

    def _chat_prompt(self, processor: Emu3Processor, text: str, num_images: int) -> str:
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                    {"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.inference_mode()
    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        start = time.perf_counter()
        params = greedy_params(self, requests)
        chat = self._role("chat")
        model, processor = chat.model, chat.processor
        texts = [self._chat_prompt(processor, r.prompt or "", len(r.images)) for r in requests]
        images = [img for r in requests for img in r.images]
        inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        input_ids = inputs["input_ids"].to(model.device)
        embeds = model.get_input_embeddings()(input_ids)
        if images:
            # One image at a time through the VQ encoder: padding a batch of differently sized
            # images would change the tokens at their borders (convolutions, VQ attention).
            pixels, sizes = inputs["pixel_values"], inputs["image_sizes"]
            features = []
            for index in range(len(images)):
                height, width = (int(v) for v in sizes[index])
                one = pixels[index : index + 1, :, :height, :width].to(model.device, model.dtype)
                out = model.model.get_image_features(one, sizes[index : index + 1])
                features.append(out.pooler_output[0])
            mask = (input_ids == model.vocabulary_mapping.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask.to(embeds.device), torch.cat(features).to(embeds.dtype))
        longest = max(p.max_new_tokens for p in params)
        output = model.generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"].to(model.device), max_new_tokens=longest,
            do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
        )
        return text_results(processor.tokenizer, output, params, (time.perf_counter() - start) / len(requests))

    # -- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        start = time.perf_counter()
        params = [r.params.merged_over(self.default_params("generation")) for r in requests]
        for p in params:
            if p.image_size % DOWNSAMPLE:
                raise ValueError(f"emu3 image_size must be a multiple of {DOWNSAMPLE} (×8 VQ downsample); "
                                 f"got {p.image_size}")
        results: list[InferenceResult | None] = [None] * len(requests)
        by_size: dict[int, list[int]] = {}
        for index, p in enumerate(params):
            by_size.setdefault(p.image_size, []).append(index)
        gen = self._role("gen")
        for size, indices in by_size.items():
            grids = self._sample_image_tokens(gen, [requests[i].prompt or "" for i in indices],
                                              [params[i] for i in indices], size)
            for i, image in zip(indices, self._decode(gen, grids)):
                results[i] = InferenceResult(images=[image], params=params[i])
        elapsed = (time.perf_counter() - start) / len(requests)
        for result in results:
            result.elapsed_s = elapsed
        return results

    def grid_processor(self, role: _Role, height: int, width: int,
                       prompt_length: int = 0) -> Emu3ImageGridLogitsProcessor:
        tokenizer = role.processor.tokenizer
        mapping = role.model.vocabulary_mapping
        ids = tokenizer.convert_tokens_to_ids
        return Emu3ImageGridLogitsProcessor(
            height, width, mapping.image_tokens, eol_id=ids(EOL_TOKEN), eof_id=ids(tokenizer.eof_token),
            eoi_id=ids(tokenizer.eoi_token), eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            prompt_length=prompt_length,
        )

    def _sample_image_tokens(self, role: _Role, prompts: Sequence[str], params: Sequence[InferenceParams],
                             size: int) -> torch.Tensor:
        """Grid tokens (batch, height, width+1) sampled with CFG, one generator per row."""
        model, processor = role.model, role.processor
        batch = len(prompts)
        texts = [p + POSITIVE_PROMPT for p in prompts] + [NEGATIVE_PROMPT] * batch
        inputs = processor(text=texts, return_for_image_generation=True, ratio="1:1", image_area=size * size,
                           padding=True, return_tensors="pt")
        height, width = (int(v) for v in inputs["image_sizes"][0])
        grid = self.grid_processor(role, height, width)
        ids, mask = inputs["input_ids"].to(model.device), inputs["attention_mask"].to(model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = model.get_input_embeddings()(ids)

        guidance = torch.tensor([p.guidance_scale for p in params], device=model.device).unsqueeze(-1)
        temperature = torch.tensor([max(p.temperature, 1e-5) for p in params], device=model.device).unsqueeze(-1)
        generators = [torch.Generator(device=model.device).manual_seed(p.seed) for p in params]
        top_k = min(int(getattr(model.generation_config, "top_k", None) or CARD_TOP_K), len(grid.visual))
        tokens = torch.empty(batch, grid.grid_length, dtype=torch.long, device=model.device)
        past = None
        for step in range(grid.grid_length):
            # Every step feeds the previous token into the cache; forced steps (EOL) skip sampling.
            out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past,
                        use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            forced = grid.forced(step)
            if forced is not None:
                picked = torch.full((batch,), forced, dtype=torch.long, device=model.device)
            else:
                logits = out.logits[:, -1].float()
                cond, uncond = logits[:batch], logits[batch:]
                scores = grid.mask(uncond + guidance * (cond - uncond), step) / temperature
                threshold = torch.topk(scores, top_k, dim=-1).values[:, -1:]
                probs = torch.softmax(scores.masked_fill(scores < threshold, float("-inf")), dim=-1)
                picked = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(batch)])
            tokens[:, step] = picked
            embeds = model.get_input_embeddings()(picked.repeat(2)).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(2 * batch, 1)], dim=1)
            positions = positions[:, -1:] + 1
        return tokens.view(batch, height, width + 1)

    def _decode(self, role: _Role, grids: torch.Tensor) -> list[Image.Image]:
        model = role.model
        codes = model.vocabulary_mapping.convert_bpe2img(grids)
        pixels = model.model.vqmodel.decode(codes).float()
        return role.processor.postprocess(list(pixels.cpu()), return_tensors="PIL.Image.Image")["pixel_values"]


def _share_vq_if_identical(source: Emu3ForConditionalGeneration, target: Emu3ForConditionalGeneration) -> None:
    """Point `target` at `source`'s VQ module when the weights are equal (the published pair's are)."""
    a, b = source.model.vqmodel.state_dict(), target.model.vqmodel.state_dict()
    if a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k].to(a[k].device)) for k in a):
        target.model.vqmodel = source.model.vqmodel


# -- tiny model for tests and the embedded default ------------------------------------------

_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% for part in message['content'] %}{{ part['text'] }} {% endfor %}"
    "{% else %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_TINY_CODES = 128


def _tiny_role(tokenizer, vq_state: dict | None, hidden: int,
               image_size: int) -> tuple[Emu3ForConditionalGeneration, Emu3Processor]:
    vocab = tokenizer.get_vocab()
    config = Emu3Config(
        vq_config=Emu3VQVAEConfig(
            codebook_size=_TINY_CODES, embed_dim=4, latent_channels=4, base_channels=32,
            channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], hidden_size=32,
            num_attention_heads=1, temporal_downsample_factor=4,
        ),
        text_config=Emu3TextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, initializer_range=0.2,
            attention_dropout=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vocabulary_map=vocab,
    )
    model = Emu3ForConditionalGeneration(config)
    if vq_state is not None:
        model.model.vqmodel.load_state_dict(vq_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    pixels = image_size * image_size
    image_processor = Emu3ImageProcessor(min_pixels=pixels // 4, max_pixels=pixels, spatial_factor=DOWNSAMPLE,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Emu3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=_TINY_CHAT_TEMPLATE)
    return model.eval(), processor


def build_tiny(path: Path, seed: int = 0) -> Emu3:
    """A tiny random Emu3 pair (Gen at `path`, Chat in `path/chat`), 64 px, 128 VQ codes, ×8 downsample.

    Both roles share the VQ tokenizer weights, as the published checkpoints do; the language
    models differ (seeds `seed` and `seed + 1`).
    """
    path = Path(path)
    tokenizer = train_tiny_tokenizer(
        {"bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>"},
        {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
         "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"},
        [EOL_TOKEN] + [f"<|visual token {i:06d}|>" for i in range(_TINY_CODES)],
        vocab_size=800,
    )
    image_size = 64
    torch.manual_seed(seed)
    gen_model, gen_processor = _tiny_role(tokenizer, None, 128, image_size)
    torch.manual_seed(seed + 1)
    chat_model, chat_processor = _tiny_role(tokenizer, gen_model.model.vqmodel.state_dict(), 128, image_size)
    for processor in (gen_processor, chat_processor):
        processor.tokenizer.padding_side = "left"
    info = ModelInfo(backbone=Emu3.key, source=str(path))
    roles = {"gen": _RoleSource(str(path)), "chat": _RoleSource(str(path), subfolder=CHAT_SUBFOLDER)}
    backbone = Emu3(roles, info, image_size=image_size, max_new_tokens=32,
                    loaded={"gen": _Role(gen_model, gen_processor), "chat": _Role(chat_model, chat_processor)})
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(path)
    return backbone

