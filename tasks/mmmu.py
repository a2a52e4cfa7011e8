"""MMMU validation: 900 college-level questions over 30 subjects in 6 disciplines.

Data: hub dataset `MMMU/MMMU`, one config per subject, split `validation` (columns id,
question, options as the text of a Python list, answer, image_1 … image_7, question_type, …),
latest revision unless `revision` is given; `--data-dir` may hold a local copy (see
`tasks/hub_data.py`). Subjects are read in the official scripts' (alphabetical) order. Every
non-empty image column is sent, in number order, matching the `<image k>` marks in the text.
Prompts are the official ones (`mmmu/configs/llava1.5.yaml`): the question, options as
"(A) …" lines, then "Answer with the option's letter from the given choices directly.";
open questions end with "Answer the question using a single word or phrase.". An open answer
stored as a list literal ("['24/7', '3.429']") is a list of accepted answers, as in the
official answer file; so is a multiple-choice answer given as a list ("['A', 'C']"): as the
official `eval_multi_choice` does, the prediction is right when it equals any member.

Scoring: the official `mmmu/utils/eval_utils.py`, `main_eval_only.py` and
`main_parse_and_eval.py` (MMMU-Benchmark/MMMU@bb0b95a), reproduced in
`tasks/scorers/mmmu_rules.py`. A multiple-choice reply with nothing parseable gets a
random option, as officially: one `random.Random(42)` per run, drawn in sample order, so each
pick depends on how many fallbacks came before it. Since that order is only known across the
whole run, `score()` marks such a record `fallback` and `aggregate()` draws the picks in sample
order and writes them into the records (`extracted`, `correct`, `score`). The corrected mode
(`corrected=True`, opt-in, tagged `umm.scoring_mode=corrected`, metrics under `mmmu/corrected/`)
draws each pick from a generator seeded by the sample id alone, in `score()`, splits sentences
on the original text and accepts only plain decimal numbers. No other departure.

Metrics (fractions, micro-averaged as the official `calculate_ins_level_acc`): `overall`,
`discipline/<name>` (e.g. `discipline/art_and_design`) and `subject/<Subject>`. A question
without a record counts as wrong.
"""

from __future__ import annotations

import ast
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, Row, image_cell, load_rows
from tasks.scorers.mmmu_rules import (
    DISCIPLINES,
    SUBJECTS,
    open_correct,
    option_letters,
    parse_multi_choice,
    parse_open,
)

HUB_ID = "MMMU/MMMU"
SPLIT = "validation"
FALLBACK_SEED = 42  # the official eval_utils seeds `random` with 42 once, at import
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
MAX_IMAGES = 7


class MMMUOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    corrected: bool = False  # per-sample fallback seeds, real sentence split, plain numbers only
    revision: str | None = None


def _prompt(question: str, options: list[str]) -> str:
    if not options:
        return f"{question}\n{OPEN_INSTRUCTION}"
    lines = "".join(f"({letter}) {text}\n" for letter, text in zip(option_letters(len(options)), options))
    return f"{question}\n{lines}\n{MC_INSTRUCTION}"


def _literal_list(text: str) -> list[str] | None:
    """The items of a Python list literal (how the hub stores options and multi-answer golds), else None."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    return [str(item) for item in value] if isinstance(value, list) else None


def _gold(answer: str) -> list[str]:
    """Accepted answers: a list literal is several, anything else is one."""
    return (_literal_list(answer) if answer.lstrip().startswith("[") else None) or [answer]


class MMMUTask(Task):
    name = "mmmu"

    def __init__(self, data_dir: Path | None = None, *, corrected: bool = False, revision: str | None = None):
        super().__init__(data_dir)
        self.options = MMMUOptions(corrected=corrected, revision=revision)
        self.scoring_mode = "corrected" if corrected else "official"

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, configs=SUBJECTS, revision=self.options.revision)
        return [self._sample(str(subject), row) for subject, row in load_rows(source, self.data_dir, self.name)]

    def _sample(self, subject: str, row: Row) -> Sample:
        sample_id = str(row["id"])
        options = _literal_list(str(row.get("options") or "[]"))
        if options is None:
            reason = f"options are not a list literal: {row.get('options')!r}"
            return Sample(id=sample_id, category=subject, error=reason)
        multiple_choice = row["question_type"] == "multiple-choice"
        answer = str(row["answer"])
        cells = (image_cell(row.get(f"image_{k}")) for k in range(1, MAX_IMAGES + 1))
        images = [cell for cell in cells if cell is not None]
        return Sample.build(
            id=sample_id, category=subject,
            references={"question_type": row["question_type"], "options": options,
                        "answer": _gold(answer)},
            task="understanding", prompt=_prompt(str(row["question"]), options if multiple_choice else []),
            images=images,
        )

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        reply = outputs[0].text or ""
        gold = sample.references["answer"]
        if sample.references["question_type"] != "multiple-choice":
            parsed = parse_open(reply, corrected=self.options.corrected)
            correct = open_correct(gold, parsed, corrected=self.options.corrected)
            return {"reply": reply, "extracted": [str(p) for p in parsed], "reference": gold,
                    "correct": correct, "score": float(correct), "fallback": False}
        letters = option_letters(len(sample.references["options"]))
        pick = parse_multi_choice(reply, sample.references["options"])
        fallback = pick is None
        if fallback and self.options.corrected:
            pick = random.Random(f"mmmu-fallback:{sample.id}").choice(letters)
        correct = pick in gold
        return {"reply": reply, "extracted": pick, "reference": gold, "correct": correct,
                "score": float(correct), "fallback": fallback}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        if not self.options.corrected:
            self._draw_fallbacks(samples, records)
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for sample in samples:
            by_subject[sample.category].append(bool(records.get(sample.id, {}).get("correct")))

        def accuracy(subjects: list[str]) -> float:
            flags = [flag for subject in subjects for flag in by_subject.get(subject, [])]
            return sum(flags) / len(flags)

        metrics = {f"subject/{subject}": accuracy([subject]) for subject in by_subject}
        for discipline, subjects in DISCIPLINES.items():
            if any(subject in by_subject for subject in subjects):
                metrics[f"discipline/{discipline.lower().replace(' ', '_')}"] = accuracy(list(subjects))
        if by_subject:
            metrics["overall"] = accuracy(list(by_subject))
        return metrics

    @staticmethod
    def _draw_fallbacks(samples: list[Sample], records: dict[str, dict[str, Any]]) -> None:
        """The official random picks: one generator for the run, drawn in sample order."""
        rng = random.Random(FALLBACK_SEED)
        for sample in samples:
            record = records.get(sample.id)
            if record and record.get("fallback"):
                pick = rng.choice(option_letters(len(sample.references["options"])))
                correct = pick in sample.references["answer"]
                record.update(extracted=pick, correct=correct, score=float(correct))
