"""The training contract: what a post-training method needs from a backbone.

Methods (`training/sft.py`, `lora.py`, `reca.py`, ...) are written once against `Trainable`; a
backbone family implements it in its adapter. A method needs to:
- find the trained module and freeze named groups of it (`freeze`, over `parameter_groups`);
- turn training examples into tensors (`encode`: one `TokenSet` per objective; interleaved
  examples, sequence plans of text / condition-image / target-image `Part`s, into a `PlanSet`);
- compute the losses the model exposes (`loss`, one objective on one batch);
- blank prompts for classifier-free-guidance dropout (`unconditional_ids`);
- put trained weights back into a loadable backbone (`with_model`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch import nn

IGNORE = -100  # label of tokens that carry no loss


@dataclass(frozen=True)
class Part:
    """One part of an interleaved sequence plan (a conversation of IRG or UniCoT): a text, or an
    image with what the model does with it."""

    type: Literal["text", "image"]
    text: str = ""
    image: Image.Image | None = None
    loss: bool = False  # text: next-token loss on it; image: a generation target (the image loss)
    vae: bool = False  # image condition: its generation-side encoding (clean VAE latents) in the sequence
    vit: bool = False  # image condition: its understanding-encoder view in the sequence


@dataclass(frozen=True)
class Example:
    """One training example before encoding."""

    id: str
    kind: Literal["understanding", "generation", "interleaved"]
    prompt: str  # reconstruction: the instruction that follows the image
    image: Image.Image | None = None  # the input image (understanding) or the target (generation)
    answer: str | None = None  # understanding only
    metadata: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Part, ...] = ()  # interleaved only: the sequence plan, in order


@dataclass
class TokenSet:
    """Encoded examples of one objective; `collate` turns a list of indices into a batch."""

    objective: str
    input_ids: list[torch.Tensor]  # variable-length prompts (understanding: prompt + answer)
    labels: list[torch.Tensor] | None = None  # text objectives only
    pixel_values: torch.Tensor | None = None  # [N, 3, H, W], understanding encoder input
    codes: torch.Tensor | None = None  # [N, num_image_tokens] image-token targets
    latents: torch.Tensor | None = None  # [N, C, h, w] continuous (VAE) image targets, flow-matching backbones
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = [self.input_ids[i] for i in indices]
        length = max(len(x) for x in ids)
        batch_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        if self.labels is not None:
            # right padding: positions count from the first token, as in left-padded inference
            labels = torch.full((len(ids), length), IGNORE, dtype=torch.long)
            for row, i in enumerate(indices):
                n = len(self.input_ids[i])
                batch_ids[row, :n], labels[row, :n], mask[row, :n] = self.input_ids[i], self.labels[i], 1
            batch = {"input_ids": batch_ids, "attention_mask": mask, "labels": labels}
        else:
            # image-target prompts end where the image starts: left padding, as the sampler
            for row, x in enumerate(ids):
                batch_ids[row, length - len(x):], mask[row, length - len(x):] = x, 1
            batch = {"input_ids": batch_ids, "attention_mask": mask}
        if self.codes is not None:
            batch["codes"] = self.codes[indices]
        if self.pixel_values is not None:
            batch["pixel_values"] = self.pixel_values[indices]
        if self.latents is not None:
            batch["latents"] = self.latents[indices]
        return batch


@dataclass(frozen=True)
class EncodedPart:
    """A `Part` as tensors: `text` token ids (with `loss`: learnt), `vit` pixels of an image
    condition, `vae` clean latents of an image condition, `target` latents of a generation target."""

    kind: Literal["text", "vit", "vae", "target"]
    tensor: torch.Tensor
    loss: bool = False


@dataclass
class PlanSet:
    """Encoded interleaved examples of one objective: one plan per example, each its own length and
    number of images, so a batch is the list of its plans (the backbone packs them)."""

    objective: str
    plans: list[list[EncodedPart]]

    def __len__(self) -> int:
        return len(self.plans)

    def collate(self, indices: list[int]) -> dict[str, Any]:
        return {"plans": [self.plans[i] for i in indices]}


Encoded = TokenSet | PlanSet  # what `Trainable.encode` returns


class Trainable(ABC):
    """A backbone that post-training methods can train (a mixin beside `Backbone`)."""

    # The losses `loss` computes, by objective name (e.g. understanding, generation, reconstruction).
    objectives: ClassVar[frozenset[str]]
    # Groups every method keeps frozen: the encoder of the generation targets (VQ model, VAE), since
    # moving it would move the targets.
    frozen_groups: ClassVar[tuple[str, ...]]
    # Whether loading a saved model applies peft adapter files saved beside its weights (LoRA kept unmerged).
    loads_adapters: ClassVar[bool] = False
    model: nn.Module  # the module whose parameters train

    @property
    @abstractmethod
    def native_image_size(self) -> int:
        """The side in pixels of the images the model reads and draws."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        """Named groups of submodules a method may freeze (e.g. vision_encoder, image_tokenizer)."""

    @abstractmethod
    def encode(self, examples: list[Example], objective: str) -> Encoded:
        """`examples` as tensors for `objective` (a `PlanSet` for `interleaved`)."""

    @abstractmethod
    def loss(self, model: nn.Module, objective: str, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar loss of `objective` on `batch`, computed with `model` (this backbone's model, or
        a wrapper of it such as a peft model)."""

    @abstractmethod
    def unconditional_ids(self, input_ids: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """`input_ids` with the rows in `drop` turned into the unconditional prompt the sampler's
        classifier-free guidance uses."""

    @abstractmethod
    def with_model(self, model: nn.Module) -> Trainable:
        """A backbone like this one (processor, info) running `model`: how trained weights are exported."""

    def freeze(self, *groups: str) -> None:
        """Stop gradients through the named groups and put them in eval mode."""
        known = self.parameter_groups()
        for group in groups:
            if group not in known:
                raise ValueError(f"{type(self).__name__} has no parameter group '{group}' (it has: {', '.join(known)})")
            for module in known[group]:
                module.requires_grad_(False)
                module.eval()
