"""GenEval's rules for turning detections into a correct/incorrect verdict, detector-agnostic.

GenEval (djghosh13/geneval, `evaluation/evaluate_images.py`) judges a generated image against
prompt metadata (`tag`, `include` clauses `{class, count[, color][, position]}`, optional
`exclude` clauses). The detector is replaceable (Mask2Former for the real benchmark, the
colour-blob detector of the `shapes` benchmark), so the rules live here on their own and any
detector that yields boxes, scores and colours can be judged with the published semantics.

Reproduced on purpose, because published numbers were computed with them:
- scores are compared with the threshold in float32 and strictly (`score > threshold`), so a
  float32 0.3 is dropped at threshold 0.3; counting prompts use 0.9 instead of 0.3;
- at most `max_objects` (16) detections per class are kept, best score first (ties: later
  detection first, as numpy's reversed argsort gives); duplicates are not suppressed unless
  `max_overlap` < 1, and then by the official IoU, whose box area counts pixels inclusively
  (`(x1 - x0 + 1) * (y1 - y0 + 1)`);
- relative position is computed in float32, as the official code does on the detector's
  float32 boxes, with `position_threshold` (0.1) as the margin;
- an include clause judges only the first `count` detections of its class, so extra objects
  pass unless an exclude clause forbids them;
- a position clause is checked only if its colour check passed, and fails outright if the
  clause it refers to failed;
- overall accuracy is the unweighted mean of the per-tag accuracies, taken with `np.mean` over
  the tags in the order they first appear in the results (`summary_scores.py` groups with
  `sort=False`); the float sum's order shows in the last digit.
`max_objects`, `max_overlap` and `position_threshold` are the official script's `--options`
(`Settings`). Rules compared with djghosh13/geneval@af4902f.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
RELATIONS = ("left of", "right of", "above", "below")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: class label, pixel box (x0, y0, x1, y1), confidence, colour if known."""

    label: str
    box: Box
    score: float
    color: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether an image satisfies its prompt; `reason` names every failed clause ("" if correct)."""

    correct: bool
    reason: str


# Given a class name and the detections judged for it, the colour name of each detection.
ColorClassifier = Callable[[str, Sequence[Detection]], list[str | None]]


def _detection_colors(classname: str, found: Sequence[Detection]) -> list[str | None]:
    return [det.color for det in found]


def score_threshold(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


class Settings(BaseModel):
    """The official evaluator's `--options` that change verdicts (defaults as published)."""

    model_config = ConfigDict(frozen=True)

    max_objects: int = Field(default=MAX_OBJECTS, ge=1)
    max_overlap: float = Field(default=1.0, gt=0, le=1)
    position_threshold: float = Field(default=POSITION_MARGIN, ge=0)

    def changed(self) -> str:
        """The settings that differ from the published ones, e.g. ";max_overlap=0.5" ("" for none)."""
        return "".join(f";{name}={value}" for name, value in self.model_dump(exclude_defaults=True).items())


def box_iou(a: Box, b: Box) -> float:
    """The official `compute_iou`: areas count pixels inclusively, hence the "+ 1"."""

    def area(box: Sequence[float]) -> float:
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0


def select_detections(
    detections: Iterable[Detection],
    tag: str,
    settings: Settings = Settings(),
) -> dict[str, list[Detection]]:
    """Detections kept for judging, grouped by class and best first, as GenEval keeps them.

    `settings.max_overlap` is GenEval's greedy per-class suppression IoU; 1.0 keeps duplicates.
    """
    max_objects, max_overlap = settings.max_objects, settings.max_overlap
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        by_class[det.label].append(det)
    threshold = np.float32(score_threshold(tag))
    kept: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        scores = np.array([det.score for det in dets], dtype=np.float32)
        order = [int(i) for i in np.argsort(scores, kind="stable")[::-1] if scores[i] > threshold]
        order = order[:max_objects]
        chosen: list[Detection] = []
        while order:
            best = dets[order.pop(0)]
            chosen.append(best)
            if max_overlap < 1:
                order = [i for i in order if box_iou(best.box, dets[i].box) < max_overlap]
        if chosen:
            kept[label] = chosen
    return kept


def relative_position(a: Box, b: Box, margin: float = POSITION_MARGIN) -> set[str]:
    """Relations of box `a` to box `b` ("left of" means a is left of b), by GenEval's rule.

    The centre offset is shrunk on each axis by `margin` × (sum of both boxes' extents on that
    axis), clipped at zero, then divided by the length of the unshrunk offset; a component
    beyond ±0.5 is a relation. Objects whose shrunk offset vanishes have no relation at all.
    All in float32, as the official code computes on the detector's float32 boxes.
    """
    boxes = np.array([a, b], dtype=np.float32).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=1)
    dim_a, dim_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    reduced = np.maximum(np.abs(offset) - margin * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(reduced) < 1e-3):
        return set()
    dx, dy = reduced / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _first_violation(found: Sequence[Detection], targets: Sequence[Detection], relation: str,
                     margin: float) -> set[str] | None:
    """The actual relations of the first (object, target) pair lacking `relation`, if any."""
    for obj in found:
        for other in targets:
            relations = relative_position(obj.box, other.box, margin)
            if relation not in relations:
                return relations
    return None


def evaluate(
    metadata: Mapping[str, Any],
    objects: Mapping[str, Sequence[Detection]],
    color_of: ColorClassifier = _detection_colors,
    position_threshold: float = POSITION_MARGIN,
) -> Verdict:
    """Judge already-selected detections (see `select_detections`) against prompt metadata."""
    reasons: list[str] = []
    groups: list[Sequence[Detection] | None] = []
    for index, clause in enumerate(metadata.get("include", [])):
        classname, count = clause["class"], clause["count"]
        name = f"include[{index}] {classname}"
        found = list(objects.get(classname, []))[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"{name}: expected {count}, found {len(found)}")
        if matched and "color" in clause:
            colors = color_of(classname, found)
            hits = colors.count(clause["color"])
            if hits < count:
                matched = False
                seen = ", ".join(f"{colors.count(c)} {c}" for c in sorted(set(colors), key=str))
                reasons.append(f"{name}: expected {count} {clause['color']}, found {seen}")
        if matched and "position" in clause:
            relation, target = clause["position"]
            targets = groups[target]
            if targets is None:
                matched = False
                reasons.append(f"{name}: no {relation} target, include[{target}] failed")
            else:
                wrong = _first_violation(found, targets, relation, position_threshold)
                if wrong is not None:
                    matched = False
                    actual = " and ".join(sorted(wrong)) or "no relation"
                    reasons.append(f"{name}: expected {relation} include[{target}], found {actual}")
        groups.append(found if matched else None)
    for index, clause in enumerate(metadata.get("exclude", [])):
        classname, count = clause["class"], clause["count"]
        present = len(objects.get(classname, []))
        if present >= count:
            reasons.append(f"exclude[{index}] {classname}: expected fewer than {count}, found {present}")
    return Verdict(correct=not reasons, reason="; ".join(reasons))


def judge(
    metadata: Mapping[str, Any],
    detections: Iterable[Detection],
    color_of: ColorClassifier = _detection_colors,
    *,
    settings: Settings = Settings(),
) -> Verdict:
    """Select raw detections with the tag's threshold, then evaluate: GenEval's full per-image rule."""
    objects = select_detections(detections, metadata["tag"], settings)
    return evaluate(metadata, objects, color_of, settings.position_threshold)


def summarize(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Per-tag accuracy over images, plus `overall`: `np.mean` of the per-tag accuracies, tags in
    the order they first appear in `results` (as `summary_scores.py` groups, `sort=False`)."""
    per_tag: dict[str, list[bool]] = defaultdict(list)  # insertion order = first appearance
    for tag, correct in results:
        per_tag[tag].append(bool(correct))
    summary = {tag: float(np.mean(values)) for tag, values in per_tag.items()}
    if summary:
        summary["overall"] = float(np.mean(list(summary.values())))
    return summary
