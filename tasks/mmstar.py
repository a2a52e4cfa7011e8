"""MMStar: 1500 vision-indispensable multiple-choice questions, 6 core capabilities × 3 axes each.

Data: hub dataset `Lin-Chen/MMStar`, split `val`, stored as one `mmstar.parquet` (columns index,
question, image, answer, category, l2_category, meta_info), its latest revision unless
`revision` is given; `--data-dir` may hold a local copy (see `tasks/hub_data.py`). A hub
question carries its options inline ("…\\nOptions: A: …, B: …, C: …, D: …"); they are split
into the stem and lettered options, the columns VLMEvalKit's own MMStar table has. A question
whose options cannot be read that way fails its sample (counted, the run goes on).

Prompt: VLMEvalKit's multiple-choice prompt (`ImageMCQDataset.build_prompt`): "Question: …",
"Options:" and one "X. text" line per option, then "Please select the correct answer from the
options above." — the prompt its published MMStar numbers were made with.

Scoring is VLMEvalKit's (open-compass/VLMEvalKit@e8e78f0 `image_mcq.py` `evaluate_heuristic`,
`multiple_choice.py` `mcq_vanilla_eval` and `report_acc`, `matching_util.py` `can_infer`): MMStar
is not a circular dataset, so each question is asked once; the reply goes through the pandas
round trip and `can_infer` as MMBench's (`tasks/scorers/mmbench_rules.py`), with exact matching
(no LLM judge): an unread reply is "Z", never right. Departure: VLMEvalKit's optional LLM-judge
matching is not offered.

Metrics (fractions, `np.mean` of the hits as `report_acc`): `overall`, `category/<capability>`
(the 6 core capabilities) and `l2/<axis>` (the 18 axes).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, Row, image_cell, load_rows
from tasks.scorers.mmbench_rules import read_option, table_cell, table_reply

HUB_ID = "Lin-Chen/MMStar"
SPLIT = "val"
FILE_NAME = "mmstar.parquet"
INSTRUCTION = "Please select the correct answer from the options above. \n"
_OPTIONS = re.compile(r"\n?\s*Options:\s*(?=A:)")
_LETTER = re.compile(r"(?:^|,\s*)([A-Z]):\s*")


class MMStarOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    revision: str | None = None


def split_question(text: str) -> tuple[str, dict[str, str]] | None:
    """The question stem and its options {"A": text, …} from a hub question, or None.

    Options are "A: …, B: …" in letter order; a comma inside an option's text stays in it
    unless it is followed by the next letter and a colon."""
    parts = _OPTIONS.split(text, maxsplit=1)
    if len(parts) != 2:
        return None
    stem, inline = parts
    choices: dict[str, str] = {}
    expected = iter(string.ascii_uppercase)
    marks = list(_LETTER.finditer(inline))
    for mark, following in zip(marks, [*marks[1:], None]):
        letter = mark.group(1)
        if letter != next(expected):  # "B: " inside option A's text, say: keep it in the text
            return None
        end = following.start() if following else len(inline)
        choices[letter] = inline[mark.end():end].strip()
    return (stem.strip(), choices) if len(choices) >= 2 else None


def prompt_text(stem: str, choices: dict[str, str]) -> str:
    options = "".join(f"{letter}. {text}\n" for letter, text in choices.items())
    return f"Question: {stem}\nOptions:\n{options}{INSTRUCTION}"


def _metric_key(name: str) -> str:
    """MLflow metric names allow word characters, `.`, `-`, `/` and spaces only."""
    return re.sub(r"[^\w.\- /]", "_", name)


class MMStarTask(Task):
    name = "mmstar"

    def __init__(self, data_dir: Path | None = None, *, revision: str | None = None):
        super().__init__(data_dir)
        self.options = MMStarOptions(revision=revision)

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, file_name=FILE_NAME, revision=self.options.revision)
        return [self._sample(row) for _, row in load_rows(source, self.data_dir, self.name)]

    @staticmethod
    def _sample(row: Row) -> Sample:
        sample_id, category = str(row["index"]), str(row["category"])
        parsed = split_question(str(row["question"]))
        if parsed is None:
            return Sample(id=sample_id, category=category,
                          error=f"question {sample_id}: no 'Options: A: …, B: …' in its text")
        stem, choices = parsed
        choices = {letter: text for letter, text in choices.items() if table_cell(text) is not None}
        return Sample.build(
            id=sample_id, category=category,
            references={"answer": str(row["answer"]).strip(), "choices": choices,
                        "l2_category": str(row["l2_category"])},
            task="understanding", prompt=prompt_text(stem, choices), images=[image_cell(row["image"])],
        )

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        reply = table_reply(outputs[0].text)
        extracted = read_option(reply, sample.references["choices"]) or "Z"
        correct = extracted == sample.references["answer"]
        return {"reply": reply, "extracted": extracted, "reference": sample.references["answer"],
                "correct": correct, "score": float(correct)}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for sample in samples:
            hit = records.get(sample.id, {}).get("correct") is True
            hits["overall"].append(hit)
            hits[f"category/{_metric_key(sample.category)}"].append(hit)
            hits[f"l2/{_metric_key(sample.references['l2_category'])}"].append(hit)
        return {name: float(np.mean(flags)) for name, flags in hits.items()}
