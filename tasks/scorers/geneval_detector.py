"""GenEval's detector on transformers: Mask2Former instance segmentation + CLIP colour classification.

The official evaluator (djghosh13/geneval, `evaluation/evaluate_images.py`) runs mmdetection's
Mask2Former Swin-S (COCO instance segmentation, `mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`)
and open_clip's ViT-L-14 (`pretrained="openai"`). mmdetection is not available here, so this
module drives transformers' `Mask2FormerForUniversalSegmentation` and `CLIPModel` and redoes
around them what mmdetection and the evaluator do:

- detector input (mmdetection's test pipeline): the image resized with its aspect ratio kept to
  fit 1333×800 (bilinear, rounded back to 8-bit), normalised with the ImageNet mean/std in
  0–255 units, zero-padded at the bottom/right to a multiple of 32;
- post-processing (mmdetection's `instance_postprocess`): mask logits upsampled to the padded
  input, cropped to the resized image, resized to the original size; class scores softmaxed
  without the "no object" column; the top 100 (query, class) pairs over the whole image; each
  score multiplied by the mean sigmoid probability inside its binary mask (logit > 0); the box
  of each mask is the tight box around its pixels with the far edges exclusive
  (x1 = last column + 1), an empty mask giving (0, 0, 0, 0);
- class names come from GenEval's `object_names.txt` by COCO index (the model's own label
  names differ: "mouse" vs "computer mouse"), so the model must have exactly 80 labels;
- colour (the evaluator's `color_classification`): each judged object is pasted through its
  mask onto a grey (#999999) canvas, cropped to its box (PIL rounds the box to whole pixels),
  preprocessed as open_clip does for OpenAI ViT-L/14 (bicubic resize of the short side to 224,
  centre crop, OpenAI mean/std), and classified zero-shot over GenEval's ten colours with a
  per-class text classifier: for each colour, the normalised mean of the normalised embeddings
  of three templates ("a photo of a {c} {object}", "a photo of a {c}-colored {object}",
  "a photo of a {c} object"), as clip_benchmark builds it.

Thresholds, the per-class ordering, counting, positions and the verdict are GenEval's clause
logic in `tasks/scorers/geneval_rules.py`; this module only turns pixels into detections and
colours. Default checkpoints: `facebook/mask2former-swin-small-coco-instance` (Mask2Former
Swin-S, COCO instance segmentation: the same architecture and training data as the official
checkpoint, trained by the Mask2Former authors rather than by mmdetection, so scores differ a
little) and `openai/clip-vit-large-patch14` (the same OpenAI weights open_clip loads). The
`scorer_id` names both (with revisions) so results of different scorers are never mixed.
Models load lazily on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.scorers.geneval_rules import Detection, Settings, Verdict, evaluate, select_detections

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object")
CROP_BACKGROUND = (153, 153, 153)  # the evaluator's default bgcolor "#999"

DETECTOR_SCALE = (1333, 800)
SIZE_DIVISOR = 32
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MAX_PER_IMAGE = 100

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- detector input and output ------------------------------------------------------------


def rescale_size(width: int, height: int, scale: tuple[int, int] = DETECTOR_SCALE) -> tuple[int, int]:
    """(width, height) after a keep-ratio resize into `scale`, rounded as mmcv's `rescale_size` does."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(width, height), short_edge / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def detector_inputs(image: Image.Image, scale: tuple[int, int] = DETECTOR_SCALE,
                    size_divisor: int = SIZE_DIVISOR) -> tuple[Any, tuple[int, int]]:
    """The normalised, padded (1, 3, H, W) tensor for the detector and the resized (height, width)."""
    import torch
    import torch.nn.functional as F

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    new_w, new_h = rescale_size(rgb.shape[1], rgb.shape[0], scale)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    if (new_h, new_w) != tuple(pixels.shape[-2:]):
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False)
        pixels = pixels.round().clamp(0, 255)  # the resized image is 8-bit again, as cv2 leaves it
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    pixels = (pixels - mean) / std
    pad_h = -new_h % size_divisor
    pad_w = -new_w % size_divisor
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
    return pixels, (new_h, new_w)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) boxes x0, y0, x1, y1 around each (H, W) boolean mask; far edges exclusive; empty → zeros."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        cols = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if cols.size and rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


@dataclass
class RawDetection:
    """One instance from the segmenter: COCO index, score (float32), box and full-size mask."""

    index: int
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray = field(repr=False)


def instance_postprocess(class_logits: Any, mask_logits: Any, padded_hw: tuple[int, int], resized_hw: tuple[int, int],
                         original_hw: tuple[int, int], max_per_image: int = MAX_PER_IMAGE) -> list[RawDetection]:
    """mmdetection's Mask2Former instance post-processing for one image (see the module docstring).

    `class_logits`: (Q, C + 1) with the last column "no object"; `mask_logits`: (Q, h, w).
    """
    import torch
    import torch.nn.functional as F

    class_logits = class_logits.float()
    num_classes = class_logits.shape[1] - 1
    scores = F.softmax(class_logits, dim=-1)[:, :-1].flatten()
    top = min(max_per_image, scores.numel())
    top_scores, top_indices = scores.topk(top, sorted=True)
    labels = top_indices % num_classes
    queries = torch.div(top_indices, num_classes, rounding_mode="floor")
    # Upsample only the masks of queries in the top list (interpolation is per mask, so this is
    # the same as upsampling all of them first, with less memory).
    used, position = torch.unique(queries, return_inverse=True)
    masks = F.interpolate(mask_logits.float()[used][None], size=padded_hw, mode="bilinear", align_corners=False)
    masks = masks[..., : resized_hw[0], : resized_hw[1]]
    masks = F.interpolate(masks, size=original_hw, mode="bilinear", align_corners=False)[0]
    chosen = masks[position]
    binary = chosen > 0
    mask_scores = (chosen.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = (top_scores * mask_scores).float().cpu().numpy()
    binary_np = binary.cpu().numpy()
    boxes = masks_to_boxes(binary_np)
    return [
        RawDetection(index=int(labels[i]), score=float(np.float32(final[i])), box=tuple(float(v) for v in boxes[i]),
                     mask=binary_np[i])
        for i in range(top)
    ]


def masked_crop(image: Image.Image, box: Sequence[float], mask: np.ndarray | None,
                background: tuple[int, int, int] = CROP_BACKGROUND) -> Image.Image:
    """The object pasted through its mask onto a grey canvas, cropped to its box (as the evaluator does)."""
    image = image.convert("RGB")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} does not match the image ({image.height}, {image.width})")
        blank = Image.new("RGB", image.size, background)
        image = Image.composite(image, blank, Image.fromarray(mask))
    return image.crop(tuple(box[:4]))


def clip_pixels(images: Sequence[Image.Image], size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> Any:
    """open_clip's eval transform: bicubic resize of the short side to `size`, centre crop, normalise."""
    import torch

    arrays = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        image = image.resize((max(new_w, 1), max(new_h, 1)), Image.Resampling.BICUBIC)
        left = int(round((image.width - size) / 2.0))
        top = int(round((image.height - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append((array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _features(output: Any) -> Any:
    """A features tensor from `get_*_features` (a tensor, or an output whose pooler holds the projection)."""
    return output if hasattr(output, "norm") else output.pooler_output


def load_object_names(path: Path | None = None) -> list[str]:
    """GenEval's 80 COCO class names in index order (its `object_names.txt`, one per line)."""
    from tasks.geneval import fetch_object_names

    return fetch_object_names(path)


# --- the scorer ---------------------------------------------------------------------------


ColorFn = Callable[[str, Sequence[Detection]], list[str | None]]


class GenEvalDetector:
    """Mask2Former + CLIP, judging an image against GenEval metadata.

    Build it from hub ids with `from_pretrained`, or from model objects (tests pass tiny random
    models). `classnames` are GenEval's 80 names in COCO order.
    """

    def __init__(self, segmenter: Any, clip_model: Any, clip_tokenizer: Any, classnames: Sequence[str], *,
                 scorer_id: str, device: str = "cpu", clip_image_size: int | None = None,
                 scale: tuple[int, int] = DETECTOR_SCALE, max_per_image: int = MAX_PER_IMAGE,
                 clip_batch_size: int = 16):
        num_labels = int(getattr(segmenter.config, "num_labels", len(classnames)))
        if num_labels != len(classnames):
            raise ValueError(f"the segmenter has {num_labels} labels; GenEval's COCO class list has {len(classnames)}")
        self.segmenter = segmenter.eval()
        self.clip = clip_model.eval()
        self.tokenizer = clip_tokenizer
        self.classnames = list(classnames)
        self.scorer_id = scorer_id
        self.device = device
        self.clip_image_size = clip_image_size or int(clip_model.config.vision_config.image_size)
        self.scale = scale
        self.max_per_image = max_per_image
        self.clip_batch_size = clip_batch_size
        self._classifiers: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, detector: str = DEFAULT_DETECTOR, clip: str = DEFAULT_CLIP, *,
                        detector_revision: str | None = None, clip_revision: str | None = None,
                        device: str | None = None, classnames: Sequence[str] | None = None) -> GenEvalDetector:
        import torch
        from transformers import AutoTokenizer, CLIPModel, Mask2FormerForUniversalSegmentation

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        segmenter = Mask2FormerForUniversalSegmentation.from_pretrained(detector, revision=detector_revision,
                                                                        use_safetensors=True)
        clip_model = CLIPModel.from_pretrained(clip, revision=clip_revision, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(clip, revision=clip_revision)
        return cls(segmenter.to(device), clip_model.to(device), tokenizer, classnames or load_object_names(),
                   scorer_id=scorer_id(detector, clip, detector_revision, clip_revision), device=device)

    # detection

    def raw_detections(self, image: Image.Image) -> list[RawDetection]:
        import torch

        pixels, resized = detector_inputs(image, self.scale)
        with torch.inference_mode():
            out = self.segmenter(pixel_values=pixels.to(self.device))
        with torch.inference_mode():  # post-processing stays on the model's device (full-size masks)
            return instance_postprocess(out.class_queries_logits[0], out.masks_queries_logits[0],
                                        tuple(pixels.shape[-2:]), resized, (image.height, image.width),
                                        self.max_per_image)

    def detections(self, image: Image.Image) -> tuple[list[Detection], dict[int, np.ndarray]]:
        """Detections named by GenEval class, and each one's mask keyed by `id(detection)`."""
        found, masks = [], {}
        for raw in self.raw_detections(image):
            det = Detection(label=self.classnames[raw.index], box=raw.box, score=raw.score)
            found.append(det)
            masks[id(det)] = raw.mask
        return found, masks

    # colour

    def _classifier(self, classname: str) -> Any:
        import torch
        import torch.nn.functional as F

        if classname not in self._classifiers:
            weights = []
            with torch.inference_mode():
                for color in COLORS:
                    texts = [t.format(c=color, object=classname) for t in COLOR_TEMPLATES]
                    tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
                    tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
                    emb = F.normalize(_features(self.clip.get_text_features(**tokens)).float(), dim=-1).mean(dim=0)
                    weights.append(emb / emb.norm())
            self._classifiers[classname] = torch.stack(weights, dim=1)  # (dim, colours)
        return self._classifiers[classname]

    def classify_colors(self, image: Image.Image, classname: str, found: Sequence[Detection],
                        masks: dict[int, np.ndarray]) -> list[str]:
        import torch
        import torch.nn.functional as F

        if not found:
            return []
        crops = [masked_crop(image, det.box, masks.get(id(det))) for det in found]
        classifier = self._classifier(classname)
        colors: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.clip_batch_size):
                pixels = clip_pixels(crops[start : start + self.clip_batch_size], self.clip_image_size).to(self.device)
                feats = F.normalize(_features(self.clip.get_image_features(pixel_values=pixels)).float(), dim=-1)
                colors += [COLORS[int(i)] for i in (feats @ classifier).argmax(dim=1)]
        return colors

    # the verdict

    def judge(self, image: Image.Image, metadata: dict[str, Any], *,
              settings: Settings = Settings()) -> tuple[Verdict, dict[str, Any]]:
        """GenEval's verdict for one image, and what was judged (kept detections, colours read)."""
        image = image.convert("RGB")
        detections, masks = self.detections(image)
        objects = select_detections(detections, metadata["tag"], settings)
        colors_read: dict[str, list[str]] = {}

        def color_of(classname: str, found: Sequence[Detection]) -> list[str | None]:
            colors = self.classify_colors(image, classname, found, masks)
            colors_read[classname] = colors
            return list(colors)

        verdict = evaluate(metadata, objects, color_of, settings.position_threshold)
        details = {
            "detections": {label: [[round(v, 2) for v in d.box] + [d.score] for d in dets]
                           for label, dets in objects.items()},
            "colors": colors_read,
        }
        return verdict, details


def scorer_id(detector: str = DEFAULT_DETECTOR, clip: str = DEFAULT_CLIP, detector_revision: str | None = None,
              clip_revision: str | None = None) -> str:
    detector_part = detector + (f"@{detector_revision}" if detector_revision else "")
    clip_part = clip + (f"@{clip_revision}" if clip_revision else "")
    return f"mask2former:{detector_part}+clip:{clip_part}"
