"""MathVista testmini: 1000 math questions on images, multi-choice and free-form.

Data: hub dataset `AI4Math/MathVista`, split `testmini` (columns pid, question, decoded_image,
choices, unit, precision, answer, question_type, answer_type, query, metadata with skills …),
latest revision unless `revision` is given; `--data-dir` may hold a local copy (see
`tasks/hub_data.py`). The prompt is the row's `query`: the official prompt, with the hint that
says which answer form is wanted (an option letter, an integer, a float with n decimals, a list).

Answers are read in two steps, as officially (lupantech/MathVista@53d5258
`evaluation/extract_answer.py`, `evaluation/calculate_score.py`): rules first, on the raw reply
(`tasks/scorers/mathvista_rules.py`; the official `quick_extract` and
`ignore_empty_extractions` are task options of their own, off by default as officially), and
only when they find nothing, an LLM extraction through `extractor(reply, problem)` —
`problem` holds the row's query, question, question/answer types, choices, unit and precision,
which is what the official extraction prompt (`evaluation/prompts/ext_ans.py`, few-shot) is
built from. Without an extractor such a sample is recorded `extracted_by: "unavailable"` with
`correct: None`: not right, not wrong, and counted in `extraction_unavailable`, so accuracy is
then a lower bound. An extractor raising `JudgeFailure` (a judge whose replies stayed unreadable,
see `tasks/judges/extraction.py`) gives `extracted_by: "judge_failed"`: the failure's fallback (the
official empty extraction) is scored, and the sample is counted in `judge_failures`. Any other
exception from an extractor stops scoring (a broken judge must not look like a
wrong answer); outputs are cached, so scoring can simply be run again.

Metrics (fractions over all samples, as the official `calculate_score.py`): `overall`,
`question_type/<type>`, `answer_type/<type>`, `skill/<skill>` (a question counts for each of its
skills), `extraction_unavailable` (a count), and with an extractor `judge_failures` (a count).
The corrected mode (`corrected=True`, opt-in, tagged `umm.scoring_mode=corrected`) logs its
metrics under `mathvista/corrected/...`. Departure: the official fine-grained tables (by
language, source, grade, …) are not reported; only the ones above.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, Row, image_cell, load_rows
from tasks.judges.base import JudgeFailure
from tasks.scorers.mathvista_rules import matches, normalize, prefetch

HUB_ID = "AI4Math/MathVista"
SPLIT = "testmini"

Extractor = Callable[[str, dict[str, Any]], str]


class MathVistaOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    corrected: bool = False  # stripped replies, letter and list rules, lower-case letters, lists element-wise
    quick_extract: bool = False  # the official --quick_extract
    ignore_empty_extractions: bool = False  # the official --ignore_empty_extractions
    extractor: str | None = None  # which extractor ran, for the record
    revision: str | None = None


class MathVistaTask(Task):
    name = "mathvista"

    def __init__(self, data_dir: Path | None = None, *, extractor: Extractor | None = None,
                 judge: Any = None, corrected: bool = False, quick_extract: bool = False,
                 ignore_empty_extractions: bool = False, revision: str | None = None):
        super().__init__(data_dir)
        if extractor is None and judge is not None:  # a recipe's judge: block (JudgeConfig, dict or Judge)
            from tasks.judges import judge_extractor, make_judge

            extractor = judge_extractor(judge if hasattr(judge, "complete") else make_judge(judge))
        self.extractor = extractor
        name = None if extractor is None else getattr(extractor, "__name__", type(extractor).__name__)
        self.options = MathVistaOptions(corrected=corrected, extractor=name, revision=revision,
                                        quick_extract=quick_extract, ignore_empty_extractions=ignore_empty_extractions)
        self.scoring_mode = "corrected" if corrected else "official"

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, revision=self.options.revision)
        return [self._sample(row) for _, row in load_rows(source, self.data_dir, self.name)]

    @staticmethod
    def _sample(row: Row) -> Sample:
        metadata = row.get("metadata") or {}
        problem = {
            "pid": str(row["pid"]), "query": row["query"], "question": row["question"],
            "question_type": row["question_type"], "answer_type": row["answer_type"],
            "choices": list(row.get("choices") or []), "unit": row.get("unit"), "precision": row.get("precision"),
        }
        return Sample.build(
            id=problem["pid"], category=str(metadata.get("task", row["question_type"])),
            references={**problem, "answer": str(row["answer"]), "skills": list(metadata.get("skills") or [])},
            task="understanding", prompt=row["query"],
            images=[image_cell(row.get("decoded_image") or row.get("image"))],
        )

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        ref = sample.references
        reply = outputs[0].text or ""
        record: dict[str, Any] = {"reply": reply, "reference": ref["answer"]}
        extracted = prefetch(reply, question_type=ref["question_type"], answer_type=ref["answer_type"],
                             choices=ref["choices"], quick_extract=self.options.quick_extract,
                             corrected=self.options.corrected)
        extracted_by = "rule"
        if extracted is None:
            if self.extractor is None:
                return {**record, "extracted": None, "extracted_by": "unavailable", "prediction": None,
                        "correct": None, "score": 0.0}
            problem = {key: value for key, value in ref.items() if key not in ("answer", "skills")}
            try:
                extracted, extracted_by = str(self.extractor(reply, problem)), "judge"
            except JudgeFailure as failure:
                extracted, extracted_by = str(failure.fallback or ""), "judge_failed"
        prediction = normalize(extracted, question_type=ref["question_type"], answer_type=ref["answer_type"],
                               choices=ref["choices"], precision=ref["precision"], corrected=self.options.corrected,
                               ignore_empty_extractions=self.options.ignore_empty_extractions)
        correct = matches(prediction, ref["answer"], answer_type=ref["answer_type"], corrected=self.options.corrected)
        return {**record, "extracted": extracted, "extracted_by": extracted_by, "prediction": prediction,
                "correct": correct, "score": float(correct)}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        buckets: dict[str, list[bool]] = defaultdict(list)
        unavailable = failures = 0
        for sample in samples:
            record = records.get(sample.id, {})
            unavailable += record.get("extracted_by") == "unavailable"
            failures += record.get("extracted_by") == "judge_failed"
            right = record.get("correct") is True
            ref = sample.references
            keys = ["overall", f"question_type/{ref['question_type']}", f"answer_type/{ref['answer_type']}"]
            keys += [f"skill/{skill.replace(' ', '_')}" for skill in ref["skills"]]
            for key in keys:
                buckets[key].append(right)
        metrics = {key: sum(flags) / len(flags) for key, flags in sorted(buckets.items())}
        metrics["extraction_unavailable"] = float(unavailable)
        if self.extractor is not None:
            metrics["judge_failures"] = float(failures)
        return metrics
