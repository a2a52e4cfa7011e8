"""MM-Vet: 218 open-ended questions on images, graded 0–1 by an LLM judge, per capability.

Data: hub dataset `lmms-lab/MMVet`, split `test` (columns question_id, image, question,
answer, capability — a comma-separated subset of rec, ocr, know, gen, spat, math), its latest
revision unless `revision` is given; `--data-dir` may hold a local copy (see `tasks/hub_data.py`).
The prompt is the question as published (the official inference scripts send it alone).

Grading (`tasks/scorers/mm_vet_rules.py`) follows the official GPT-4 grader
(`mm-vet_evaluator.py`, rules compared at yuweihao/MM-Vet@acde843): the few-shot
grading table with the answer's row appended, replies of up to 3 tokens, the score read as the
text before the first space. Which judge grades is the caller's choice (`judge=`: a `Judge`, a
`JudgeConfig` or its dict; else the UMM_JUDGE_* environment); published numbers used GPT-4
(gpt-4-0613), so scores from other judges are comparable with each other, not with the paper.
The judge id is in every record. `grader_prompt="official"` downloads the official evaluator
script (pinned commit) and uses its own prompt; a path to that script (or to a text file) works
offline; the default is this project's wording of the same rubric (a deliberate departure:
published numbers used the official prompt, so pass `grader_prompt="official"` to match them).

Unreadable judge replies (`official_retries`):
- True (default, as published numbers were made): the official retry loop (4 more tries with a
  format reminder at temperatures 0, 0.5, 1.0, 1.5, then a sixth request whose reply is
  discarded); still unreadable → score 0.0.
- False: one retry with the same prompt; still unreadable → no score (`score: None`), and the
  sample is left out of every average.
Either way the sample is marked `judge_failed` and counted in the `judge_failures` metric.

Metrics (the official report's units: percent, rounded to 1 decimal with numpy's rounding):
`overall`, `capability/<cap>` (a question counts for each of its capabilities) and
`integration/<caps>` (per exact capability combination, named by its capabilities sorted and
joined with "_"; the official names follow Python set order, which varies between processes),
plus `judge_failures` (a count). A judge reply "nan" is a NaN score, as officially, and every
total it enters is NaN. A question without a prediction (no reply text, or no record) is an
error naming it, as the official script stops on it (a `KeyError`). One grading run; the paper
reports the mean of 5 (the official script's `--num_run`).

Records: the model's reply, the reference, the capabilities, the judge id, every judge reply,
the parsed judge score, `judge_failed`, and `score` (what the averages use).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, image_cell, load_rows
from tasks.judges.base import Judge, JudgeConfig, judge_config, judge_config_from_env, make_judge
from tasks.judges.cache import cached
from tasks.judges.parsing import ONE_RETRY, judge_all
from tasks.scorers.mm_vet_rules import (
    MAX_TOKENS,
    OFFICIAL_SCHEDULE,
    grading_prompt,
    harness_grader_prompt,
    load_grader_prompt,
    parse_score,
    percent,
)
from umm_harness.core.home import umm_home
from umm_harness.core.errors import ConfigError

HUB_ID = "lmms-lab/MMVet"
SPLIT = "test"
OFFICIAL_GRADER_COMMIT = "c7ff270d86fb79c42346214366f4192c0e08b042"
OFFICIAL_GRADER_URL = f"https://raw.githubusercontent.com/yuweihao/MM-Vet/{OFFICIAL_GRADER_COMMIT}/mm-vet_evaluator.py"


class MMVetOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    judge: str  # the judge id
    official_retries: bool = True
    grader_prompt: str = "harness"  # "harness", "official", or a file path
    decimals: int = 1
    revision: str | None = None


def capabilities(cell: Any) -> list[str]:
    """A row's capabilities: the hub's "rec,ocr" string or the original JSON's list."""
    parts = cell.split(",") if isinstance(cell, str) else list(cell or [])
    return [part.strip() for part in parts if part and part.strip()]


def official_grader_prompt() -> str:
    """The official evaluator's prompt, downloaded once (pinned commit) into $UMM_HOME."""
    target = umm_home() / "benchmarks" / "mm_vet" / f"mm-vet_evaluator-{OFFICIAL_GRADER_COMMIT[:12]}.py"
    if not target.is_file():
        import requests

        try:
            response = requests.get(OFFICIAL_GRADER_URL, timeout=30)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ConfigError(
                f"mm_vet: could not download the official grader prompt from {OFFICIAL_GRADER_URL} "
                f"({type(exc).__name__}); download that file and pass grader_prompt=<its path>"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(response.text, encoding="utf-8")
    return load_grader_prompt(target)


class MMVetTask(Task):
    name = "mm_vet"
    two_stage = True  # the judge can grade stored answers again, alone

    def __init__(self, data_dir: Path | None = None, *, judge: Judge | JudgeConfig | dict | None = None,
                 official_retries: bool = True, grader_prompt: str | Path = "harness",
                 cache_dir: Path | None = None, decimals: int = 1, revision: str | None = None):
        super().__init__(data_dir)
        if judge is None:
            judge = judge_config_from_env()
            if judge is None:
                raise ConfigError(
                    "mm_vet is scored by an LLM judge and none is configured: pass judge= (a JudgeConfig, e.g. "
                    "{backend: openai, base_url: ..., model: ...}) or set UMM_JUDGE_BASE_URL and UMM_JUDGE_MODEL "
                    "(an OpenAI-compatible endpoint such as `vllm serve`); the paper's judge is gpt-4-0613"
                )
        if isinstance(judge, dict):
            judge = judge_config(judge)
        if isinstance(judge, JudgeConfig):
            if cache_dir is not None and judge.cache_dir is None:
                judge = judge.model_copy(update={"cache_dir": cache_dir})
            judge = make_judge(judge)
        self.judge = cached(judge, cache_dir)
        if grader_prompt == "harness":
            self.grader_prompt = harness_grader_prompt()
        elif grader_prompt == "official":
            self.grader_prompt = official_grader_prompt()
        else:
            path = Path(grader_prompt)
            if not path.is_file():
                raise ConfigError(f"mm_vet: grader_prompt must be 'harness', 'official' or a file; '{path}' is none")
            self.grader_prompt = load_grader_prompt(path)
        self.options = MMVetOptions(judge=self.judge.id, official_retries=official_retries,
                                    grader_prompt=str(grader_prompt), decimals=decimals, revision=revision)

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, revision=self.options.revision)
        samples = []
        for _, row in load_rows(source, self.data_dir, self.name):
            caps = capabilities(row.get("capability"))
            samples.append(Sample.build(
                id=str(row["question_id"]), category="_".join(sorted(caps)) or "none",
                references={"question": str(row["question"]), "answer": str(row["answer"]), "capabilities": caps},
                task="understanding", prompt=str(row["question"]), images=[image_cell(row["image"])],
            ))
        return samples

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        """Records for many samples, the judge asked in batches (one call per attempt)."""
        for sample, outputs in items:
            if not outputs or outputs[0].text is None:
                raise _no_prediction(sample.id)
        replies = [outputs[0].text for _, outputs in items]
        prompts = [grading_prompt(self.grader_prompt, sample.references["question"], sample.references["answer"],
                                  reply) for (sample, _), reply in zip(items, replies)]
        official = self.options.official_retries
        verdicts = judge_all(self.judge, prompts, parse_score, max_tokens=MAX_TOKENS,
                             schedule=OFFICIAL_SCHEDULE if official else ONE_RETRY)
        records = []
        for (sample, _), reply, verdict in zip(items, replies, verdicts):
            failed_score = 0.0 if official else None
            records.append({
                "reply": reply, "reference": sample.references["answer"],
                "capabilities": sample.references["capabilities"], "judge": self.judge.id,
                "judge_reply": verdict.reply, "judge_replies": verdict.replies, "judge_score": verdict.value,
                "judge_failed": verdict.failed, "score": failed_score if verdict.failed else verdict.value,
            })
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        failures = 0
        for sample in samples:  # dataset order, sums accumulated as the official script does
            if sample.id not in records:
                raise _no_prediction(sample.id)
            record = records[sample.id]
            failures += bool(record.get("judge_failed"))
            score = record["score"]
            if score is None:  # a failure without official retries: in no average
                continue
            caps = sample.references["capabilities"]
            keys = ["overall", *(f"capability/{cap}" for cap in dict.fromkeys(caps))]
            keys.append(f"integration/{'_'.join(sorted(set(caps))) or 'none'}")
            for key in keys:
                totals[key] += score
                counts[key] += 1
        metrics = {key: percent(totals[key], counts[key], self.options.decimals) for key in sorted(totals)}
        metrics["judge_failures"] = float(failures)
        return metrics


def _no_prediction(question_id: str) -> ValueError:
    return ValueError(f"mm_vet: question {question_id} has no prediction; the official evaluator stops on it "
                      "(KeyError), so no MM-Vet score is computed; re-run generation for it")
