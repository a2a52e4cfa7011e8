"""WISE: 1000 world-knowledge text-to-image prompts, one image each, scored by a VLM judge (WiScore).

Data: the three published prompt files of PKU-YuanGroup/WISE, released as `data/*.json` in
commit 5e5e134 (since moved unchanged to `WISE_legacy/data/`): `cultural_common_sense.json`
(ids 1–400), `spatio-temporal_reasoning.json` (401–700), `natural_science.json` (701–1000),
each a JSON array of `{prompt_id, Prompt, Category, Subcategory, Explanation}`, checked against
their git blob hashes. `data_dir` may hold `data/<file>.json` (e.g. ../shared/data/wise) or
`wise/data/<file>.json`. Like the official `load_prompts`, a prompt id that appears twice in a
file keeps its last entry.

Generation: the prompt as published, one image per prompt (the official protocol scores
`<prompt_id>.png`); nothing else is fixed.

Scoring (`tasks/scorers/wise_rules.py`): the judge sees the image, the prompt and its
explanation, and replies with Consistency, Realism and Aesthetic Quality (0–2 each);
WiScore = (0.7·C + 0.2·R + 0.1·A) / 2. Judge: `judge=` (a vision judge, a `JudgeConfig` or its
dict; else the UMM_JUDGE_* environment), any OpenAI-compatible VLM endpoint or a local
transformers VLM (`tasks/judges/vision.py`). The paper's judge is GPT-4o-2024-05-13 and the
reference system's Qwen2.5-VL-72B-Instruct: scores from different judges are comparable with
each other, not with the paper. Temperature 0, up to 2000 reply tokens, as the official call.

Metrics (fractions in [0, 1]): `wiscore` (0.4·cultural + 0.167·time + 0.133·space +
0.1·biology + 0.1·physics + 0.1·chemistry; only when all six categories have scored images),
the six categories, `consistency` / `realism` / `aesthetic_quality` (mean raw 0–2 scores),
`judge_failures` and `missing_images` (counts). A judge reply that cannot be read after one
retry is a failure: no score, left out of every average (the official script writes 999 there,
which its calculator then averages in). A prompt with no image scores 0 on all three (the
official script skips it). Duplicate samples (bootstrap resampling) count as often as given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Output, Sample, Task
from tasks.benchmark_files import BenchmarkFile, fetch
from tasks.judges.parsing import ONE_RETRY
from tasks.judges.vision import LazyVisionJudge, VisionRequest, vision_judge_all
from tasks.scorers.wise_rules import (
    MAX_TOKENS,
    SCORE_KEYS,
    SYSTEM,
    category_of,
    judge_text,
    parse_scores,
    record_scores,
    summarize,
)
from umm_harness.core.errors import ConfigError

COMMIT = "5e5e1342aeae96c026b0eace536ad94dda36c7c5"
_RAW = f"https://raw.githubusercontent.com/PKU-YuanGroup/WISE/{COMMIT}/data"
PROMPT_FILES = (
    BenchmarkFile(benchmark="wise", path="data/cultural_common_sense.json",
                  url=f"{_RAW}/cultural_common_sense.json", blob_sha1="49d1c3d0fb2df4b599725a458241f8b113dfbf53"),
    BenchmarkFile(benchmark="wise", path="data/spatio-temporal_reasoning.json",
                  url=f"{_RAW}/spatio-temporal_reasoning.json", blob_sha1="0a175dc324d60563d83af9da307ed62b48cc8d47"),
    BenchmarkFile(benchmark="wise", path="data/natural_science.json",
                  url=f"{_RAW}/natural_science.json", blob_sha1="e2ea67e8fd9b58667dac4587a3103c725e714680"),
)


def load_prompts(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every prompt of the three files, in file order; a repeated id keeps its last entry (per file)."""
    prompts: list[dict[str, Any]] = []
    for file in PROMPT_FILES:
        entries = json.loads(fetch(file, data_dir).read_text(encoding="utf-8"))
        by_id = {entry["prompt_id"]: {**entry, "file": Path(file.path).stem} for entry in entries}
        prompts.extend(by_id.values())
    return prompts


class WISETask(Task):
    name: ClassVar[str] = "wise"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, cache_dir: Path | None = None,
                 instructions: str | Path | None = None):
        super().__init__(data_dir)
        self._judge = LazyVisionJudge(judge, cache_dir)
        if instructions is None:
            from tasks.scorers.wise_rules import INSTRUCTIONS

            self.instructions = INSTRUCTIONS
        else:
            path = Path(instructions)
            if not path.is_file():
                raise ConfigError(f"wise: instructions must be a text file with {{prompt}} and {{explanation}}; "
                                  f"'{path}' is none")
            self.instructions = path.read_text(encoding="utf-8")

    @property
    def judge(self) -> Any:
        return self._judge.get()

    @property
    def scorer_id(self) -> str | None:
        """The judge's id; known without building the judge, so a generate-only run needs none."""
        return self._judge.id

    def samples(self) -> list[Sample]:
        return [
            Sample.build(id=str(entry["prompt_id"]), category=category_of(int(entry["prompt_id"])) or "none",
                         references={"prompt_id": int(entry["prompt_id"]), "explanation": entry["Explanation"],
                                     "subcategory": entry.get("Subcategory"), "json_category": entry.get("Category")},
                         task="generation", prompt=entry["Prompt"])
            for entry in load_prompts(self.data_dir)
        ]

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        requests, asked = [], []
        for index, (sample, outputs) in enumerate(items):
            image = next((output.images[0] for output in outputs if output.images), None)
            if image is None:
                continue
            text = judge_text(sample.request.prompt if sample.request else "", sample.references["explanation"],
                              self.instructions)
            requests.append(VisionRequest(text, (image,), SYSTEM))
            asked.append(index)
        verdicts = dict(zip(asked, vision_judge_all(self.judge, requests, parse_scores, max_tokens=MAX_TOKENS,
                                                    schedule=ONE_RETRY)))
        records = []
        for index, (sample, _) in enumerate(items):
            base = {"prompt_id": sample.references["prompt_id"], "judge": self.judge.id}
            verdict = verdicts.get(index)
            if verdict is None:
                zeros = {key: 0.0 for key in SCORE_KEYS}
                records.append({**base, **zeros, "score": 0.0, "missing_image": True, "judge_failed": False})
                continue
            scores = None if verdict.failed else verdict.value
            records.append({**base, **(scores or {key: None for key in SCORE_KEYS}), "missing_image": False,
                            "judge_failed": verdict.failed, "judge_replies": verdict.replies,
                            "score": record_scores(scores)})
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        scored: list[tuple[int, float]] = []
        raw: dict[str, list[float]] = {key: [] for key in SCORE_KEYS}
        failures = missing = 0
        for sample in samples:
            record = records.get(sample.id)
            if record is None:
                continue
            failures += bool(record.get("judge_failed"))
            missing += bool(record.get("missing_image"))
            if record.get("score") is None:
                continue
            scored.append((int(record["prompt_id"]), float(record["score"])))
            for key in SCORE_KEYS:
                raw[key].append(float(record[key]))
        metrics = summarize(scored)
        metrics.update({key: sum(values) / len(values) for key, values in raw.items() if values})
        metrics["judge_failures"] = float(failures)
        metrics["missing_images"] = float(missing)
        return metrics
