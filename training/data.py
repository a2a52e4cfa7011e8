"""Training data: benchmark samples → examples → token/VQ-code tensors → micro-batches.

- understanding samples (prompt + image → one-word answer) become text-loss examples whose
  labels cover only the answer tokens (and the end-of-sentence token after them);
- generation samples (prompt → a correctly drawn reference image) become the reference image's
  image-token targets (for Janus: its VQ codes);
- reconstruction examples (method `reca`) are the understanding images alone: no captions; or
  the rows of a parquet file of images (`data.benchmark: images`, checked row by row), each with a
  "describe everything" instruction (`training.reca.describe_prompt`);
- interleaved examples (methods `irg`, `unicot`) are conversations read by `training.interleaved`,
  one `TokenSet`-like `PlanSet` per data subset (IRG learning mode, UniCoT task).

How an example becomes tensors is the backbone's (`Trainable.encode`, `umm_harness.core.training`).

The order in which examples are drawn is a pure function of (seed, objective, step), so a run
resumed from a checkpoint at step s draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from training import interleaved
from training.parquet import read_rows
from training.reca import describe_prompt
from training.recipe import IRG_OPTIONAL_MODES, TrainRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.core.seeding import sample_seed
from umm_harness.core.training import Encoded, Example, Trainable


def load_examples(recipe: TrainRecipe, image_size: int) -> list[Example]:
    """The recipe's training data as examples (generation targets drawn at `image_size` px); only the
    kinds of samples its objectives use are built (images cost time)."""
    from tasks import shapes  # the built-in synthetic benchmark

    data = recipe.data
    if data.benchmark == "images":
        return load_images(data.path)
    if data.benchmark == "interleaved":
        weights = recipe.subset_weights()
        optional = IRG_OPTIONAL_MODES if recipe.method == "irg" else frozenset(weights)
        return interleaved.load_subsets(data.path, [name for name, w in weights.items() if w > 0], optional)
    wanted = set(recipe.active_objectives())
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


def _image_bytes(value) -> bytes:
    if isinstance(value, dict) and "bytes" in value:  # the hub's Image feature in parquet
        value = value["bytes"]
    if isinstance(value, str):
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"expected base64 text or bytes, got {type(value).__name__}")


def load_images(path: Path) -> list[Example]:
    """The rows of a parquet file of images as reconstruction examples; a bad row is a `ConfigError`
    naming the row and the field, before anything trains."""
    if not path.is_file():
        raise ConfigError(f"data.path '{path}' does not exist (a parquet file with an 'image' column)")
    examples = []
    for index, row in enumerate(read_rows(path, "image")):
        try:
            image = Image.open(io.BytesIO(_image_bytes(row["image"])))
            image.load()
        except Exception as exc:
            raise ConfigError(f"data.path '{path}': row {index}: field 'image': not an image ({exc})") from None
        example_id = str(row["id"]) if "id" in row and row["id"] is not None else f"image-{index}"
        examples.append(Example(example_id, "understanding", "", image.convert("RGB")))
    if not examples:
        raise ConfigError(f"data.path '{path}' has no rows")
    return examples


# -- dataset identity ----------------------------------------------------------------------


def _image_sha(image: Image.Image | None) -> str:
    if image is None:
        return ""
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()


def dataset_frame(examples: list[Example]) -> pd.DataFrame:
    """One row per example, images by content hash: what MLflow records as the dataset input
    (interleaved examples add their plans, `parts`)."""
    rows = []
    for e in examples:
        row = {"id": e.id, "kind": e.kind, "prompt": e.prompt, "answer": e.answer or "",
               "image_sha256": _image_sha(e.image), "metadata": json.dumps(e.metadata, sort_keys=True, default=str)}
        if e.kind == "interleaved":
            row["parts"] = interleaved.describe_parts(e.parts, _image_sha)
        rows.append(row)
    return pd.DataFrame(rows)


def dataset_digest(frame: pd.DataFrame) -> str:
    """sha256 over every row (ids, prompts, answers, image hashes, metadata) in order."""
    digest = hashlib.sha256()
    for row in frame.itertuples(index=False):
        digest.update(json.dumps(list(row), default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# -- tensors -------------------------------------------------------------------------------


def encode(backbone: Trainable, examples: list[Example], recipe: TrainRecipe) -> dict[str, Encoded]:
    """One encoded set per loss term (`TrainRecipe.loss_terms`): an objective's examples, or an
    interleaved data subset's. Reconstruction reads the understanding images, each with its
    instruction (`reca.prompt`, or a "describe everything" template)."""
    sets: dict[str, Encoded] = {}
    for name, (objective, _) in recipe.loss_terms().items():
        if objective == "interleaved":
            source = [e for e in examples if e.metadata.get("subset") == name]
        elif objective == "generation":
            source = [e for e in examples if e.kind == "generation"]
        else:
            source = [e for e in examples if e.kind == "understanding"]
        if objective == "reconstruction":
            source = [replace(e, prompt=recipe.reca.prompt or describe_prompt(recipe.seed, e.id)) for e in source]
        if not source:
            if objective == "interleaved":  # an optional subset the data do not have
                continue
            raise ValueError(f"objective '{objective}' has no examples in the training data")
        sets[name] = backbone.encode(source, objective)
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
