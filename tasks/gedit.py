"""GEdit-Bench: 606 real-world edit requests in English and Chinese (1212 rows), judged with VIEScore.

Data: hub dataset `stepfun-ai/GEdit-Bench`, split `train`, via `tasks/hub_data.py` (`--data-dir`
may hold its arrow or parquet shards as the hub stores them). Columns: `task_type` (one of 11 groups),
`key`, `instruction`, `instruction_language` (`en` | `cn`), `input_image`, `input_image_raw`,
`Intersection_exist` (bool).

Generation: an editing request with the instruction and `input_image_raw`, resized as the
official generation example does (about 512² pixels, sides multiples of 32; `input_area=None`
sends it unresized, `input_area=N` aims at N pixels). Sample ids are `<group>/<lang>/<key>`.

Scoring (`tasks/scorers/gedit_rules.py`, official rules; the official judge prompts are reproduced
unchanged, with attribution, in `tasks/data/gedit_viescore_prompts.json`): the judge sees the
semantic-consistency prompt with [source, edit] and the perceptual-quality prompt with the edit
only, where the source is `input_image` and the edit is resized to it; SC = min, PQ = min, O = sqrt(SC·PQ). Images reach
the judge as the official GPT path sends them, JPEG-compressed (PIL's default quality), unless
`judge_image_format="png"` (the official local Qwen2.5-VL path). Judge: `judge=` (a vision judge,
a `JudgeConfig` or its dict; else the UMM_JUDGE_* environment); the official ones are GPT-4.1
(`--backbone gpt4o`) and Qwen2.5-VL-72B-Instruct-AWQ: numbers from different judges compare with
each other only. Up to 1400 reply tokens, as the official GPT call.

Where the official code is nondeterministic or broken, this task does the deterministic, working
thing and counts each event:
- An unparsable reply is asked again once (only that prompt; the official re-asks SC and PQ both),
  at temperature 0 like every judge call here (the official GPT call leaves the API default).
  Still unparsable, the official code draws `random.randint(0, 10)` from the unseeded global
  generator (or, for a reply with a broken `{...}` span, asks again without end); here
  `unparsable="guess"` (default) makes the same 0–10 draw from a generator seeded by sample id and
  part, `"zero"` scores 0 and `"drop"` leaves the sample out. Counted: `judge_unparsable_sc`,
  `judge_unparsable_pq`. On the retry the official parser guesses even for a bare `[a, b]` reply;
  here every attempt is parsed alike.
- Chinese rows: the official statistics CLI accepts `en`/`zh` while the data says `cn`, so it
  cannot report Chinese scores; here every language in the data is reported under its own code.
- An edit that is missing (the backbone returned no image) is left out, as the official scorer
  skips a missing file; counted as `missing_edits`. A source image that cannot be read leaves its
  sample out too (the official scorer retries it without end), counted as `unreadable_sources`.

Metrics (0–10): `<lang>/{sc,pq,o}` (headline: unweighted mean of the 11 group means),
`<lang>/intersection/{sc,pq,o}` (the same over `Intersection_exist` rows), per-group means
`<lang>/{full,intersection}/<group>/{sc,pq,o}`, `<lang>/{full,intersection}/groups`, and the
counts above. A headline needs all 11 groups scored (the official mean is NaN otherwise).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image, ImageOps

from tasks.base import Output, Sample
from tasks.hub_data import HubSource, image_cell, load_rows
from tasks.judged import JudgedTask
from tasks.judges.parsing import ONE_RETRY
from tasks.judges.vision import VisionRequest, vision_judge_all
from tasks.scorers.gedit_rules import (
    MAX_TOKENS,
    edit_for_judging,
    guessed_score,
    official_input_size,
    overall,
    parse_scores,
    pq_prompt,
    sc_prompt,
    summarize,
)
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import decode_image

HUB_ID = "stepfun-ai/GEdit-Bench"
SPLIT = "train"
Unparsable = Literal["guess", "zero", "drop"]


def _flag(value: Any, key: str) -> bool:
    """`Intersection_exist` as a bool; the string "False" must not count as true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"gedit: row {key}: Intersection_exist must be a boolean, not {value!r}")


def _open_source(cell: Any) -> Image.Image:
    """The judged source as the official scorer opens it: as stored (EXIF orientation not yet applied)."""
    if isinstance(cell, bytes | bytearray):
        return Image.open(io.BytesIO(cell))
    if isinstance(cell, str | Path) and Path(cell).is_file():
        return Image.open(cell)
    return decode_image(cell)


def _judge_view(image: Image.Image, image_format: str) -> Image.Image:
    """The pixels the judge sees: RGB after EXIF orientation, JPEG-compressed on the official GPT path."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    if image_format == "png":
        return image
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    buf.seek(0)
    with Image.open(buf) as compressed:
        return compressed.convert("RGB")


class GEditTask(JudgedTask):
    name: ClassVar[str] = "gedit"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, cache_dir: Path | None = None,
                 languages: list[str] | None = None, input_area: int | None = 512 * 512,
                 unparsable: Unparsable = "guess", judge_image_format: Literal["jpeg", "png"] = "jpeg",
                 hub_id: str = HUB_ID, revision: str | None = None):
        super().__init__(data_dir, judge, cache_dir)
        if unparsable not in ("guess", "zero", "drop"):
            raise ConfigError(f"gedit: unparsable must be guess, zero or drop, not {unparsable!r}")
        if judge_image_format not in ("jpeg", "png"):
            raise ConfigError(f"gedit: judge_image_format must be jpeg or png, not {judge_image_format!r}")
        if input_area is not None and input_area < 32 * 32:
            raise ConfigError(f"gedit: input_area must be at least 1024 pixels (or null), not {input_area}")
        self.languages = languages
        self.input_area = input_area
        self.unparsable = unparsable
        self.judge_image_format = judge_image_format
        self.source = HubSource(hub_id=hub_id, split=SPLIT, revision=revision)
        self._sources: dict[str, Any] = {}  # sample id → the judged source's image cell (decoded when scored)

    def scoring_options(self) -> str:
        return f";unparsable={self.unparsable};images={self.judge_image_format}"

    def samples(self) -> list[Sample]:
        samples = []
        for _, row in load_rows(self.source, self.data_dir, self.name):
            language, group, key = str(row["instruction_language"]), str(row["task_type"]), str(row["key"])
            if self.languages and language not in self.languages:
                continue
            sample_id = f"{group}/{language}/{key}"
            refs = {"key": key, "group": group, "language": language, "instruction": str(row["instruction"]),
                    "intersection": _flag(row.get("Intersection_exist"), key)}
            self._sources[sample_id] = image_cell(row.get("input_image"))
            samples.append(Sample.build(id=sample_id, category=f"{language}/{group}", references=refs,
                                        task="editing", prompt=refs["instruction"],
                                        images=[self._model_input(image_cell(row.get("input_image_raw")))]))
        return samples

    def _model_input(self, cell: Any) -> Any:
        """The raw input resized as the official example does; an undecodable cell goes on as is
        (the sample then fails with the decoder's message)."""
        if self.input_area is None or cell is None:
            return cell
        try:
            image = decode_image(cell)
        except ValueError:
            return cell
        return image.resize(official_input_size(image.width, image.height, self.input_area))

    def _source_cell(self, sample_id: str) -> Any:
        if sample_id not in self._sources:
            self.samples()  # scoring outputs of samples this instance has not loaded yet
        return self._sources[sample_id]

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        requests: list[VisionRequest] = []
        asked: list[int] = []
        sizes: dict[int, dict[str, Any]] = {}
        for index, (sample, outputs) in enumerate(items):
            edit = next((output.images[0] for output in outputs if output.images), None)
            if edit is None:
                continue
            try:
                source = _open_source(self._source_cell(sample.id))
                judged_edit = edit_for_judging(edit, source)
            except (OSError, ValueError) as exc:
                sizes[index] = {"source_error": f"input_image is not a readable image ({exc})"}
                continue
            sizes[index] = {"edit_size": list(edit.size), "source_size": list(source.size)}
            source_view = _judge_view(source, self.judge_image_format)
            edit_view = _judge_view(judged_edit, self.judge_image_format)
            requests.append(VisionRequest(sc_prompt(sample.references["instruction"]), (source_view, edit_view)))
            requests.append(VisionRequest(pq_prompt(), (edit_view,)))
            asked.append(index)
        verdicts = vision_judge_all(self.judge, requests, parse_scores, max_tokens=MAX_TOKENS,
                                    schedule=ONE_RETRY) if requests else []
        judged = {index: (verdicts[2 * k], verdicts[2 * k + 1]) for k, index in enumerate(asked)}
        records = []
        for index, (sample, _) in enumerate(items):
            refs = sample.references
            base = {"group": refs["group"], "language": refs["language"], "intersection": refs["intersection"],
                    "judge": self.judge.id}
            if index not in judged:
                records.append({**base, **sizes.get(index, {}), "missing_edit": index not in sizes, "sc": None,
                                "pq": None, "o": None, "score": 0.0})
                continue
            parts = {}
            for part, verdict in zip(("sc", "pq"), judged[index]):
                scores = None if verdict.failed else verdict.value
                if scores is None and self.unparsable != "drop":
                    scores = [float(guessed_score(sample.id, part) if self.unparsable == "guess" else 0)]
                parts[part] = {"scores": scores, "unparsable": verdict.failed, "replies": verdict.replies}
            sc = min(parts["sc"]["scores"]) if parts["sc"]["scores"] else None
            pq = min(parts["pq"]["scores"]) if parts["pq"]["scores"] else None
            o = overall(sc, pq) if sc is not None and pq is not None else None
            records.append({
                **base, **sizes[index], "missing_edit": False, "sc": sc, "pq": pq, "o": o,
                "sc_scores": parts["sc"]["scores"], "pq_scores": parts["pq"]["scores"],
                "sc_unparsable": parts["sc"]["unparsable"], "pq_unparsable": parts["pq"]["unparsable"],
                "sc_replies": parts["sc"]["replies"], "pq_replies": parts["pq"]["replies"],
                "score": o if o is not None else 0.0,
            })
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        rows, unparsable_sc, unparsable_pq, missing, unreadable = [], 0, 0, 0, 0
        for sample in samples:
            record = records.get(sample.id)
            if record is None:
                continue
            missing += bool(record.get("missing_edit"))
            unreadable += "source_error" in record
            unparsable_sc += bool(record.get("sc_unparsable"))
            unparsable_pq += bool(record.get("pq_unparsable"))
            if record.get("o") is not None:
                rows.append(record)
        metrics = summarize(rows)
        metrics.update(judge_unparsable_sc=float(unparsable_sc), judge_unparsable_pq=float(unparsable_pq),
                       missing_edits=float(missing), unreadable_sources=float(unreadable))
        return metrics
