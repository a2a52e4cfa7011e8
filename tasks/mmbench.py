"""MMBench (English, dev) with CircularEval: a question counts only if every rotation is right.

Data: hub dataset `lmms-lab/MMBench`, config `en`, split `dev` (columns index, question, hint,
A–D, answer, category, L2-category, image, …), latest revision unless `revision` is given;
`--data-dir` may hold a local copy (see `tasks/hub_data.py`). As in VLMEvalKit's
MMBench_DEV_EN, the split already holds every rotation of every question as its own row:
rotation k of question g has index g + k·1e6. Data without such rows (base questions only) is
rotated here (ABCD → BCDA → …). Each rotation is its own sample, `<g>-r<k>`, so `score()` reads
one rotation and `aggregate()` judges the groups.

Prompt (LLaVA's MMBench prompt): the hint line when there is one, the question, "A. …" option
lines, then "Answer with the option's letter from the given choices directly.".

Scoring: VLMEvalKit's current rule path (open-compass/VLMEvalKit@e8e78f0: `matching_util.py`,
`multiple_choice.py` `mcq_circular_eval`, `image_mcq.py`), exact matching, no LLM judge
(`tasks/scorers/mmbench_rules.py` reads the letter). Option cells and replies are read as the
official pandas tables read them: "NA", "None", "" … are missing (an option dropped, a reply
"nan"). Kept quirks of `mcq_circular_eval`: only groups whose rotation 0 has a record
are scored (others are dropped silently; `skipped_groups` counts them here), rotations without
a record are not checked, and a group is judged rotation by rotation, stopping at the first
wrong one. The corrected mode (opt-in, metrics under `mmbench/corrected/`) scores every group
and counts a missing rotation as wrong. Departure: VLMEvalKit's LLM-judge matching (used when
a judge model is configured) is not offered; unread replies are simply wrong, as with its
`exact_matching` policy.

Metrics (fractions over scored groups, as VLMEvalKit's `report_acc`): `overall`,
`l2/<ability>` (CP, FP-S, FP-C, LR, RR, AR), `category/<category>`, and `skipped_groups`.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from operator import attrgetter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.base import Output, Sample, Task
from tasks.hub_data import HubSource, Row, image_cell, load_rows
from tasks.scorers.mmbench_rules import L2_ABBREVIATIONS, read_option, rotate, table_cell, table_reply

HUB_ID = "lmms-lab/MMBench"
CONFIG = "en"
SPLIT = "dev"
ROTATION_OFFSET = 1_000_000
INSTRUCTION = "Answer with the option's letter from the given choices directly."


class MMBenchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    corrected: bool = False  # score every group; a missing rotation is wrong
    revision: str | None = None


def _present(value: Any) -> bool:
    """An option or hint cell that holds text as VLMEvalKit's pandas tables read it ("NA", "None", … are missing)."""
    return table_cell(value) is not None


def _prompt(hint: Any, question: str, choices: dict[str, str]) -> str:
    lines = [str(hint)] if _present(hint) else []
    lines += [question, *(f"{letter}. {text}" for letter, text in choices.items()), INSTRUCTION]
    return "\n".join(lines)


def _ability(sample: Sample) -> str:
    return L2_ABBREVIATIONS.get(sample.references["l2_category"], sample.references["l2_category"])


def _metric_key(name: str) -> str:
    """MLflow metric names allow word characters, `.`, `-`, `/` and spaces only."""
    return re.sub(r"[^\w.\- /]", "_", name)


class MMBenchTask(Task):
    name = "mmbench"

    def __init__(self, data_dir: Path | None = None, *, corrected: bool = False, revision: str | None = None):
        super().__init__(data_dir)
        self.options = MMBenchOptions(corrected=corrected, revision=revision)
        self.scoring_mode = "corrected" if corrected else "official"

    def samples(self) -> list[Sample]:
        source = HubSource(hub_id=HUB_ID, split=SPLIT, configs=(CONFIG,), revision=self.options.revision)
        rows = [row for _, row in load_rows(source, self.data_dir, self.name)]
        pre_rotated = any(int(row["index"]) >= ROTATION_OFFSET for row in rows)
        samples = []
        for row in rows:
            index = int(row["index"])
            choices = {c: str(row[c]) for c in string.ascii_uppercase if c in row and _present(row[c])}
            answer = str(row["answer"]).strip()
            if pre_rotated:
                samples.append(self._sample(row, index % ROTATION_OFFSET, index // ROTATION_OFFSET, choices, answer))
                continue
            for k in range(len(choices)):
                texts, moved = rotate(list(choices.values()), answer, k)
                samples.append(self._sample(row, index, k, dict(zip(string.ascii_uppercase, texts)), moved))
        return samples

    @staticmethod
    def _sample(row: Row, group: int, rotation: int, choices: dict[str, str], answer: str) -> Sample:
        l2 = row.get("L2-category", row.get("l2-category"))
        return Sample.build(
            id=f"{group}-r{rotation}", category=str(row["category"]),
            references={"group": group, "rotation": rotation, "answer": answer, "choices": choices,
                        "l2_category": str(l2)},
            task="understanding", prompt=_prompt(row.get("hint"), str(row["question"]), choices),
            images=[image_cell(row["image"])],
        )

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        reply = table_reply(outputs[0].text)
        extracted = read_option(reply, sample.references["choices"])
        correct = extracted == sample.references["answer"]
        return {"reply": reply, "extracted": extracted, "reference": sample.references["answer"],
                "correct": correct, "score": float(correct),
                "group": sample.references["group"], "rotation": sample.references["rotation"]}

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        groups: dict[int, dict[int, Sample]] = defaultdict(dict)
        for sample in samples:
            groups[sample.references["group"]][sample.references["rotation"]] = sample

        hits: list[tuple[Sample, bool]] = []
        skipped = 0
        for members in groups.values():
            rotations = [members[k] for k in sorted(members)]
            if not self.options.corrected:
                if 0 not in members or members[0].id not in records:
                    skipped += 1
                    continue
                rotations = [s for s in rotations if s.id in records]
            # all() stops at the first wrong rotation, as VLMEvalKit's group check does.
            hit = all(records.get(s.id, {}).get("correct") is True for s in rotations)
            hits.append((rotations[0], hit))

        metrics: dict[str, float] = {"skipped_groups": float(skipped)}
        if not hits:
            return metrics
        metrics["overall"] = sum(hit for _, hit in hits) / len(hits)
        for prefix, key in (("l2", _ability), ("category", attrgetter("category"))):
            buckets: dict[str, list[bool]] = defaultdict(list)
            for head, hit in hits:
                buckets[key(head)].append(hit)
            for name, flags in sorted(buckets.items()):
                metrics[f"{prefix}/{_metric_key(name)}"] = sum(flags) / len(flags)
        return metrics
