"""Scorer models for the generation benchmarks' tests: tiny random models of the real classes, and
stand-ins (named so) whose outputs are scripted, so scores can be worked out by hand.

- `build_tiny_mask2former`, `build_tiny_clip`, `build_tiny_blip` (`save_tiny_scorers` writes them as
  hub folders): real
  `Mask2FormerForUniversalSegmentation`, `CLIPModel` and `BlipForQuestionAnswering` from small
  configs with random weights (plumbing only; their answers mean nothing). The tiny chat VLM is
  `tasks.judges.tiny.build_tiny_vision_judge`.
- `SceneSegmenterStandIn`: returns Mask2Former-shaped logits for a hand-made scene (each object a
  COCO class index, a class probability and a union of cells of the 1/4-resolution mask grid),
  so the real post-processing (upsampling, top-k, mask score, boxes) produces known detections.
- `ColorCLIPStandIn` + `ColorTokenizerStandIn`: CLIP-shaped; a text embeds as the one-hot of the
  colour word it names, an image as how close its mean non-grey colour is to each GenEval colour,
  so the colour read from a crop is the colour painted inside its mask.
- `ScriptedVQA`: answers (tile, question) from a table keyed by the tile's colour.
- `ScriptedVisionJudge`: replies from a function of the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from tasks.scorers.geneval_detector import CLIP_MEAN, CLIP_STD, COLORS

# --- tiny random models of the real classes ---------------------------------------------------


def build_tiny_mask2former(seed: int = 0, num_labels: int = 80, favour_label: int | None = None) -> Any:
    """A ~0.4 M parameter Mask2Former (Swin backbone); `favour_label` biases every query to that class."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(seed)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, hidden_dim=32, num_queries=8,
                               encoder_layers=1, decoder_layers=2, feature_size=32, mask_feature_size=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2, common_stride=4)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if favour_label is not None:
        with torch.no_grad():
            model.class_predictor.bias[favour_label] += 30.0
    return model


def build_tiny_clip(seed: int = 0) -> tuple[Any, Any]:
    """A tiny `CLIPModel` (32 px images) and a locally trained byte-level tokenizer for it."""
    from transformers import CLIPConfig, CLIPModel

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                      "pad_token": "<|pad|>"})
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )
    return CLIPModel(config).eval(), _EosAppender(tokenizer)


def build_tiny_blip(seed: int = 0) -> tuple[Any, Any]:
    """A tiny `BlipForQuestionAnswering` (32 px images) and its `BlipProcessor` (PIL image processor)."""
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer({"bos_token": "[DEC]", "eos_token": "[SEP]", "pad_token": "[PAD]",
                                      "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"})
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.sep_token_id,
               pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64, **ids),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    return BlipForQuestionAnswering(config).eval(), processor


def save_tiny_scorers(folder: Path) -> dict[str, Path]:
    """The tiny Mask2Former, CLIP and BLIP VQA written as hub folders (weights, config, tokenizer,
    processor), so tasks load them by path exactly as they load hub ids: {"mask2former", "clip", "blip"}."""
    from tokenizers import processors

    folders = {name: folder / name for name in ("mask2former", "clip", "blip")}
    build_tiny_mask2former().save_pretrained(folders["mask2former"])
    clip, framed = build_tiny_clip()
    tokenizer = framed.inner  # saved with CLIP's framing built in: <bos> text <eos>
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)])
    clip.save_pretrained(folders["clip"])
    tokenizer.save_pretrained(folders["clip"])
    blip, processor = build_tiny_blip()
    blip.save_pretrained(folders["blip"])
    processor.save_pretrained(folders["blip"])
    return folders


class _EosAppender:
    """The tiny tokenizer with CLIP's framing: <bos> text <eos> (CLIP pools at the eos token)."""

    def __init__(self, tokenizer: Any):
        self.inner = tokenizer

    def __call__(self, texts: Sequence[str], padding: bool = True, return_tensors: str = "pt") -> dict[str, Any]:
        framed = [f"{self.inner.bos_token}{t}{self.inner.eos_token}" for t in texts]
        return self.inner(framed, padding=padding, return_tensors=return_tensors, add_special_tokens=False)


# --- GenEval stand-ins -------------------------------------------------------------------------

GRID = 32  # the stand-in's mask grid: images of 128 px (scale 128) give 32×32 logits at stride 4


class SceneSegmenterStandIn(torch.nn.Module):
    """Mask2Former-shaped output for a scripted scene.

    `objects`: (COCO index, class probability, cells) where cells is a list of (row0, col0, row1, col1)
    rectangles on the 32×32 grid (exclusive ends); on a 128×128 image, cell (r, c) covers pixels
    [4r, 4r+4) × [4c, 4c+4). Unused queries predict "no object" with an empty mask.
    """

    def __init__(self, objects: Sequence[tuple[int, float, Sequence[tuple[int, int, int, int]]]],
                 num_labels: int = 80, num_queries: int = 8):
        super().__init__()
        self.objects = list(objects)
        self.config = SimpleNamespace(num_labels=num_labels)
        self.num_queries = max(num_queries, len(self.objects))
        self.seen_shapes: list[tuple[int, ...]] = []

    def forward(self, pixel_values: torch.Tensor) -> Any:
        self.seen_shapes.append(tuple(pixel_values.shape))
        h, w = pixel_values.shape[-2] // 4, pixel_values.shape[-1] // 4
        labels = self.config.num_labels
        classes = torch.full((1, self.num_queries, labels + 1), -50.0)
        classes[0, :, labels] = 0.0
        masks = torch.full((1, self.num_queries, h, w), -50.0)
        for q, (index, prob, cells) in enumerate(self.objects):
            classes[0, q, :] = -50.0
            classes[0, q, index] = float(np.log(prob))
            classes[0, q, labels] = float(np.log(max(1.0 - prob, 1e-12)))
            for r0, c0, r1, c1 in cells:
                masks[0, q, r0:r1, c0:c1] = 50.0
        return SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)


COLOR_RGB = {
    "red": (1.0, 0.0, 0.0), "orange": (1.0, 0.5, 0.0), "yellow": (1.0, 1.0, 0.0), "green": (0.0, 0.6, 0.0),
    "blue": (0.0, 0.0, 1.0), "purple": (0.5, 0.0, 0.5), "pink": (1.0, 0.75, 0.8), "brown": (0.6, 0.3, 0.1),
    "black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0),
}


def paint(color: str) -> tuple[int, int, int]:
    return tuple(int(round(255 * v)) for v in COLOR_RGB[color])


class ColorTokenizerStandIn:
    """Encodes a text as the index of the GenEval colour word it contains (one token)."""

    def __call__(self, texts: Sequence[str], padding: bool = True, return_tensors: str = "pt") -> dict[str, Any]:
        ids = []
        for text in texts:
            words = text.replace("-colored", " ").split()
            ids.append([next(COLORS.index(w) for w in words if w in COLORS)])
        ids_t = torch.tensor(ids)
        return {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t)}


class ColorCLIPStandIn(torch.nn.Module):
    """Text → one-hot colour; image → closeness of its mean non-grey colour to each colour."""

    def __init__(self, image_size: int = 32):
        super().__init__()
        self.config = SimpleNamespace(vision_config=SimpleNamespace(image_size=image_size))
        self.crops_seen: list[np.ndarray] = []

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.nn.functional.one_hot(input_ids[:, 0], len(COLORS)).float()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        rgb = (pixel_values * std + mean).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) in [0, 1]
        refs = np.array([COLOR_RGB[c] for c in COLORS])
        feats = []
        for image in rgb:
            self.crops_seen.append(image)
            grey = np.abs(image - 0.6).max(axis=-1) < 0.05
            pixels = image[~grey] if (~grey).any() else image.reshape(-1, 3)
            colour = pixels.mean(axis=0)
            feats.append(3.0 - np.linalg.norm(refs - colour, axis=1))
        return torch.tensor(np.array(feats), dtype=torch.float32)


def scene_image(size: int, regions: Sequence[tuple[str, tuple[int, int, int, int]]],
                background: tuple[int, int, int] = (40, 40, 40)) -> Image.Image:
    """An image with coloured cell rectangles (grid units of size/32 px) on a dark background."""
    image = Image.new("RGB", (size, size), background)
    cell = size // GRID
    for color, (r0, c0, r1, c1) in regions:
        image.paste(paint(color), (c0 * cell, r0 * cell, c1 * cell, r1 * cell))
    return image


# --- DPG-Bench and judge stand-ins ---------------------------------------------------------------


class ScriptedVQA:
    """A scripted VQA stand-in: `table[(tile colour, question)]` → answer ("no" when absent).

    A tile is recognised by its centre pixel's colour, so a test paints each generated image a
    colour and writes down what the "VQA model" says about it.
    """

    id = "scripted-vqa"

    def __init__(self, table: dict[tuple[str, str], str], colors: dict[tuple[int, int, int], str]):
        self.table = table
        self.colors = colors
        self.calls: list[tuple[str, str]] = []

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        answers = []
        for image, question in zip(images, questions):
            color = self.colors.get(image.convert("RGB").getpixel((image.width // 2, image.height // 2)), "?")
            self.calls.append((color, question))
            answers.append(self.table.get((color, question), "no"))
        return answers


class ScriptedVisionJudge:
    """A scripted vision-judge stand-in: `reply(request)` gives each reply; every request is kept."""

    def __init__(self, reply: Callable[[Any], str], id: str = "scripted-vision-judge"):
        self._reply = reply
        self.id = id
        self.requests: list[Any] = []

    def chat(self, requests: Sequence[Any], max_tokens: int, temperature: float = 0.0) -> list[str]:
        self.requests.extend(requests)
        return [self._reply(request) for request in requests]
