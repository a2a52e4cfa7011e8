"""MME: 2374 yes/no questions, two per image, over 14 subtasks (10 perception, 4 cognition).

Data: hub dataset `lmms-lab/MME`, split `test` (columns question_id, image, question, answer,
category), its latest revision unless `revision` is given; `--data-dir` may hold a local copy
(see `tasks/hub_data.py`). The prompt is the question as published, which already ends with
"Please answer yes or no." (added when a row lacks it); chat templates are the adapter's job.

Scoring is the official one: `eval_tool/calculation.py` of the MME release
(BradyFU/Awesome-Multimodal-Large-Language-Models, branch Evaluation, `tools/eval_tool.zip` at
dd29509; rules and quirks in `tasks/scorers/mme_rules.py`). The reply is read unstripped, as
the last field of an answer-file line; acc+ pairs consecutive questions of a subtask in dataset
order, as the official script pairs lines of its answer files; a subtask scores
`acc * 100 + acc_plus * 100`. The corrected mode (`corrected=True`, opt-in, tagged
`umm.scoring_mode=corrected`, metrics under `mme/corrected/`) reads the first word of the
stripped reply and pairs questions that share an image instead.
Departures: a reply holding a tab or newline is one field here (it would break the official
answer file); a subtask whose question count is odd is scored (the official script asserts); a
totals line sums the subtasks present (the official script needs all 14 answer files).

Metrics: `perception` (sum of the 10 perception subtask scores, max 2000), `cognition` (sum of
the 4 cognition ones, max 800), and per subtask `<subtask>` (score, max 200), `<subtask>/acc`
and `<subtask>/acc_plus` (fractions). A question without a record counts as wrong.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, image_cell, load_rows
from tasks.scorers.mme_rules import COGNITION, PERCEPTION, consecutive_pairs, read_yes_no, subtask_score

HUB_ID = "lmms-lab/MME"
SPLIT = "test"
INSTRUCTION = "Please answer yes or no."


class MMEOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    corrected: bool = False  # first-word yes/no, and acc+ over questions sharing an image
    revision: str | None = None


class MMETask(Task):
    name = "mme"

    def __init__(self, data_dir: Path | None = None, *, corrected: bool = False, revision: str | None = None):
        super().__init__(data_dir)
        self.options = MMEOptions(corrected=corrected, revision=revision)
        self.scoring_mode = "corrected" if corrected else "official"

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, revision=self.options.revision)
        seen: dict[str, int] = defaultdict(int)
        samples = []
        for _, row in load_rows(source, self.data_dir, self.name):
            image_id = str(row["question_id"])
            sample_id = f"{image_id}:{seen[image_id]}"  # an image has two questions
            seen[image_id] += 1
            question = str(row["question"]).strip()
            prompt = question if question.endswith(INSTRUCTION) else f"{question} {INSTRUCTION}"
            samples.append(Sample.build(
                id=sample_id, category=str(row["category"]),
                references={"answer": str(row["answer"]).strip().lower(), "image": image_id},
                task="understanding", prompt=prompt, images=[image_cell(row["image"])],
            ))
        return samples

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        reply = outputs[0].text or ""
        extracted = read_yes_no(reply, corrected=self.options.corrected)
        correct = extracted == sample.references["answer"]
        return {"reply": reply, "extracted": extracted, "reference": sample.references["answer"],
                "correct": correct, "score": float(correct)}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        by_subtask: dict[str, list[tuple[str, bool]]] = defaultdict(list)
        for sample in samples:
            right = bool(records.get(sample.id, {}).get("correct"))
            by_subtask[sample.category].append((sample.references["image"], right))

        metrics: dict[str, float] = {}
        for subtask, answers in by_subtask.items():
            flags = [right for _, right in answers]
            if self.options.corrected:
                by_image: dict[str, list[bool]] = defaultdict(list)
                for image, right in answers:
                    by_image[image].append(right)
                pairs = list(by_image.values())
            else:
                pairs = consecutive_pairs(flags)
            result = subtask_score(flags, pairs)
            metrics[subtask] = result.score
            metrics[f"{subtask}/acc"] = result.acc
            metrics[f"{subtask}/acc_plus"] = result.acc_plus
        for total, members in (("perception", PERCEPTION), ("cognition", COGNITION)):
            present = [metrics[m] for m in members if m in by_subtask]
            if present:
                metrics[total] = sum(present)
        return metrics
