"""Training data: benchmark samples → examples → token/VQ-code tensors → micro-batches.

- understanding samples (prompt + image → one-word answer) become text-loss examples whose
  labels cover only the answer tokens (and the end-of-sentence token after them);
- generation samples (prompt → a correctly drawn reference image) become the reference image's
  VQ codes, computed once with the model's frozen VQ encoder (`model.model.vqmodel.encode`);
- reconstruction examples (method `reca`) are the understanding images alone: no captions.

The order in which examples are drawn is a pure function of (seed, objective, step), so a run
resumed from a checkpoint at step s draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from training.recipe import DataSettings
from umm_harness.core.seeding import sample_seed

IGNORE = -100  # label of tokens that carry no loss


@dataclass(frozen=True)
class Example:
    id: str
    kind: Literal["understanding", "generation"]
    prompt: str
    image: Image.Image | None = None  # the input image (understanding) or the target (generation)
    answer: str | None = None  # understanding only
    metadata: dict[str, Any] = field(default_factory=dict)


def load_examples(data: DataSettings, image_size: int, objectives: list[str] | None = None) -> list[Example]:
    """The benchmark split as training examples (generation targets drawn at `image_size` px).

    With `objectives`, only the kinds of samples they use are built (images cost time).
    """
    from tasks import shapes  # the built-in synthetic benchmark

    wanted = set(objectives or ["understanding", "generation"])
    task = shapes.ShapesTask(
        split=data.split, seed=data.seed,
        num_understanding=data.num_understanding if wanted & {"understanding", "reconstruction"} else 0,
        num_generation=data.num_generation if "generation" in wanted else 0,
    )
    examples = []
    for sample in task.samples():
        request = sample.request
        if request is None:
            continue
        if request.task == "understanding":
            examples.append(Example(sample.id, "understanding", request.prompt or "", request.images[0],
                                    str(sample.references["answer"])))
        elif request.task == "generation":
            # the same layout seed as `tasks.shapes.generation_examples`
            target = shapes.render_reference(sample.references, image_size, sample_seed(data.seed, sample.id))
            examples.append(Example(sample.id, "generation", request.prompt or "", target,
                                    metadata=dict(sample.references)))
    return examples


# -- dataset identity ----------------------------------------------------------------------


def _image_sha(image: Image.Image | None) -> str:
    if image is None:
        return ""
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()


def dataset_frame(examples: list[Example]) -> pd.DataFrame:
    """One row per example, images by content hash: what MLflow records as the dataset input."""
    return pd.DataFrame([
        {"id": e.id, "kind": e.kind, "prompt": e.prompt, "answer": e.answer or "",
         "image_sha256": _image_sha(e.image), "metadata": json.dumps(e.metadata, sort_keys=True, default=str)}
        for e in examples
    ])


def dataset_digest(frame: pd.DataFrame) -> str:
    """sha256 over every row (ids, prompts, answers, image hashes, metadata) in order."""
    digest = hashlib.sha256()
    for row in frame.itertuples(index=False):
        digest.update(json.dumps(list(row), default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# -- tensors -------------------------------------------------------------------------------


@dataclass
class TokenSet:
    """Encoded examples of one objective; `collate` turns a list of indices into a batch."""

    objective: str
    input_ids: list[torch.Tensor]  # variable-length prompts (understanding: prompt + answer)
    labels: list[torch.Tensor] | None = None  # understanding only
    pixel_values: torch.Tensor | None = None  # [N, 3, H, W], understanding encoder input
    codes: torch.Tensor | None = None  # [N, num_image_tokens] VQ codes of the target images
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = [self.input_ids[i] for i in indices]
        if self.objective == "understanding":
            # right padding: positions count from the first token, as in left-padded inference
            length = max(len(x) for x in ids)
            batch_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
            labels = torch.full((len(ids), length), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(ids), length), dtype=torch.long)
            for row, i in enumerate(indices):
                n = len(self.input_ids[i])
                batch_ids[row, :n], labels[row, :n], mask[row, :n] = self.input_ids[i], self.labels[i], 1
            return {"input_ids": batch_ids, "attention_mask": mask, "labels": labels,
                    "pixel_values": self.pixel_values[indices]}
        # generation / reconstruction prompts end in <begin_of_image>: left padding, as the sampler
        length = max(len(x) for x in ids)
        batch_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, x in enumerate(ids):
            batch_ids[row, length - len(x):], mask[row, length - len(x):] = x, 1
        batch = {"input_ids": batch_ids, "attention_mask": mask, "codes": self.codes[indices]}
        if self.pixel_values is not None:
            batch["pixel_values"] = self.pixel_values[indices]
        return batch


def _vq_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images → [-1, 1] tensors at the VQ model's resolution (the range `decode` returns)."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
              for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def vq_codes(model, images: list[Image.Image], size: int, batch_size: int = 64) -> torch.Tensor:
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


def _pixel_values(backbone, images: list[Image.Image]) -> torch.Tensor:
    return backbone.processor.image_processor(images, return_tensors="pt")["pixel_values"]


def encode_understanding(backbone, examples: list[Example]) -> TokenSet:
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


def encode_generation(backbone, examples: list[Example]) -> TokenSet:
    tokenizer = backbone.processor.tokenizer
    ids = [backbone.processor(text=[backbone._chat_prompt(e.prompt, 0)], generation_mode="image",
                              return_tensors="pt")["input_ids"][0] for e in examples]
    codes = vq_codes(backbone.model, [e.image for e in examples], backbone.native_image_size)
    return TokenSet("generation", ids, codes=codes, pad_id=tokenizer.pad_token_id)


def encode_reconstruction(backbone, examples: list[Example], prompt: str) -> TokenSet:
    """Understanding images → (prompt with the image's understanding tokens, the image's VQ codes)."""
    tokenizer = backbone.processor.tokenizer
    images = [e.image for e in examples]
    template = backbone.processor(text=[backbone._chat_prompt(prompt, 1)], images=images[:1],
                                  generation_mode="image", return_tensors="pt")["input_ids"][0]
    codes = vq_codes(backbone.model, images, backbone.native_image_size)
    return TokenSet("reconstruction", [template] * len(images), pixel_values=_pixel_values(backbone, images),
                    codes=codes, pad_id=tokenizer.pad_token_id)


def encode(backbone, examples: list[Example], objectives: list[str], reca_prompt: str) -> dict[str, TokenSet]:
    """One `TokenSet` per active objective."""
    understanding = [e for e in examples if e.kind == "understanding"]
    generation = [e for e in examples if e.kind == "generation"]
    sets: dict[str, TokenSet] = {}
    for objective in objectives:
        if objective == "understanding":
            sets[objective] = encode_understanding(backbone, understanding)
        elif objective == "generation":
            sets[objective] = encode_generation(backbone, generation)
        elif objective == "reconstruction":
            sets[objective] = encode_reconstruction(backbone, understanding, reca_prompt)
        if len(sets[objective]) == 0:
            raise ValueError(f"objective '{objective}' has no examples in the training data")
    return sets


# -- order ---------------------------------------------------------------------------------


class StepOrder:
    """Which examples a (step, micro-batch, rank) trains on: epochs of seeded permutations.

    Global batch `s` is positions [s·B, (s+1)·B) of an endless stream of permutations; rank r's
    micro-batch m is the slice at (m·world + r)·micro. One process with 2 micro-batches sees the
    same examples per step as two processes with one each.
    """

    def __init__(self, size: int, batch_size: int, micro_batch_size: int, world_size: int, seed: int, name: str):
        self.size, self.batch_size, self.micro = size, batch_size, micro_batch_size
        self.world = world_size
        self.seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")
        self._perms: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 1:
                self._perms.clear()
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.size, generator=generator).tolist()
        return self._perms[epoch]

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        start = step * self.batch_size + (micro * self.world + rank) * self.micro
        out = []
        for position in range(start, start + self.micro):
            epoch, offset = divmod(position, self.size)
            out.append(self._permutation(epoch)[offset])
        return out
