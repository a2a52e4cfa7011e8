"""DPG-Bench's scoring rules, as the official `dpg_bench/compute_dpg_bench.py` applies them.

The question table `dpg_bench.csv` has one row per question: `item_id, text, keywords,
proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language`. `dependency` lists the proposition ids a question depends on
("0" = none; "1,2" = both). A prompt's image is a 2×2 grid of 4 generated images; each tile is
asked every question of the prompt by a VQA model.

Rules, with the official script's quirks reproduced (published numbers were made with them):
- The table is read with pandas and its first data row is skipped (`if i == 0: continue`), so
  the first item loses its first question.
- Rows are grouped by runs of equal `item_id`; a later run of an id already seen replaces the
  earlier one. Within an item a repeated `proposition_id` overwrites the earlier question but
  keeps its place.
- An answer scores 1 only if it is exactly "yes" (no case folding, no stripping).
- Per tile, after all questions are answered, questions are visited in table order and a
  question scores 0 when any of its parents (ignoring 0) currently scores 0; the zeroing is
  in place, so it propagates down chains whose parents come first. A parent id that is not a
  question of the item (e.g. the question lost to the first-row skip) makes the official script
  fail on that image, and the item is dropped from every average (`dropped`).
- The tile score is the mean over the item's questions; the item score the mean over tiles.
- Category scores (from the `tuple` column, "entity - whole (man)" → L2 "entity - whole",
  L1 "entity") use the scores of the LAST tile only and from BEFORE the dependency zeroing.
- Overall = `np.mean(item scores) * 100`; L1 and L2 category = `np.mean(question scores) * 100`
  (numpy's pairwise sum, then × 100: not always the last bit of `100 * sum / len`). With no
  scored item at all the official overall is `np.mean([])`, NaN; so is ours.
- An item whose image is not scored at all (no image file) is in no average.
- A table whose `dependency` column holds no comma anywhere is read by pandas as numbers, and
  the official script crashes on it (`int` has no `split`); such a table is refused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from umm_harness.core.errors import ConfigError

COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
           "tuple", "question_natural_language")
L1_CATEGORIES = ("entity", "attribute", "relation", "global", "other")
TILES_PER_IMAGE = 4


class MissingParent(KeyError):
    """A question depends on a proposition id the item does not have (the official script fails on it)."""


@dataclass
class ItemQuestions:
    """One prompt's questions, keyed by proposition id in table order (dict insertion order)."""

    item_id: Any  # as pandas read it (a string for the published table)
    text: Any = None
    questions: dict[int, str] = field(default_factory=dict)
    parents: dict[int, list[int]] = field(default_factory=dict)
    tuples: dict[int, Any] = field(default_factory=dict)


def read_question_table(path: Path) -> list[dict[str, Any]]:
    """The table's rows as pandas reads them (default `read_csv`, as the official script does)."""
    import pandas as pd

    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not DPG-Bench's question table; missing columns {', '.join(missing)}")
    if pd.api.types.is_numeric_dtype(frame["dependency"]):
        raise ConfigError(f"{path}: column `dependency` holds no comma-separated list anywhere, so pandas reads it "
                         f"as numbers ({frame['dependency'].dtype}) and the official script crashes on it; "
                         "use the published dpg_bench.csv")
    return frame.to_dict("records")


def _parents(value: Any, row_index: int) -> list[int]:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"dpg_bench.csv data row {row_index}: empty `dependency` (the official script fails here)")
    return [int(str(part).strip()) for part in str(value).split(",")]


def build_questions(rows: Sequence[Mapping[str, Any]]) -> dict[Any, ItemQuestions]:
    """Items from table rows, with the official first-row skip and grouping (see module docstring)."""
    items: dict[Any, ItemQuestions] = {}
    previous: Any = ""
    for index, row in enumerate(rows):
        if index == 0:
            continue
        current = row["item_id"]
        qid = int(row["proposition_id"])
        parents = _parents(row["dependency"], index)
        if current != previous:
            items[current] = ItemQuestions(item_id=current, text=row.get("text"))
        item = items[current]
        item.questions[qid] = row["question_natural_language"]
        item.parents[qid] = parents
        item.tuples[qid] = row["tuple"]
        previous = current
    return items


def lookup(items: Mapping[Any, ItemQuestions], image_key: str) -> ItemQuestions | None:
    """The item for an image named `<image_key>.png`, matched as the official `dict.get(key)` does."""
    return items.get(image_key)


def category_of(tuple_cell: Any) -> str:
    """L2 category from a `tuple` cell: the text before the first "(", stripped."""
    return tuple_cell.split("(")[0].strip()


def l1_of(category: str) -> str:
    return category.split("-")[0].strip()


@dataclass
class ItemScore:
    tile_scores: list[float]
    score: float  # mean over tiles, a fraction
    tile_question_scores: list[dict[int, float]]  # after zeroing, per tile
    category_scores: list[tuple[str, float]]  # (L2 category, last tile's pre-zeroing score) in table order
    category_error: str | None = None  # a `tuple` cell that is not text stops the category list there


def score_item(item: ItemQuestions, tile_answers: Sequence[Mapping[int, str]]) -> ItemScore:
    """Score one item from each tile's answers ({proposition id: answer}); raises `MissingParent`."""
    if not tile_answers:
        raise ValueError("an item needs at least one tile")
    scores: dict[int, float] = {}
    original: dict[int, float] = {}
    tile_scores: list[float] = []
    per_tile: list[dict[int, float]] = []
    for answers in tile_answers:
        for qid in item.questions:
            scores[qid] = float(answers[qid] == "yes")
        original = dict(scores)
        for qid, parents in item.parents.items():
            for parent in parents:
                if parent == 0:
                    continue
                if parent not in scores:
                    raise MissingParent(f"question {qid} of item {item.item_id!r} depends on missing question {parent}")
                if scores[parent] == 0:
                    scores[qid] = 0.0
                    break
        tile_scores.append(sum(scores.values()) / len(scores))
        per_tile.append(dict(scores))
    categories: list[tuple[str, float]] = []
    error = None
    for qid, cell in item.tuples.items():
        if not isinstance(cell, str):
            error = f"question {qid}: tuple {cell!r} is not text"
            break
        categories.append((category_of(cell), original[qid]))
    return ItemScore(tile_scores, sum(tile_scores) / len(tile_scores), per_tile, categories, error)


def summarize(item_scores: Iterable[ItemScore]) -> dict[str, float]:
    """`overall`, L1 categories (`entity`, …) and L2 categories (`entity/whole`, …), all × 100."""
    overall: list[float] = []
    l2: dict[str, list[float]] = defaultdict(list)
    for item in item_scores:
        overall.append(item.score)
        for category, value in item.category_scores:
            l2[category].append(value)
    metrics: dict[str, float] = {"overall": _percent(overall)}
    l1: dict[str, list[float]] = defaultdict(list)
    for category, values in l2.items():
        l1[l1_of(category)].extend(values)
    for name, values in sorted(l1.items()):
        metrics[name] = _percent(values)
    for category, values in sorted(l2.items()):
        head, sep, rest = category.partition("-")
        if sep and rest.strip():
            metrics[f"{head.strip()}/{rest.strip().replace(' ', '_')}"] = _percent(values)
    return metrics


def _percent(values: Sequence[float]) -> float:
    """`np.mean(values) * 100` as the official report prints it; NaN for no values (as `np.mean([])`)."""
    return float(np.mean(values)) * 100 if len(values) else math.nan


# --- the 2×2 grid ---------------------------------------------------------------------------


def crop_boxes(resolution: int, pic_num: int = TILES_PER_IMAGE) -> list[tuple[int, int, int, int]]:
    """The official crop boxes: top-left, top-right, bottom-left, bottom-right (first `pic_num`)."""
    r = resolution
    return [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)][:pic_num]


def tile_2x2(images: Sequence[Image.Image | None], resolution: int | None = None) -> tuple[Image.Image, int]:
    """Images k = 0..3 pasted as a 2×2 grid in crop order (k=0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right), each resized to `resolution`² (default: the first image's width). A missing
    image leaves its tile black. Returns the grid and the tile resolution."""
    present = [image for image in images if image is not None]
    if resolution is None:
        if not present:
            raise ValueError("no images to tile and no resolution given")
        resolution = present[0].width
    grid = Image.new("RGB", (2 * resolution, 2 * resolution), (0, 0, 0))
    for box, image in zip(crop_boxes(resolution), images):
        if image is None:
            continue
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        grid.paste(image, box[:2])
    return grid, resolution


def crop_tiles(grid: Image.Image, resolution: int, pic_num: int = TILES_PER_IMAGE) -> list[Image.Image]:
    return [grid.crop(box) for box in crop_boxes(resolution, pic_num)]
