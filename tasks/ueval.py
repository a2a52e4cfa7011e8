"""UEval: 1000 questions whose answers need both text and images, judged rubric item by rubric item.

Data: hub dataset `zlab-princeton/UEval` (the official evaluator's default), split `test`, via
`tasks/hub_data.py` (`--data-dir` may hold the parquet shards as the hub stores them). Schema,
as published on the hub for the same release (`primerL/UEval`; the zlab-princeton copy could
not be inspected from here and is assumed identical): `id`, `prompt`, `text_ref`,
`image_ref` (list of images; references, unused in scoring), `task_type` (space, textbook,
diagram, paper, art, life, tech, exercise), `question_type`, `text_rubrics` (list of
`{criterion, tags}`), `image_rubrics` (list of `{criterion, tags, type}`).

Generation: a question needs a text answer and generated image(s). The harness's request
kinds produce one or the other, so each question is two samples: `<id>/text` (an
understanding request with the question, no image) and `<id>/image` (a generation request with
the question as prompt). The image half is scored after its text half (the runner scores in
sample order), so "open" image criteria see the model's text answer as the official evaluator
shows it; should the text half be missing, the image half is judged with an empty text answer
(as the official evaluator does for a missing answer) and marked `text_answer_missing`.
A backbone that writes text and images in one reply is not served better by this split; the
contract would need an interleaved request kind for that.

Scoring (`tasks/scorers/ueval_rules.py`, official rules and the deviations listed there): the
judge (`judge=`: a vision judge, a `JudgeConfig` or its dict, else the UMM_JUDGE_* environment;
the paper's is Gemini-2.5-Pro, so other judges' numbers are comparable with each other only)
answers each criterion with JSON `criteria_met`; one retry, then a counted failure.

Metrics (percent, as the leaderboard): `overall` (mean over tasks of the task score), one per
task (mean question score: the mean of its text and image rates), `text` and `image` (the
official summary: mean rate over questions that have one), `judge_failures`,
`text_answer_missing` (counts).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

from tasks.base import Output, Sample
from tasks.hub_data import HubSource, load_rows
from tasks.judged import JudgedTask
from tasks.judges.parsing import ONE_RETRY
from tasks.judges.vision import VisionRequest, vision_judge_all
from tasks.scorers.ueval_rules import (
    MAX_TOKENS,
    SYSTEM,
    criterion_text,
    dataset_question_type,
    image_prompt,
    official_question_type,
    parse_criteria_met,
    question_score,
    rate,
    text_prompt,
)

HUB_ID = "zlab-princeton/UEval"
SPLIT = "test"
TEXT, IMAGE = "text", "image"


class UEvalTask(JudgedTask):
    name: ClassVar[str] = "ueval"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, cache_dir: Path | None = None,
                 question_type: Literal["official", "dataset"] = "official", hub_id: str = HUB_ID,
                 revision: str | None = None):
        super().__init__(data_dir, judge, cache_dir)
        if question_type not in ("official", "dataset"):
            raise ValueError("question_type must be 'official' or 'dataset'")
        self.question_type = question_type
        self.source = HubSource(hub_id=hub_id, split=SPLIT, revision=revision)
        self._text_answers: dict[str, str] = {}

    def scoring_options(self) -> str:
        return f";question_type={self.question_type}"

    def samples(self) -> list[Sample]:
        samples = []
        for _, row in load_rows(self.source, self.data_dir, self.name):
            item = str(row["id"])
            qtype = official_question_type(row) if self.question_type == "official" else dataset_question_type(row)
            refs = {
                "item": item, "task_type": str(row.get("task_type") or "unknown"), "question": str(row["prompt"]),
                "question_type": qtype,
                "text_rubrics": [criterion_text(r) for r in row.get("text_rubrics") or []],
                "image_rubrics": [criterion_text(r) for r in row.get("image_rubrics") or []],
            }
            category = refs["task_type"]
            samples.append(Sample.build(id=f"{item}/{TEXT}", category=category, references={**refs, "part": TEXT},
                                        group=item, task="understanding", prompt=refs["question"]))
            samples.append(Sample.build(id=f"{item}/{IMAGE}", category=category, references={**refs, "part": IMAGE},
                                        group=item, task="generation", prompt=refs["question"]))
        return samples

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        for sample, outputs in items:  # text halves first: their answers feed open image criteria
            if sample.references["part"] == TEXT:
                self._text_answers[sample.references["item"]] = next((o.text for o in outputs if o.text), "") or ""
        requests: list[VisionRequest] = []
        owners: list[int] = []
        notes: dict[int, dict[str, Any]] = {}
        for index, (sample, outputs) in enumerate(items):
            refs = sample.references
            if refs["part"] == TEXT:
                answer = self._text_answers[refs["item"]]
                for criterion in refs["text_rubrics"]:
                    requests.append(VisionRequest(text_prompt(refs["question"], answer, criterion), (), SYSTEM))
                    owners.append(index)
                notes[index] = {"answer": answer}
            else:
                missing_text = refs["item"] not in self._text_answers
                answer = self._text_answers.get(refs["item"], "")
                images = tuple(image for output in outputs for image in output.images)
                for criterion in refs["image_rubrics"]:
                    prompt = image_prompt(refs["question"], answer, criterion, refs["question_type"])
                    requests.append(VisionRequest(prompt, images, SYSTEM))
                    owners.append(index)
                notes[index] = {"images": len(images), "text_answer_missing": missing_text}
        verdicts = vision_judge_all(self.judge, requests, parse_criteria_met, max_tokens=MAX_TOKENS,
                                    schedule=ONE_RETRY) if requests else []
        per_item: dict[int, list[Any]] = defaultdict(list)
        for owner, verdict in zip(owners, verdicts):
            per_item[owner].append(verdict)
        records = []
        for index, (sample, _) in enumerate(items):
            refs = sample.references
            criteria = refs["text_rubrics"] if refs["part"] == TEXT else refs["image_rubrics"]
            judged = per_item.get(index, [])
            flags = [bool(v.value) for v in judged if not v.failed]
            value = rate(flags)
            records.append({
                "item": refs["item"], "part": refs["part"], "task_type": refs["task_type"],
                "question_type": refs["question_type"], "judge": self.judge.id, **notes[index],
                "criteria": [{"criterion": c, "met": None if v.failed else bool(v.value), "failed": v.failed,
                              "replies": v.replies} for c, v in zip(criteria, judged)],
                "judge_failures": sum(v.failed for v in judged), "rate": value,
                "score": value if value is not None else 0.0,
            })
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        by_item: dict[str, dict[str, float | None]] = {}
        item_task: dict[str, str] = {}
        weights: dict[str, int] = defaultdict(int)  # how often each question is present (resampling)
        failures = missing_text = 0
        text_rates: list[float] = []
        image_rates: list[float] = []
        for sample in samples:
            record = records.get(sample.id)
            if record is None:
                continue
            failures += int(record.get("judge_failures", 0))
            missing_text += bool(record.get("text_answer_missing"))
            item = record["item"]
            by_item.setdefault(item, {TEXT: None, IMAGE: None})[record["part"]] = record["rate"]
            item_task[item] = record["task_type"]
            if record["part"] == TEXT:
                weights[item] += 1
                if record["rate"] is not None:
                    text_rates.append(record["rate"])
            elif record["rate"] is not None:
                image_rates.append(record["rate"])
        per_task: dict[str, list[float]] = defaultdict(list)
        for item, rates in by_item.items():
            value = question_score(rates[TEXT], rates[IMAGE])
            if value is not None:
                per_task[item_task[item]] += [value] * max(weights.get(item, 0), 1)
        metrics = {task: 100.0 * sum(values) / len(values) for task, values in per_task.items() if values}
        if metrics:
            metrics["overall"] = sum(metrics.values()) / len(metrics)
        if text_rates:
            metrics["text"] = 100.0 * sum(text_rates) / len(text_rates)
        if image_rates:
            metrics["image"] = 100.0 * sum(image_rates) / len(image_rates)
        metrics["judge_failures"] = float(failures)
        metrics["text_answer_missing"] = float(missing_text)
        return metrics
