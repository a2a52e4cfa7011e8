"""WISE: 1000 world-knowledge text-to-image prompts, one image each, scored by a VLM judge (WiScore).

Two official protocols (`protocol=`, tagged on the run as `umm.protocol`; rules in
`tasks/scorers/wise_rules.py`, compared with PKU-YuanGroup/WISE@eb51174):
- `legacy` (default): the original release, which the published tables of unified models
  (and the reference system) report. Prompts: `cultural_common_sense.json` (ids 1–400),
  `spatio-temporal_reasoning.json` (401–700), `natural_science.json` (701–1000), released as
  `data/*.json` in commit 5e5e134 (since moved unchanged to `WISE_legacy/data/`). The judge gives
  Consistency, Realism and Aesthetic Quality; WiScore = (0.7·C + 0.2·R + 0.1·A) / 2. Metrics
  `wiscore`, the six categories, and `consistency` / `realism` / `aesthetic_quality` (mean raw
  scores, not an official number).
- `verified`: WISE_Verified, the current upstream default: its own prompt set
  (`data_verified/*_verified.json` at eb51174, ids 1–400, 401–640, 641–1000) and a binary 0/1
  judgement per image, with other id ranges and weights. Its numbers are not comparable with
  legacy ones, so its metrics are logged as `wise/verified/...`.
Each file is a JSON array of `{prompt_id, Prompt, Category, Subcategory, Explanation}`, checked
against its git blob hash; `data_dir` may hold `<folder>/<file>.json` (e.g. ../shared/data/wise
for legacy) or `wise/<folder>/<file>.json`. Like the official `load_prompts`, a prompt id that
appears twice in a file keeps its last entry.

Generation: the prompt as published, one image per prompt (the official protocol scores
`<prompt_id>.png`); nothing else is fixed.

Judging: the judge sees the image, the prompt and its explanation (instructions in this
project's words, official structure); up to 3 attempts, temperature 0, the official reply-token
limit (2000 legacy, 500 verified). Judge: `judge=` (a vision judge, a `JudgeConfig` or its dict;
else the UMM_JUDGE_* environment), any OpenAI-compatible VLM endpoint or a local transformers
VLM (`tasks/judges/vision.py`). Legacy's paper judge is GPT-4o-2024-05-13, the reference
system's Qwen2.5-VL-72B-Instruct, verified's Qwen3.5-35B-A3B: scores from different judges are
comparable with each other, not with the paper.

Totals as the official calculator: category means, and the weighted `wiscore` when all six
categories have images. A prompt without a judged score (its reply unreadable after 3 tries, or
no image — the official judge script skips both) makes the official calculator refuse to report
anything; so here: an error naming the ids is logged and only the counts are reported —
`judge_failures`, `missing_images` and `unscored_prompts` — never a partial category mean or
WiScore. Duplicate samples (bootstrap resampling) count as often as given.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from tasks.base import Output, Sample
from tasks.benchmark_files import BenchmarkFile, fetch
from tasks.judged import JudgedTask
from tasks.judges.parsing import Attempt
from tasks.judges.vision import VisionRequest, vision_judge_all
from tasks.scorers.wise_rules import (
    INSTRUCTIONS,
    MAX_ATTEMPTS,
    PROTOCOLS,
    SCORE_KEYS,
    SYSTEM,
    VERIFIED_INSTRUCTIONS,
    VERIFIED_SYSTEM,
    IncompleteResults,
    judge_text,
    parse_scores,
    parse_verdict,
    record_scores,
    summarize,
)
from umm_harness.core.errors import ConfigError

log = logging.getLogger(__name__)

COMMIT = "5e5e1342aeae96c026b0eace536ad94dda36c7c5"
_RAW = f"https://raw.githubusercontent.com/PKU-YuanGroup/WISE/{COMMIT}/data"
VERIFIED_COMMIT = "eb51174483a5de2e34e8614cf9dfb3319ee7fcd0"
_RAW_VERIFIED = f"https://raw.githubusercontent.com/PKU-YuanGroup/WISE/{VERIFIED_COMMIT}/data_verified"
SCHEDULE = (Attempt(),) * MAX_ATTEMPTS
PROMPT_FILES = (
    BenchmarkFile(benchmark="wise", path="data/cultural_common_sense.json",
                  url=f"{_RAW}/cultural_common_sense.json", blob_sha1="49d1c3d0fb2df4b599725a458241f8b113dfbf53"),
    BenchmarkFile(benchmark="wise", path="data/spatio-temporal_reasoning.json",
                  url=f"{_RAW}/spatio-temporal_reasoning.json", blob_sha1="0a175dc324d60563d83af9da307ed62b48cc8d47"),
    BenchmarkFile(benchmark="wise", path="data/natural_science.json",
                  url=f"{_RAW}/natural_science.json", blob_sha1="e2ea67e8fd9b58667dac4587a3103c725e714680"),
)
VERIFIED_PROMPT_FILES = tuple(
    BenchmarkFile(benchmark="wise", path=f"data_verified/{stem}_verified.json",
                  url=f"{_RAW_VERIFIED}/{stem}_verified.json", blob_sha1=sha)
    for stem, sha in (("cultural_common_sense", "a58268bb4a29ed3c2ac44ca570868ab5393c9c04"),
                      ("spatio-temporal_reasoning", "65b0e4c57d27aac5b8f8f1a6af4d5efccca6059d"),
                      ("natural_science", "0eb06226c01da43d953e2e79b6f6bc55d5c86da4"))
)


def load_prompts(data_dir: Path | None = None, protocol: str = "legacy") -> list[dict[str, Any]]:
    """Every prompt of the protocol's three files, in file order; a repeated id keeps its last entry (per file)."""
    prompts: list[dict[str, Any]] = []
    for file in VERIFIED_PROMPT_FILES if protocol == "verified" else PROMPT_FILES:
        entries = json.loads(fetch(file, data_dir).read_text(encoding="utf-8"))
        by_id = {entry["prompt_id"]: {**entry, "file": Path(file.path).stem} for entry in entries}
        prompts.extend(by_id.values())
    return prompts


class WISETask(JudgedTask):
    name: ClassVar[str] = "wise"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, cache_dir: Path | None = None,
                 instructions: str | Path | None = None, protocol: Literal["legacy", "verified"] = "legacy"):
        super().__init__(data_dir, judge, cache_dir)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"wise: protocol must be one of {', '.join(PROTOCOLS)}, not '{protocol}'")
        self.rules = PROTOCOLS[protocol]
        self.protocol = None if protocol == "legacy" else protocol  # the default protocol keeps plain metric names
        verified = protocol == "verified"
        self.system = VERIFIED_SYSTEM if verified else SYSTEM
        self.parse = parse_verdict if verified else parse_scores
        if instructions is None:
            self.instructions = VERIFIED_INSTRUCTIONS if verified else INSTRUCTIONS
        else:
            path = Path(instructions)
            if not path.is_file():
                raise ConfigError(f"wise: instructions must be a text file with {{prompt}} and {{explanation}}; "
                                  f"'{path}' is none")
            self.instructions = path.read_text(encoding="utf-8")

    def samples(self) -> list[Sample]:
        return [
            Sample.build(id=str(entry["prompt_id"]), category=self.rules.category_of(int(entry["prompt_id"])) or "none",
                         references={"prompt_id": int(entry["prompt_id"]), "explanation": entry["Explanation"],
                                     "subcategory": entry.get("Subcategory"), "json_category": entry.get("Category")},
                         task="generation", prompt=entry["Prompt"])
            for entry in load_prompts(self.data_dir, self.rules.name)
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
            requests.append(VisionRequest(text, (image,), self.system))
            asked.append(index)
        verdicts = dict(zip(asked, vision_judge_all(self.judge, requests, self.parse, max_tokens=self.rules.max_tokens,
                                                    schedule=SCHEDULE)))
        records = []
        for index, (sample, _) in enumerate(items):
            base = {"prompt_id": sample.references["prompt_id"], "judge": self.judge.id}
            verdict = verdicts.get(index)
            if verdict is None:  # the official judge script skips a prompt without an image
                records.append({**base, "score": None, "missing_image": True, "judge_failed": False})
                continue
            scores = None if verdict.failed else verdict.value
            records.append({**base, **(scores or {}), "missing_image": False,
                            "judge_failed": verdict.failed, "judge_replies": verdict.replies,
                            "score": record_scores(scores)})
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        scored: list[tuple[int, float | None]] = []
        raw: dict[str, list[float]] = {key: [] for key in SCORE_KEYS}
        failures = missing = 0
        for sample in samples:
            record = records.get(sample.id, {"prompt_id": sample.references["prompt_id"], "score": None})
            failures += bool(record.get("judge_failed"))
            missing += bool(record.get("missing_image"))
            scored.append((int(record["prompt_id"]), record.get("score")))
            for key in SCORE_KEYS:
                if record.get(key) is not None:
                    raw[key].append(float(record[key]))
        counts = {"judge_failures": float(failures), "missing_images": float(missing)}
        try:
            metrics = summarize(scored, self.rules)
        except IncompleteResults as refused:
            log.error("%s", refused)
            return {**counts, "unscored_prompts": float(len(refused.missing))}
        metrics.update({key: sum(values) / len(values) for key, values in raw.items() if values})
        return {**metrics, **counts, "unscored_prompts": 0.0}
