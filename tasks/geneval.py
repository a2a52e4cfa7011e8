"""GenEval: 553 compositional text-to-image prompts, 4 images each, judged by an object detector.

Data: GenEval's published `prompts/evaluation_metadata.jsonl` (one JSON object per prompt:
`tag`, `include` clauses `{class, count[, color][, position]}`, optional `exclude`, `prompt`)
and `prompts/object_names.txt` (the 80 COCO class names in detector order), from
djghosh13/geneval at commit af4902f (files unchanged since d927da8), each checked against its
git blob hash (`tasks/benchmark_files.py`). `data_dir` may be a copy of the benchmark folder
(`<data_dir>/prompts/...`, e.g. ../shared/data/geneval) or of a whole suite
(`<data_dir>/geneval/prompts/...`).

Generation: the prompt exactly as published; 4 images per prompt (`Sample.n = 4`, each with
its own seed), as the official protocol and every published table use. Nothing else is fixed:
cfg scale, steps and resolution are the backbone's defaults. Sample ids are the prompt's index
zero-padded to 5 digits, the folder names the official generation script writes.

Scoring (`tasks/scorers/geneval_rules.py` + `tasks/scorers/geneval_detector.py`): an image is
correct only if every include clause holds (exact counts, colour by CLIP on the masked crop,
position with the 0.1 margin) and no exclude clause is violated; detection score threshold 0.3
(0.9 for counting), compared in float32; duplicates kept (max_overlap 1.0). Quirks of the
official evaluator (djghosh13/geneval@af4902f `evaluation/evaluate_images.py`,
`evaluation/summary_scores.py`) are listed in those modules and reproduced. The official
script's `--options` that change verdicts are task options: `max_objects` (16), `max_overlap`
(1.0) and `position_threshold` (0.1); any other value is part of `scorer_id`.

Metrics (fractions, as the paper's tables): `overall` = unweighted mean of the six task
accuracies; `<tag>` per task (single_object, two_object, counting, colors, position,
color_attr) = fraction of that task's images judged correct; `images_correct` (all images
pooled) and `prompts_correct` (a prompt with at least one correct image), the evaluator's
summary lines. As `summary_scores.py`, `overall` is `np.mean` of the tag accuracies in the order
the tags first appear (sample order here; the official order is the prompt folders' directory
listing order), and `prompts_correct` groups images by their metadata record (the JSON of the
prompt's metadata), so two prompts with identical metadata are one prompt there.
Departure: an image the backbone did not return counts as incorrect (the official script scores
only files present; counting it wrong keeps a failing model from looking better) and is counted
in `missing_images`.

Scorer: `detector=` an object with `judge(image, metadata)` and `scorer_id` (tests use tiny
random models), else Mask2Former + CLIP built lazily from `detector_model` / `clip_model`
(defaults in `tasks/scorers/geneval_detector.py`). `scorer_id` is in every record, and
aggregating records made by another scorer is an error.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Output, Sample, Task
from tasks.benchmark_files import BenchmarkFile, fetch
from tasks.scorers.geneval_detector import DEFAULT_CLIP, DEFAULT_DETECTOR, GenEvalDetector, scorer_id
from tasks.scorers.geneval_rules import MAX_OBJECTS, POSITION_MARGIN, Settings, summarize

COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
_RAW = f"https://raw.githubusercontent.com/djghosh13/geneval/{COMMIT}"
METADATA = BenchmarkFile(benchmark="geneval", path="prompts/evaluation_metadata.jsonl",
                         url=f"{_RAW}/prompts/evaluation_metadata.jsonl",
                         blob_sha1="efc21c7e639cd45554a1e44fac87157211f16d51")
OBJECT_NAMES = BenchmarkFile(benchmark="geneval", path="prompts/object_names.txt",
                             url=f"{_RAW}/prompts/object_names.txt",
                             blob_sha1="f4822dd01d0d1d2598d5e0190c121204e55925f1")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
IMAGES_PER_PROMPT = 4


def load_metadata(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every prompt's metadata, in file order."""
    path = fetch(METADATA, data_dir)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fetch_object_names(data_dir: Path | None = None) -> list[str]:
    path = fetch(OBJECT_NAMES, data_dir)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class GenEvalTask(Task):
    name: ClassVar[str] = "geneval"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, detector: Any = None,
                 detector_model: str = DEFAULT_DETECTOR, clip_model: str = DEFAULT_CLIP,
                 detector_revision: str | None = None, clip_revision: str | None = None,
                 device: str | None = None, images_per_prompt: int = IMAGES_PER_PROMPT, max_overlap: float = 1.0,
                 max_objects: int = MAX_OBJECTS, position_threshold: float = POSITION_MARGIN):
        super().__init__(data_dir)
        if images_per_prompt < 1:
            raise ValueError("images_per_prompt must be at least 1")
        self._detector = detector
        self._detector_args = dict(detector=detector_model, clip=clip_model, detector_revision=detector_revision,
                                   clip_revision=clip_revision, device=device)
        self.images_per_prompt = images_per_prompt
        self.settings = Settings(max_objects=max_objects, max_overlap=max_overlap, position_threshold=position_threshold)

    @property
    def scorer_id(self) -> str:
        if self._detector is not None:
            base = str(self._detector.scorer_id)
        else:
            args = self._detector_args
            base = scorer_id(args["detector"], args["clip"], args["detector_revision"], args["clip_revision"])
        return base + self.settings.changed()

    @property
    def detector(self) -> Any:
        if self._detector is None:
            args = dict(self._detector_args)
            self._detector = GenEvalDetector.from_pretrained(classnames=fetch_object_names(self.data_dir), **args)
        return self._detector

    def samples(self) -> list[Sample]:
        return [
            Sample.build(id=f"{index:05d}", category=meta["tag"], references=meta, n=self.images_per_prompt,
                         task="generation", prompt=meta["prompt"])
            for index, meta in enumerate(load_metadata(self.data_dir))
        ]

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        images = []
        for output in outputs:
            if not output.images:
                images.append({"k": output.k, "seed": output.seed, "correct": False, "missing": True,
                               "reason": "no image"})
                continue
            verdict, details = self.detector.judge(output.images[0], sample.references, settings=self.settings)
            images.append({"k": output.k, "seed": output.seed, "correct": verdict.correct, "missing": False,
                           "reason": verdict.reason, **details})
        score = sum(image["correct"] for image in images) / len(images) if images else 0.0
        return {"score": score, "tag": sample.references["tag"], "scorer": self.scorer_id, "images": images}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        judged: list[tuple[str, bool]] = []
        per_prompt: dict[str, bool] = {}  # metadata JSON → any image correct
        missing = 0
        for sample, record in self.scored(samples, records):
            flags = [bool(image["correct"]) for image in record["images"]]
            missing += sum(bool(image.get("missing")) for image in record["images"])
            judged += [(record["tag"], flag) for flag in flags]
            key = json.dumps(sample.references)
            per_prompt[key] = per_prompt.get(key, False) or any(flags)
        metrics: dict[str, float] = dict(summarize(judged))
        if judged:
            metrics["images_correct"] = sum(flag for _, flag in judged) / len(judged)
            metrics["prompts_correct"] = sum(per_prompt.values()) / len(per_prompt)
        metrics["missing_images"] = float(missing)
        return metrics


def tag_counts(metadata: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for meta in metadata:
        counts[meta["tag"]] += 1
    return dict(counts)
