"""The built-in `shapes` benchmark: procedural scenes of coloured shapes, understood and generated.

It exists so the whole harness (eval, post-training, comparison) can run offline in seconds
with no download and no learned scorer, while still exercising real benchmark mechanics:

- understanding: an image of 1–4 non-overlapping shapes and a one-word question (`exists`,
  `count`, `color`), scored by exact match of the reply's first word;
- generation: GenEval-style prompts in GenEval's own metadata format, judged by a
  deterministic colour-blob detector and GenEval's clause rules (`tasks.scorers.geneval_rules`),
  with a reference renderer that draws every prompt correctly (the "ideal model", and the
  generation half of the post-training data).

Everything is derived from a seed with private RNGs. Train and test are disjoint by content:
an understanding scene or a generation prompt belongs to exactly one split, decided by a hash
of its canonical text, so no seed can leak test items into training data.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from tasks.base import Output, Sample, Task
from tasks.scorers.geneval_rules import RELATIONS, Detection, judge, summarize
from umm_harness.core.seeding import sample_seed

Split = Literal["train", "test"]

SHAPES = ("circle", "square", "triangle")
# Saturated colours at least ~160 apart in RGB from each other and far from the white background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
}
BACKGROUND = (255, 255, 255)
QTYPES = ("exists", "count", "color")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ANSWER_INSTRUCTION = "Answer with one word."
# GenEval draws 4 images per prompt; 2 keeps the built-in suite fast while still averaging seeds.
IMAGES_PER_PROMPT = 2

# Drawing at 4x and box-downsampling gives anti-aliased edges at any output size.
_SUPERSAMPLE = 4
_BORDER = 0.03  # free margin at the image border, as a fraction of the side
_GAP = 0.05  # minimum gap between bounding boxes, so blur never merges two objects
_UNDERSTANDING_SIZES = (0.2, 0.28)  # object side range; 0.2 of 64 px is still 13 px


# --- scenes and rendering -------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One shape; centre and side are fractions of the image side, so a scene has no resolution."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def bounds(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return self.cx - half, self.cy - half, self.cx + half, self.cy + half


Scene = tuple[ShapeObject, ...]


def render(scene: Sequence[ShapeObject], size: int) -> Image.Image:
    """The scene as a `size`×`size` RGB image on white."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        x0, y0, x1, y1 = (v * big for v in obj.bounds())
        fill = PALETTE[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":  # apex up, as wide as tall: bounding-box fill 0.5
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")
    return image.reduce(_SUPERSAMPLE)


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    reach = (a.size + b.size) / 2 + _GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def place(rng: random.Random, specs: Sequence[tuple[str, str]], sizes: tuple[float, float]) -> Scene:
    """Non-overlapping objects for (shape, colour) specs at random positions and sizes."""
    while True:  # a whole new layout when one object finds no room; rare at these sizes
        scene: list[ShapeObject] = []
        for shape, color in specs:
            for _ in range(100):
                side = round(rng.uniform(*sizes), 3)
                low, high = _BORDER + side / 2, 1 - _BORDER - side / 2
                cx, cy = round(rng.uniform(low, high), 3), round(rng.uniform(low, high), 3)
                obj = ShapeObject(shape, color, cx, cy, side)
                if all(_apart(obj, other) for other in scene):
                    scene.append(obj)
                    break
            else:
                break
        if len(scene) == len(specs):
            return tuple(scene)


# --- the train/test split ---------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def scene_split(scene: Scene) -> Split:
    """The split a scene belongs to, from a hash of its canonical content (half each)."""
    key = json.dumps([[o.shape, o.color, o.cx, o.cy, o.size] for o in scene])
    return "test" if int(_digest(key)[:8], 16) % 2 == 0 else "train"


# --- understanding ----------------------------------------------------------------------------


class Question(NamedTuple):
    qtype: str
    prompt: str
    answer: str
    scene: Scene


def _plural(shape: str) -> str:
    return f"{shape}s"


def _others(rng: random.Random, shape: str, k: int) -> list[tuple[str, str]]:
    """k objects of any shape but `shape`, in random colours."""
    pool = [s for s in SHAPES if s != shape]
    return [(rng.choice(pool), rng.choice(list(PALETTE))) for _ in range(k)]


def _question(rng: random.Random, qtype: str, answer: str) -> Question:
    """A random scene and question whose correct answer is `answer` (answer-first keeps balance)."""
    colors = list(PALETTE)
    if qtype == "exists":
        specs = [(rng.choice(SHAPES), rng.choice(colors)) for _ in range(rng.randint(1, 4))]
        if answer == "yes":
            shape, color = rng.choice(specs)
        else:
            shape, color = rng.choice(sorted({(s, c) for s in SHAPES for c in colors} - set(specs)))
        prompt = f"Is there a {color} {shape}?"
    elif qtype == "count":
        shape, count = rng.choice(SHAPES), int(answer)
        specs = [(shape, rng.choice(colors)) for _ in range(count)]
        specs += _others(rng, shape, rng.randint(max(count, 1), 4) - count)
        rng.shuffle(specs)
        prompt = f"How many {_plural(shape)} are there?"
    elif qtype == "color":
        shape = rng.choice(SHAPES)
        specs = [(shape, answer), *_others(rng, shape, rng.randint(0, 3))]
        rng.shuffle(specs)
        prompt = f"What color is the {shape}?"
    else:
        raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QTYPES)}")
    return Question(qtype, f"{prompt} {ANSWER_INSTRUCTION}", answer, place(rng, specs, _UNDERSTANDING_SIZES))


_ANSWERS: dict[str, tuple[str, ...]] = {
    "exists": ("yes", "no"),
    "count": ("0", "1", "2", "3", "4"),
    "color": tuple(PALETTE),
}


def understanding_questions(split: Split, seed: int, num: int) -> list[Question]:
    """`num` questions of the split: the three types in equal shares, answers balanced per type."""
    rng = random.Random(f"shapes/understanding/{split}/{seed}")
    plan = []
    for index, qtype in enumerate(QTYPES):
        share = num // len(QTYPES) + (index < num % len(QTYPES))
        answers = _ANSWERS[qtype]
        plan += [(qtype, answers[i % len(answers)]) for i in range(share)]
    rng.shuffle(plan)
    questions = []
    for qtype, answer in plan:
        question = _question(rng, qtype, answer)
        while scene_split(question.scene) != split:
            question = _question(rng, qtype, answer)
        questions.append(question)
    return questions


def parse_answer(reply: str | None) -> str:
    """The reply's first word, lower-cased, without punctuation; number words become digits."""
    match = re.search(r"[a-z0-9]+", (reply or "").lower())
    word = match.group() if match else ""
    return str(NUMBER_WORDS.index(word)) if word in NUMBER_WORDS else word


# --- generation prompts -----------------------------------------------------------------------


def _metadata(
    tag: str, include: list[dict[str, Any]], prompt: str, exclude: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """GenEval's key order: tag, include, exclude (counting only), prompt."""
    meta: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    meta["prompt"] = prompt
    return meta


def all_prompts() -> list[dict[str, Any]]:
    """Every GenEval-style prompt over the shapes vocabulary, as GenEval metadata, in fixed order.

    Like GenEval, two-object, position and colour-attribute prompts pair different classes,
    colour-attribute prompts pair different colours, and counting asks for 2–4 objects with an
    exclude clause at count+1.
    """
    prompts = [_metadata("single_object", [{"class": s, "count": 1}], f"a photo of a {s}") for s in SHAPES]
    pairs = list(permutations(SHAPES, 2))
    prompts += [
        _metadata("two_object", [{"class": a, "count": 1}, {"class": b, "count": 1}], f"a photo of a {a} and a {b}")
        for a, b in pairs
    ]
    prompts += [
        _metadata("counting", [{"class": s, "count": n}], f"a photo of {NUMBER_WORDS[n]} {_plural(s)}",
                  exclude=[{"class": s, "count": n + 1}])
        for s in SHAPES for n in (2, 3, 4)
    ]
    prompts += [
        _metadata("colors", [{"class": s, "count": 1, "color": c}], f"a photo of a {c} {s}")
        for c in PALETTE for s in SHAPES
    ]
    prompts += [
        _metadata("position", [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                  f"a photo of a {a} {rel} a {b}")
        for a, b in pairs for rel in RELATIONS
    ]
    prompts += [
        _metadata("color_attr", [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                  f"a photo of a {ca} {a} and a {cb} {b}")
        for a, b in pairs for ca, cb in permutations(PALETTE, 2)
    ]
    return prompts


def split_prompts(split: Split) -> list[dict[str, Any]]:
    """The split's prompts: per tag, the half (test: rounded up) with the smallest prompt hash.

    Ranking within a tag, rather than hashing each prompt into a bucket, guarantees every tag
    has prompts in both splits even though single_object has only three.
    """
    prompts = all_prompts()
    chosen = []
    for tag in TAGS:
        ranked = sorted((m for m in prompts if m["tag"] == tag), key=lambda m: _digest(m["prompt"]))
        cut = math.ceil(len(ranked) / 2)
        chosen += ranked[:cut] if split == "test" else ranked[cut:]
    return chosen


def generation_prompts(split: Split, seed: int, num: int) -> list[dict[str, Any]]:
    """`num` prompts of the split, tags taken round-robin; prompts repeat only once all are used."""
    rng = random.Random(f"shapes/generation/{split}/{seed}")
    pools = defaultdict(list)
    for meta in split_prompts(split):
        pools[meta["tag"]].append(meta)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < num:
        queues = {tag: rng.sample(pools[tag], len(pools[tag])) for tag in TAGS}
        while len(chosen) < num and any(queues.values()):
            for tag in TAGS:
                if queues[tag] and len(chosen) < num:
                    chosen.append(queues[tag].pop())
    return chosen


_POSITION_LAYOUT = {  # relation of the mover to the target → (axis, mover's place, target's place)
    "left of": ("x", 0.27, 0.73),
    "right of": ("x", 0.73, 0.27),
    "above": ("y", 0.27, 0.73),
    "below": ("y", 0.73, 0.27),
}


def _position_scene(rng: random.Random, metadata: Mapping[str, Any]) -> Scene:
    """Target and mover far apart on the relation's axis, so GenEval's rule holds with room to spare."""
    target, mover = metadata["include"]
    axis, mover_at, target_at = _POSITION_LAYOUT[mover["position"][0]]
    scene = []
    for clause, along in ((target, target_at), (mover, mover_at)):
        along = round(along + rng.uniform(-0.04, 0.04), 3)
        across = round(0.5 + rng.uniform(-0.05, 0.05), 3)
        cx, cy = (along, across) if axis == "x" else (across, along)
        color = clause.get("color") or rng.choice(list(PALETTE))
        scene.append(ShapeObject(clause["class"], color, cx, cy, round(rng.uniform(0.22, 0.32), 3)))
    return tuple(scene)


def reference_scene(metadata: Mapping[str, Any], rng: random.Random) -> Scene:
    """A scene that satisfies the prompt: exactly the included objects, colours as asked."""
    if metadata["tag"] == "position":
        return _position_scene(rng, metadata)
    specs = [
        (clause["class"], clause.get("color") or rng.choice(list(PALETTE)))
        for clause in metadata["include"] for _ in range(clause["count"])
    ]
    sizes = {1: (0.3, 0.5), 2: (0.22, 0.32)}.get(len(specs), (0.2, 0.26))
    return place(rng, specs, sizes)


def render_reference(metadata: Mapping[str, Any], size: int, seed: int) -> Image.Image:
    """A correct image for a generation prompt: the ideal model's answer, and training data."""
    return render(reference_scene(metadata, random.Random(seed)), size)


# --- detector ---------------------------------------------------------------------------------

# Bands of coverage-weighted bounding-box fill: triangle 0.5, circle π/4 ≈ 0.785, square 1.0.
# The cut points sit between the ideals, nudged to where measured fills of blurred, noisy and
# JPEG-compressed renders at 64–384 px separate (triangles drift up under blur, squares down).
_SHAPE_BANDS = (("triangle", 0.35, 0.69), ("circle", 0.69, 0.855), ("square", 0.855, math.inf))
_AMBIGUITY = 0.04  # confidence falls from 1.0 to 0.5 over this distance to a band's edge
_MAX_RESIDUAL = 90.0  # RGB distance off every palette colour's white-to-colour line: not a palette pixel
_MIN_AREA = 0.003  # components smaller than this fraction of the image are noise
# A blob must overlap its ideal shape this well (texture noise does not); small JPEG'd
# triangles measure down to ~0.66, circles and squares stay above ~0.87.
_MIN_TEMPLATE_IOU = {"triangle": 0.6, "circle": 0.8, "square": 0.8}
_MAX_EXTENT = 0.9  # a blob spanning this much of both sides is background, not an object
_MIN_EXTENT = 0.1  # half the smallest object the suite draws (0.2 of the side): smaller is noise


def _shape_of(fill: float, aspect: float) -> tuple[str, float] | None:
    """Shape label and confidence for a blob's fill ratio and aspect ratio (None: no shape)."""
    for label, low, high in _SHAPE_BANDS:
        if low <= fill < high:
            fit = 0.5 + 0.5 * min(1.0, min(fill - low, high - fill) / _AMBIGUITY)
            elongation = min(1.0, max(0.0, (aspect - 0.5) / 0.25))  # a bar is neither square nor circle
            return label, fit * elongation
    return None


def _template_iou(blob: np.ndarray, label: str) -> float:
    """IoU of a binary blob with the ideal `label` shape filling the blob's own bounding box."""
    rows, cols = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
    blob = blob[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = blob.shape
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    if label == "circle":
        template = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2 <= 1.0
    elif label == "triangle":  # point up, base along the bottom
        template = np.abs(xx - width / 2) <= yy / height * width / 2
    else:
        template = np.ones_like(blob, dtype=bool)
    return float((blob & template).sum() / (blob | template).sum())


def detect(image: Image.Image) -> list[Detection]:
    """Palette-coloured shapes in an image, as GenEval-style detections with pixel boxes.

    Each pixel is modelled as a mix of white and one palette colour: its coverage is the
    projection on the white-to-colour line, and it belongs to the colour whose line it is
    nearest, when the coverage is at least one half. Anti-aliased or blurred edges then split
    where the true edge is, and shape measurements weight edge pixels by their coverage, so a
    13 px circle at 64 px measures close to π/4 instead of ±10% off from pixel rounding.
    """
    ink = 255.0 - np.asarray(image.convert("RGB"), dtype=np.float32)
    axes = 255.0 - np.array(list(PALETTE.values()), dtype=np.float32)
    projection = ink @ axes.T
    coverage = projection / (axes**2).sum(axis=1)
    # distance from each colour's line through white: √(|ink|² − squared projection length)
    residual = np.sqrt(np.maximum((ink**2).sum(axis=-1, keepdims=True) - coverage * projection, 0.0))
    nearest = residual.argmin(axis=-1)[..., None]
    painted = (np.take_along_axis(residual, nearest, axis=-1) <= _MAX_RESIDUAL) & (
        np.take_along_axis(coverage, nearest, axis=-1) >= 0.5
    )
    color_map = np.where(painted, nearest, -1)[..., 0]
    height, width = color_map.shape
    detections = []
    for index, color in enumerate(PALETTE):
        labels, _ = ndimage.label(color_map == index)
        areas = np.bincount(labels.ravel())
        soft = np.clip(coverage[..., index], 0.0, 1.0)
        for label, window in enumerate(ndimage.find_objects(labels), start=1):
            if areas[label] < _MIN_AREA * height * width:
                continue
            ys, xs = (slice(max(s.start - 1, 0), s.stop + 1) for s in window)
            blob = ndimage.binary_fill_holes(labels[ys, xs] == label)  # noise specks inside a shape
            # one pixel around the blob too, so partly covered edge pixels count fractionally
            around = ndimage.binary_dilation(blob) & np.isin(color_map[ys, xs], (index, -1))
            weights = np.where(around, soft[ys, xs], 0.0)
            blob_w, blob_h = weights.max(axis=0).sum(), weights.max(axis=1).sum()
            shape = _shape_of(weights.sum() / (blob_w * blob_h), min(blob_w, blob_h) / max(blob_w, blob_h))
            spans = (window[0].stop - window[0].start) / height, (window[1].stop - window[1].start) / width
            if not _MIN_EXTENT <= min(spans) <= _MAX_EXTENT:
                continue
            if shape is None or _template_iou(blob, shape[0]) < _MIN_TEMPLATE_IOU[shape[0]]:
                continue
            box = (float(window[1].start), float(window[0].start), float(window[1].stop), float(window[0].stop))
            detections.append(Detection(label=shape[0], box=box, score=round(shape[1], 4), color=color))
    return detections


# --- the task ---------------------------------------------------------------------------------


class ShapesTask(Task):
    """Understanding questions then generation prompts over procedural shape scenes.

    Metrics: `understanding_acc` (over all questions), `understanding_<qtype>`, and GenEval's
    `generation_overall` (unweighted mean over tags of per-image accuracy) with
    `generation_<tag>`.
    """

    name: ClassVar[str] = "shapes"
    two_stage: ClassVar[bool] = True

    def __init__(
        self,
        data_dir: Path | None = None,
        split: Split = "test",
        seed: int = 0,
        num_understanding: int = 240,
        num_generation: int = 60,
        image_size: int = 128,
    ):
        super().__init__(data_dir)  # procedural: there is nothing to read from data_dir
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split: Split = split
        self.seed = seed
        self.num_understanding = num_understanding
        self.num_generation = num_generation
        self.image_size = image_size

    def samples(self) -> list[Sample]:
        samples = [
            Sample.build(
                id=f"u-{i:05d}",
                category=f"understanding/{q.qtype}",
                references={"answer": q.answer, "qtype": q.qtype},
                task="understanding",
                prompt=q.prompt,
                images=[render(q.scene, self.image_size)],
            )
            for i, q in enumerate(understanding_questions(self.split, self.seed, self.num_understanding))
        ]
        samples += [
            Sample.build(
                id=f"g-{i:05d}",
                category=f"generation/{meta['tag']}",
                references=meta,
                n=IMAGES_PER_PROMPT,
                task="generation",
                prompt=meta["prompt"],
            )
            for i, meta in enumerate(generation_prompts(self.split, self.seed, self.num_generation))
        ]
        return samples

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        if sample.category.startswith("understanding/"):
            reply = outputs[0].text if outputs else None
            parsed = parse_answer(reply)
            correct = parsed == sample.references["answer"]
            return {
                "score": float(correct),
                "correct": correct,
                "qtype": sample.references["qtype"],
                "reply": reply,
                "parsed": parsed,
                "answer": sample.references["answer"],
            }
        images = []
        for output in outputs:
            if not output.images:
                images.append({"k": output.k, "correct": False, "reason": "no image", "detections": []})
                continue
            detections = detect(output.images[0])
            verdict = judge(sample.references, detections)
            images.append({
                "k": output.k,
                "correct": verdict.correct,
                "reason": verdict.reason,
                "detections": [
                    {"class": d.label, "color": d.color, "box": list(d.box), "score": d.score} for d in detections
                ],
            })
        score = sum(image["correct"] for image in images) / len(images) if images else 0.0
        return {"score": score, "tag": sample.references["tag"], "images": images}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        answered: dict[str, list[bool]] = defaultdict(list)
        generated: list[tuple[str, bool]] = []
        for sample in samples:
            record = records.get(sample.id)
            if record is None:  # failed samples are left out, not counted wrong
                continue
            kind, _, group = sample.category.partition("/")
            if kind == "understanding":
                answered[group].append(bool(record["correct"]))
            else:
                generated += [(group, bool(image["correct"])) for image in record["images"]]
        metrics: dict[str, float] = {}
        if answered:
            metrics["understanding_acc"] = float(np.mean([c for group in answered.values() for c in group]))
            metrics.update({f"understanding_{q}": float(np.mean(answered[q])) for q in QTYPES if q in answered})
        summary = summarize(generated)
        if summary:
            metrics["generation_overall"] = summary.pop("overall")
            metrics.update({f"generation_{tag}": acc for tag, acc in summary.items()})
        return metrics


# --- post-training data -----------------------------------------------------------------------


class UnderstandingExample(NamedTuple):
    image: Image.Image
    question: str
    answer: str


class GenerationExample(NamedTuple):
    prompt: str
    image: Image.Image
    metadata: dict[str, Any]


def understanding_examples(
    split: Split = "train", seed: int = 0, num: int = 1200, image_size: int = 128
) -> Iterator[UnderstandingExample]:
    """(image, question, answer) triples, the same questions the benchmark asks of its split."""
    for q in understanding_questions(split, seed, num):
        yield UnderstandingExample(render(q.scene, image_size), q.prompt, q.answer)


def generation_examples(
    split: Split = "train", seed: int = 0, num: int = 600, image_size: int = 128
) -> Iterator[GenerationExample]:
    """(prompt, reference image) pairs; a repeated prompt gets a fresh layout each time."""
    for i, meta in enumerate(generation_prompts(split, seed, num)):
        image = render_reference(meta, image_size, sample_seed(seed, f"g-{i:05d}"))
        yield GenerationExample(meta["prompt"], image, meta)
