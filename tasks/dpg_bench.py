"""DPG-Bench: 1065 dense prompts, 4 images each tiled 2×2, scored by VQA over a question graph.

Data (TencentQQGYLab/ELLA, `dpg_bench/` at commit 3c228f1):
- prompts: `prompts/<item_id>.txt`, one prompt per file, the file stem being the item id (and
  the image name the scorer expects). Read from `<data_dir>/prompts/` (or
  `<data_dir>/dpg_bench/prompts/`) when present, e.g. ../shared/data/dpg_bench; otherwise from
  the question table's `text` column (one prompt per item id, in table order).
- questions: `dpg_bench.csv` (git blob 98457fc9901943f51ff9a30367250fc292533bed), from
  `<data_dir>/dpg_bench.csv` or downloaded and checked by `tasks/benchmark_files.py`; a copy with
  another hash is refused. It is needed only to score, so `--stage generate` works from the
  prompt files alone.

Generation: the prompt as published, 4 images per prompt (`Sample.n = 4`), as the official
README recommends and published tables use; nothing else is fixed.

Scoring: the official `dpg_bench/compute_dpg_bench.py` (TencentQQGYLab/ELLA@3c228f1), its quirks
reproduced and listed in `tasks/scorers/dpg_rules.py` (averages as `np.mean(...) * 100`, NaN
overall when nothing scores, a question table it would crash on refused): the 4
images (k = 0..3) are pasted into a 2×2 grid in the official crop order (top-left, top-right,
bottom-left, bottom-right), each resized to `resolution` (default: the first image's width),
and the grid is cut back into the 4 tiles with the official crop boxes, exactly the input the
official script takes (`--pic-num 4 --resolution <tile size>`). Each tile is asked every
question of its item; an answer scores only if exactly "yes"; a question whose parent scores 0
scores 0; tile score = mean over questions; item score = mean over tiles. An item the official
script would fail on (a question whose parent is missing, or no questions for the id) is
dropped from every average and counted in `dropped_items`. A missing image leaves its tile
black (it is still asked, and counted in `missing_images`); a prompt with no image at all scores
0 on every question (the official script would skip it; a failing model must not gain by it) —
a deliberate departure, as is the VQA model below.

VQA model (`tasks/scorers/vqa.py`): the official mPLUG-large is not in transformers; the default
is BLIP VQA (`Salesforce/blip-vqa-capfilt-large`); `vqa=` takes a hub id (BLIP), a judge config
(a chat VLM, e.g. behind `vllm serve`) or any object with `answer(images, questions)`. Numbers
from different VQA models are not comparable: `scorer_id` (VQA id + tile count) is in every
record, and aggregating records of another scorer is an error.

Metrics (× 100, as the official report): `overall`; L1 categories `entity`, `attribute`,
`relation`, `global`, `other` (from the last tile's answers before dependency zeroing, the
official quirk); L2 categories as `<l1>/<l2>` (e.g. `entity/whole`); `dropped_items`,
`missing_images` (counts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Output, Sample, Task
from tasks.benchmark_files import BenchmarkFile, fetch
from tasks.scorers.dpg_rules import (
    TILES_PER_IMAGE,
    ItemQuestions,
    ItemScore,
    MissingParent,
    build_questions,
    crop_tiles,
    lookup,
    read_question_table,
    score_item,
    summarize,
    tile_2x2,
)
from tasks.scorers.vqa import make_vqa, vqa_scorer_id
from umm_harness.core.errors import ConfigError

COMMIT = "3c228f1dc6c4d3cad0a47493816151a419f14db3"
QUESTIONS = BenchmarkFile(
    benchmark="dpg_bench", path="dpg_bench.csv",
    url=f"https://raw.githubusercontent.com/TencentQQGYLab/ELLA/{COMMIT}/dpg_bench/dpg_bench.csv",
    blob_sha1="98457fc9901943f51ff9a30367250fc292533bed",
)
PROMPTS_DIR = "prompts"


def prompt_dir(data_dir: Path | None) -> Path | None:
    if data_dir is None:
        return None
    for folder in (Path(data_dir) / PROMPTS_DIR, Path(data_dir) / "dpg_bench" / PROMPTS_DIR):
        if folder.is_dir() and any(folder.glob("*.txt")):
            return folder
    return None


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def load_prompt_files(folder: Path) -> list[tuple[str, str]]:
    """(item id, prompt) for every `<id>.txt`, in natural name order."""
    files = sorted(folder.glob("*.txt"), key=lambda p: _natural_key(p.stem))
    return [(path.stem, path.read_text(encoding="utf-8").strip()) for path in files]


def prompts_from_table(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(item id, prompt) from the table's `text` column, first occurrence of each id, in table order."""
    seen: dict[str, str] = {}
    for row in rows:
        key = str(row["item_id"])
        if key not in seen:
            seen[key] = str(row["text"]).strip()
    return list(seen.items())


class DPGBenchTask(Task):
    name: ClassVar[str] = "dpg_bench"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, vqa: Any = None, vqa_revision: str | None = None,
                 device: str | None = None, images_per_prompt: int = TILES_PER_IMAGE, resolution: int | None = None,
                 question_table: str | Path | None = None):
        super().__init__(data_dir)
        if not 1 <= images_per_prompt <= TILES_PER_IMAGE:
            raise ValueError(f"images_per_prompt must be 1..{TILES_PER_IMAGE} (the official --pic-num)")
        self._vqa_spec = vqa
        self._vqa_revision = vqa_revision
        self._device = device
        self._vqa: Any = None
        self.images_per_prompt = images_per_prompt
        self.resolution = resolution
        self.question_table = Path(question_table) if question_table else None
        self._items: dict[Any, ItemQuestions] | None = None
        self._rows: list[dict[str, Any]] | None = None

    # data

    def _table_rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            if self.question_table is not None:
                path = self.question_table
                if not path.is_file():
                    raise ConfigError(f"dpg_bench: question_table {path} does not exist")
                from tasks.benchmark_files import verify

                verify(QUESTIONS, path)
            else:
                path = fetch(QUESTIONS, self.data_dir)
            self._rows = read_question_table(path)
        return self._rows

    @property
    def items(self) -> dict[Any, ItemQuestions]:
        if self._items is None:
            self._items = build_questions(self._table_rows())
        return self._items

    def samples(self) -> list[Sample]:
        folder = prompt_dir(self.data_dir)
        prompts = load_prompt_files(folder) if folder else prompts_from_table(self._table_rows())
        return [
            Sample.build(id=item_id, category="dpg", references={"item_id": item_id}, n=self.images_per_prompt,
                         task="generation", prompt=prompt)
            for item_id, prompt in prompts
        ]

    # scoring

    @property
    def scorer_id(self) -> str:
        return f"{vqa_scorer_id(self._vqa_spec, self._vqa_revision)};tiles={self.images_per_prompt}"

    @property
    def vqa(self) -> Any:
        if self._vqa is None:
            self._vqa = make_vqa(self._vqa_spec, revision=self._vqa_revision, device=self._device)
        return self._vqa

    def tiles(self, outputs: list[Output]) -> tuple[list[Any], int]:
        """The official input: the outputs' first images tiled 2×2 and cut back into tiles."""
        images = [output.images[0] if output.images else None for output in outputs]
        grid, resolution = tile_2x2(images, self.resolution)
        return crop_tiles(grid, resolution, self.images_per_prompt), sum(image is None for image in images)

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        """Records for many samples; every (tile, question) pair goes to the VQA model in one batch."""
        plans: list[tuple[ItemQuestions | None, list[Any], int]] = []
        pairs_images: list[Any] = []
        pairs_questions: list[str] = []
        for sample, outputs in items:
            item = lookup(self.items, sample.id)
            if item is None or not any(output.images for output in outputs):
                plans.append((item, [], sum(not output.images for output in outputs)))
                continue
            tiles, missing = self.tiles(outputs)
            plans.append((item, tiles, missing))
            for tile in tiles:
                for question in item.questions.values():
                    pairs_images.append(tile)
                    pairs_questions.append(question)
        answers = self.vqa.answer(pairs_images, pairs_questions) if pairs_questions else []
        records, cursor = [], 0
        for (sample, _), (item, tiles, missing) in zip(items, plans):
            base = {"scorer": self.scorer_id, "missing_images": missing}
            if item is None:
                records.append({**base, "score": 0.0, "dropped": f"no questions for item id {sample.id!r}"})
                continue
            tile_answers = []
            if not tiles:  # no image at all: every question unanswered, so every score 0
                tile_answers = [{qid: "" for qid in item.questions} for _ in range(self.images_per_prompt)]
            for _ in tiles:
                qids = list(item.questions)
                tile_answers.append(dict(zip(qids, answers[cursor : cursor + len(qids)])))
                cursor += len(qids)
            record = {**base, "answers": [{str(q): a for q, a in t.items()} for t in tile_answers]}
            try:
                result = score_item(item, tile_answers)
            except MissingParent as exc:
                records.append({**record, "score": 0.0, "dropped": str(exc)})
                continue
            records.append({**record, "score": result.score, "dropped": None, "tile_scores": result.tile_scores,
                            "categories": [[c, s] for c, s in result.category_scores],
                            "category_error": result.category_error})
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        scored: list[ItemScore] = []
        dropped = missing = 0
        for sample, record in self.scored(samples, records):
            missing += int(record.get("missing_images", 0))
            if record.get("dropped"):
                dropped += 1
                continue
            scored.append(ItemScore(record["tile_scores"], record["score"], [],
                                    [(c, s) for c, s in record["categories"]]))
        metrics = summarize(scored)
        metrics["dropped_items"] = float(dropped)
        metrics["missing_images"] = float(missing)
        return metrics
