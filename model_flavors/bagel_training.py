"""BAGEL's side of the training contract (`umm_harness.core.training`): groups, encoding, losses.

BAGEL trains on *packed sequences*: each example is a plan of parts, and every part is a split
of the sequence with its own attention rule (upstream `train/pretrain_unified_navit.py` and
`data/dataset_base.py`, read and re-written here, not copied):
- text: `<bos>` + tokens + `<eos>`, causal; next-token cross-entropy where it carries labels;
- a ViT condition: `<start_of_image>` + SigLIP patch tokens + `<end_of_image>`, full attention
  within the image, one RoPE position for all of it;
- a VAE image: `<start_of_image>` + latent patch tokens + `<end_of_image>`. As a generation
  target it is noised (flow matching: timestep `sigmoid(randn)`, shifted; the model predicts
  the velocity noise − clean, MSE) and no other split may attend to it ("noise" mode).

Objectives and their plans:
- `understanding`: ViT image, prompt text, answer text (CE on the answer and its `<eos>`);
- `generation`: prompt text (dropped for classifier-free guidance), noised VAE image (MSE);
- `reconstruction` (RecA): ViT view of the image, its "describe everything" instruction, the same
  image as the noised VAE target (MSE);
- `interleaved` (IRG, UniCoT): a conversation's own plan of parts (`Part`): texts (CE where they
  are learnt), image conditions (ViT view and/or clean VAE latents, "full" attention) and image
  targets (noised, MSE), as upstream's interleaved datasets plan them; the loss is CE + MSE
  (upstream's `ce_weight` = `mse_weight` = 1), each a mean over its tokens in the batch.
Losses are per-token means, as upstream (`ce` and `mse`, each weighted by the recipe).

The VAE is always frozen: generation targets are its latents, computed once at encoding (like
Janus' VQ codes). Encoding keeps examples as padded tensors (`TokenSet`), so batching, resume
and CFG dropout stay the harness's; `loss` packs a batch into BAGEL's sequence and calls
upstream's own training `forward`, in the weights' dtype (bf16 on GPU, as upstream; fp32 on CPU,
with `_matching_attention`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from umm_harness.core.errors import ConfigError
from umm_harness.core.training import IGNORE, EncodedPart, Example, PlanSet, TokenSet, Trainable

DROPPED = -1  # input id of a prompt dropped for classifier-free guidance (`unconditional_ids`)

# Modules of BAGEL (outside the language model's layers) that belong to each expert.
_GENERATION_MODULES = ("vae2llm", "llm2vae", "time_embedder", "latent_pos_embed")
_VISION_MODULES = ("vit_model", "connector", "vit_pos_embed")


def bagel_model(model: nn.Module) -> nn.Module:
    """The BAGEL module inside a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _leaves_with_parameters(module: nn.Module, keep) -> list[nn.Module]:
    return [sub for name, sub in module.named_modules()
            if any(True for _ in sub.parameters(recurse=False)) and keep(name)]


def _patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) → (H/p · W/p, p·p·C) row-major patches, the layout BAGEL's ViT and latents use."""
    channels, height, width = image.shape
    grid = image.reshape(channels, height // patch, patch, width // patch, patch)
    return torch.einsum("chpwq->hwpqc", grid).reshape(-1, patch * patch * channels)


# -- the packed sequence ------------------------------------------------------------------------


class _Packed:
    """BAGEL's training `forward` inputs, filled split by split.

    Its lists (`_LISTS`) are, in sequence order: the text-side tokens (`text_ids`, at `text_at`; image
    markers included), RoPE `positions` of every token, cross-entropy places `ce_at` and their
    `labels`; ViT patches (`vit_tokens`, at `vit_at`, with `vit_positions`, `vit_lens` per image);
    VAE latents (`latents`, `latent_shapes`, `latent_positions`, at `vae_at`, with `timesteps`,
    flow-matching places `mse_at`); and per sample its length and attention mask.
    """

    _LISTS = ("text_ids", "text_at", "positions", "ce_at", "labels", "vit_tokens", "vit_at", "vit_positions",
              "vit_lens", "latents", "latent_shapes", "latent_positions", "vae_at", "timesteps", "mse_at",
              "sample_lens", "masks")

    def __init__(self, ids: dict[str, int]):
        self.ids = ids
        self.length = 0
        for name in self._LISTS:
            setattr(self, name, [])
        self.begin()

    def begin(self) -> None:
        self._splits, self._modes, self._start, self._rope = [], [], self.length, 0

    def _token(self, token: int) -> None:
        self.text_ids.append(token)
        self.text_at.append(self.length)
        self.length += 1

    def text(self, tokens: list[int], labels: list[int] | None = None) -> None:
        """`<bos>` tokens `<eos>`; with `labels` (aligned with tokens, IGNORE = none) position j learns
        token j+1 of the split."""
        split = [self.ids["bos_token_id"], *tokens, self.ids["eos_token_id"]]
        targets = [IGNORE, *(labels if labels is not None else [IGNORE] * len(tokens)),
                   self.ids["eos_token_id"] if labels is not None else IGNORE]
        start = self.length
        for token in split:
            self._token(token)
        for j in range(len(split) - 1):
            if targets[j + 1] != IGNORE:
                self.ce_at.append(start + j)
                self.labels.append(targets[j + 1])
        self.positions.extend(range(self._rope, self._rope + len(split)))
        self._rope += len(split)
        self._close(len(split), "causal")

    def vit_image(self, patches: torch.Tensor, patch_positions: torch.Tensor) -> None:
        self._token(self.ids["start_of_image"])
        self.vit_at.extend(range(self.length, self.length + len(patches)))
        self.length += len(patches)
        self.vit_tokens.append(patches)
        self.vit_positions.append(patch_positions)
        self.vit_lens.append(len(patches))
        self._token(self.ids["end_of_image"])
        self.positions.extend([self._rope] * (len(patches) + 2))
        self._rope += 1
        self._close(len(patches) + 2, "full")

    def vae_image(self, latent: torch.Tensor, shape: tuple[int, int], latent_positions: torch.Tensor, *,
                  target: bool) -> None:
        """A latent image. A `target` is noised and learnt (flow-matching loss; its timestep one normal
        draw, as upstream), seen by nothing after it, and does not move RoPE on; a condition is clean
        (timestep -inf: sigmoid 0) and visible to what follows, like a ViT image."""
        count = shape[0] * shape[1]
        self._token(self.ids["start_of_image"])
        self.vae_at.extend(range(self.length, self.length + count))
        if target:
            self.mse_at.extend(range(self.length, self.length + count))
        self.timesteps.extend([torch.randn(()).item() if target else float("-inf")] * count)
        self.length += count
        self.latents.append(latent)
        self.latent_shapes.append(shape)
        self.latent_positions.append(latent_positions)
        self._token(self.ids["end_of_image"])
        self.positions.extend([self._rope] * (count + 2))
        if not target:
            self._rope += 1
        self._close(count + 2, "noise" if target else "full")

    def _close(self, length: int, mode: str) -> None:
        self._splits.append(length)
        self._modes.append(mode)

    def end(self) -> None:
        self.sample_lens.append(self.length - self._start)
        self.masks.append(attention_mask(self._splits, self._modes))

    def forward_inputs(self, device: torch.device) -> dict[str, Any]:
        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        inputs: dict[str, Any] = dict(
            sequence_length=self.length, packed_text_ids=ints(self.text_ids), packed_text_indexes=ints(self.text_at),
            sample_lens=self.sample_lens, packed_position_ids=ints(self.positions),
            nested_attention_masks=[mask.to(device) for mask in self.masks],
            packed_vae_token_indexes=ints(self.vae_at),
        )
        if self.ce_at:
            inputs.update(ce_loss_indexes=ints(self.ce_at), packed_label_ids=ints(self.labels))
        if self.vit_tokens:
            inputs.update(packed_vit_tokens=torch.cat(self.vit_tokens).to(device), packed_vit_token_indexes=ints(self.vit_at),
                          packed_vit_position_ids=torch.cat(self.vit_positions).to(device),
                          vit_token_seqlens=torch.tensor(self.vit_lens, dtype=torch.int, device=device))
        if self.latents:
            inputs.update(padded_latent=self.latents, patchified_vae_latent_shapes=self.latent_shapes,
                          packed_latent_position_ids=torch.cat(self.latent_positions).to(device),
                          packed_timesteps=torch.tensor(self.timesteps, device=device), mse_loss_indexes=ints(self.mse_at))
        return inputs


def attention_mask(split_lens: list[int], modes: list[str]) -> torch.Tensor:
    """One sample's additive mask (0 = attend, -inf = not): every split sees the splits before it;
    causal splits see themselves causally, full and noise splits entirely; nothing outside a noise
    split sees into it (a noised target must not leak into what follows)."""
    total = sum(split_lens)
    allowed = torch.zeros((total, total), dtype=torch.bool)
    start = 0
    for length, mode in zip(split_lens, modes):
        end = start + length
        allowed[start:end, :start] = True
        block = torch.ones((length, length), dtype=torch.bool)
        allowed[start:end, start:end] = block.tril() if mode == "causal" else block
        start = end
    start = 0
    for length, mode in zip(split_lens, modes):
        end = start + length
        if mode == "noise":
            allowed[:, start:end] = False
            allowed[start:end, start:end] = True
        start = end
    return torch.zeros((total, total)).masked_fill(~allowed, float("-inf"))


def _attention_in(dtype: torch.dtype):
    """Upstream's per-sample attention casts q, k, v to bf16 and asks for the fused "efficient"
    SDPA kernel: right for its bf16 GPU training, but on fp32 weights (CPU) the bf16 output meets
    fp32 projections, and CPUs have no such kernel. This attention returns `dtype` and lets torch
    pick a kernel; installed in upstream's module only for the duration of a loss (`_matching_attention`,
    which also returns SigLIP's bf16 varlen attention output in `dtype`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def attend(query, key, value, mask=None, **kwargs):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return F.scaled_dot_product_attention(query.to(dtype), key.to(dtype), value.to(dtype),
                                                  None if mask is None else mask.to(dtype), **kwargs)

    return attend


@contextlib.contextmanager
def _matching_attention(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.bfloat16:
        yield
        return
    language = sys.modules[type(model.language_model.model.layers[0].self_attn).__module__]
    vision = sys.modules[type(model.vit_model).__module__]
    saved = language.scaled_dot_product_attention, vision.flash_attn_varlen_func
    varlen = saved[1]
    language.scaled_dot_product_attention = _attention_in(dtype)
    vision.flash_attn_varlen_func = lambda *args, **kwargs: varlen(*args, **kwargs).to(dtype)
    try:
        yield
    finally:
        language.scaled_dot_product_attention, vision.flash_attn_varlen_func = saved


@contextlib.contextmanager
def _branches(model: nn.Module, understanding: bool, generation: bool) -> Iterator[None]:
    """Upstream runs the ViT branch and the VAE branch when its config says the run trains them; a
    batch of one objective may hold only one kind of image: switch the other branch off for it."""
    config = model.config
    saved = config.visual_und, config.visual_gen
    config.visual_und, config.visual_gen = understanding, generation
    try:
        yield
    finally:
        config.visual_und, config.visual_gen = saved


# -- the mixin ----------------------------------------------------------------------------------


class BagelTraining(Trainable):
    """The training contract for `model_flavors.bagel.Bagel` (route `upstream` only)."""

    objectives: ClassVar[frozenset[str]] = frozenset({"understanding", "generation", "reconstruction", "interleaved"})
    frozen_groups: ClassVar[tuple[str, ...]] = ("vae",)  # generation targets are its latents
    loads_adapters: ClassVar[bool] = True  # `model_flavors.bagel.with_adapters` at load

    def _inferencer(self) -> Any:
        inferencer = getattr(self.engine, "inferencer", None)
        if inferencer is None:
            raise ConfigError("bagel served by vllm-omni cannot be post-trained: load a BAGEL checkpoint through "
                              "the upstream route (a checkpoint folder and the upstream checkout)")
        return inferencer

    @property
    def model(self) -> nn.Module:
        return self._inferencer().model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._inferencer().model = value

    @property
    def native_image_size(self) -> int:
        return self.image_size

    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        """Mixture-of-transformers experts: the generation expert is every `*_moe_gen` module of the
        language model plus the latent in/out projections, timestep and latent position embeddings;
        the understanding expert is the rest of the language model (embeddings and LM head included)."""
        bagel = bagel_model(self.model)
        lm = bagel.language_model
        return {
            "understanding_expert": _leaves_with_parameters(lm, lambda name: "moe_gen" not in name),
            "generation_expert": (_leaves_with_parameters(lm, lambda name: "moe_gen" in name)
                                  + [getattr(bagel, name) for name in _GENERATION_MODULES]),
            "vision_encoder": [getattr(bagel, name) for name in _VISION_MODULES],
            "vae": [self._inferencer().vae_model],
        }

    def freeze(self, *groups: str) -> None:
        super().freeze(*groups)
        for module in self.parameter_groups()["vision_encoder"]:  # position tables upstream never trains
            if isinstance(getattr(module, "pos_embed", None), nn.Parameter):
                module.pos_embed.requires_grad_(False)
        bagel = bagel_model(self.model)
        bagel.latent_pos_embed.pos_embed.requires_grad_(False)

    # -- encoding ---------------------------------------------------------------------------

    def _text_ids(self, text: str) -> list[int]:
        return self._inferencer().tokenizer.encode(text)

    def _vit_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        transform = self._inferencer().vit_transform
        return torch.stack([transform(image.convert("RGB")) for image in images])

    @torch.no_grad()
    def _latents(self, images: list[Image.Image]) -> torch.Tensor:
        """The frozen VAE's latents of the images at the generation size, [N, C, h, w]; the VAE
        samples its posterior, here from a fixed seed so that encoding is reproducible."""
        inferencer = self._inferencer()
        vae = inferencer.vae_model
        size = self.native_image_size
        pixels = torch.stack([inferencer.vae_transform(image.convert("RGB").resize((size, size)))
                              for image in images])
        parameter = next(vae.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torch.cat([vae.encode(chunk.to(parameter.device, parameter.dtype)).float().cpu()
                              for chunk in pixels.split(16)])

    def encode(self, examples: list[Example], objective: str) -> TokenSet | PlanSet:
        pad = self._inferencer().new_token_ids["eos_token_id"]
        images = [e.image for e in examples]
        if objective == "understanding":
            ids, labels = [], []
            for e in examples:
                question = self._text_ids(e.prompt)
                answer = self._text_ids(e.answer.strip())
                ids.append(torch.tensor(question + answer, dtype=torch.long))
                labels.append(torch.tensor([IGNORE] * len(question) + answer, dtype=torch.long))
            return TokenSet(objective, ids, labels, pixel_values=self._vit_pixels(images), pad_id=pad)
        if objective == "generation":
            ids = [torch.tensor(self._text_ids(e.prompt), dtype=torch.long) for e in examples]
            return TokenSet(objective, ids, latents=self._latents(images), pad_id=pad)
        if objective == "reconstruction":
            ids = [torch.tensor(self._text_ids(e.prompt), dtype=torch.long) for e in examples]
            return TokenSet(objective, ids, pixel_values=self._vit_pixels(images), latents=self._latents(images),
                            pad_id=pad)
        if objective == "interleaved":
            return PlanSet(objective, [self._plan(e) for e in examples])
        raise ValueError(f"unknown objective '{objective}'")

    def _plan(self, example: Example) -> list[EncodedPart]:
        """A conversation's parts as tensors; an image that is both target and condition is the target,
        then its clean latents, then its ViT view (upstream's order)."""
        plan = []
        for part in example.parts:
            if part.type == "text":
                plan.append(EncodedPart("text", torch.tensor(self._text_ids(part.text), dtype=torch.long), part.loss))
                continue
            latent = self._latents([part.image])[0] if part.loss or part.vae else None
            if part.loss:
                plan.append(EncodedPart("target", latent))
            if part.vae:
                plan.append(EncodedPart("vae", latent))
            if part.vit:
                plan.append(EncodedPart("vit", self._vit_pixels([part.image])[0]))
        return plan

    def unconditional_ids(self, input_ids: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Dropped prompts are marked `DROPPED`: `loss` leaves their text split out, as upstream's
        `text_cond_dropout_prob` does."""
        out = input_ids.clone()
        out[drop] = DROPPED
        return out

    # -- the loss ---------------------------------------------------------------------------

    def loss(self, model: nn.Module, objective: str, batch: dict[str, Any]) -> torch.Tensor:
        bagel = bagel_model(model)
        if objective == "interleaved":
            packed = self._pack_plans(bagel, batch["plans"])
            device = next(bagel.parameters()).device
        else:
            packed = self._pack_rows(bagel, objective, batch)
            device = batch["input_ids"].device
        inputs = packed.forward_inputs(device)
        dtype = bagel.language_model.lm_head.weight.dtype
        with _branches(bagel, bool(packed.vit_tokens), bool(packed.latents)), _matching_attention(bagel, dtype):
            out = model(**inputs)
        terms = []
        if packed.ce_at:
            terms.append(out["ce"].float().mean())
        if packed.mse_at:
            terms.append(out["mse"].float().mean(dim=-1).mean())
        return sum(terms[1:], terms[0])

    def _pack_rows(self, bagel: nn.Module, objective: str, batch: dict[str, torch.Tensor]) -> _Packed:
        """A batch of one objective's padded rows as one packed sequence, a sample per row."""
        packed = _Packed(self._inferencer().new_token_ids)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for row in range(ids.shape[0]):
            real = mask[row].bool()
            tokens = ids[row][real].tolist()
            packed.begin()
            if "pixel_values" in batch:
                self._add_vit(packed, bagel, batch["pixel_values"][row])
            if objective == "understanding":
                labels = batch["labels"][row][real].tolist()
                first = next(j for j, label in enumerate(labels) if label != IGNORE)
                packed.text(tokens[:first])
                packed.text(tokens[first:], labels[first:])
            elif tokens and tokens[0] != DROPPED:
                packed.text(tokens)
            if "latents" in batch:
                self._add_latent(packed, bagel, batch["latents"][row], target=True)
            packed.end()
        return packed

    def _pack_plans(self, bagel: nn.Module, plans: list[list[EncodedPart]]) -> _Packed:
        """Interleaved conversations as one packed sequence, a sample per conversation."""
        packed = _Packed(self._inferencer().new_token_ids)
        device = next(bagel.parameters()).device
        for plan in plans:
            packed.begin()
            for part in plan:
                if part.kind == "text":
                    tokens = part.tensor.tolist()
                    packed.text(tokens, tokens if part.loss else None)
                elif part.kind == "vit":
                    self._add_vit(packed, bagel, part.tensor.to(device))
                else:
                    self._add_latent(packed, bagel, part.tensor.to(device), target=part.kind == "target")
            packed.end()
        return packed

    @staticmethod
    def _add_vit(packed: _Packed, bagel: nn.Module, pixels: torch.Tensor) -> None:
        patch = bagel.vit_patch_size
        positions = bagel.get_flattened_position_ids(pixels.shape[1], pixels.shape[2], patch,
                                                     max_num_patches_per_side=bagel.vit_max_num_patch_per_side)
        packed.vit_image(_patchify(pixels, patch), positions)

    @staticmethod
    def _add_latent(packed: _Packed, bagel: nn.Module, latent: torch.Tensor, *, target: bool) -> None:
        p = bagel.latent_patch_size
        shape = (latent.shape[1] // p, latent.shape[2] // p)
        positions = bagel.get_flattened_position_ids(latent.shape[1] * bagel.latent_downsample // p,
                                                     latent.shape[2] * bagel.latent_downsample // p,
                                                     bagel.latent_downsample,
                                                     max_num_patches_per_side=bagel.max_latent_size)
        packed.vae_image(latent, shape, positions, target=target)

    def with_model(self, model: nn.Module) -> BagelTraining:
        """This backbone running `model`; it saves as a checkpoint of its own (BAGEL's layout, the
        trained weights as `ema.safetensors`, the rest copied from the base checkpoint)."""
        exported = copy.copy(self)
        exported.engine = copy.copy(self.engine)
        exported.engine.inferencer = copy.copy(self._inferencer())
        exported.engine.inferencer.model = model
        exported.save_pretrained = exported.save_trained
        return exported

    def save_trained(self, path: Path) -> None:
        from safetensors.torch import save_file

        from model_flavors.bagel import REFERENCE_FILE, WEIGHTS_FILE

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        source = Path(self.engine.checkpoint)
        if not source.is_dir():
            raise ConfigError(f"cannot export a trained BAGEL: its base checkpoint '{source}' is not a local folder")
        for file in source.iterdir():
            if file.is_file() and file.name not in (REFERENCE_FILE, WEIGHTS_FILE):
                shutil.copy2(file, path / file.name)
        state = {key: value.detach().contiguous().cpu() for key, value in bagel_model(self.model).state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        reference = {**self.engine.reference(), "checkpoint": ".", "revision": None, "think": self.think}
        (path / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
