"""MME's rules: reading yes/no from a reply, and a subtask's score from its answers.

Follows the official `eval_tool/calculation.py` of the MME release (BradyFU/Awesome-Multimodal-
Large-Language-Models, branch Evaluation, `tools/eval_tool.zip` at dd29509). Its quirks are the
default (BENCHMARKS.md). The reply is the last tab-separated field of its answer-file line,
lower-cased and still ending in the line's newline, never stripped: an exact "yes"/"no" is
therefore never seen, and only the first 4 characters of `reply + "\n"` are looked at, "yes"
before "no" — "eyes" reads yes, "not sure", "none", "know" read no, and a reply with two
leading spaces ("  yes") is "other". acc+ pairs consecutive lines of a subtask's answer file,
not lines that share an image. A subtask's score is `acc * 100 + acc_plus * 100` (two
products, then the sum, as the official loop adds them).

Departure: a reply holding a tab or a newline would break the official answer-file line (the
official script then crashes or misreads the file); here the reply is always one field.
The corrected reading strips the reply and takes its first word only.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

YesNo = Literal["yes", "no", "other"]

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def read_yes_no(reply: str, *, corrected: bool = False) -> YesNo:
    """The official reading: "yes" or "no" anywhere in the first 4 characters of the unstripped
    reply and its line's newline, "yes" checked first."""
    if corrected:
        first = re.match(r"[a-z]+", reply.strip().lower())
        word = first.group(0) if first else ""
        return word if word in ("yes", "no") else "other"  # type: ignore[return-value]
    head = (reply.lower() + "\n")[:4]  # the official exact "yes"/"no" test never fires on a line
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


class SubtaskScore(BaseModel):
    acc: float  # fraction of questions answered right
    acc_plus: float  # fraction of images with both questions right
    score: float  # acc × 100 + acc_plus × 100, at most 200


def consecutive_pairs(flags: list[bool]) -> list[list[bool]]:
    """Lines 0-1, 2-3, …: how the official script forms an image's pair (a lone last line stays alone)."""
    return [flags[i : i + 2] for i in range(0, len(flags), 2)]


def subtask_score(flags: list[bool], pairs: list[list[bool]]) -> SubtaskScore:
    """Score of one subtask from per-question correctness and the pairs acc+ is counted over.

    A pair is right only with two right answers, so a lone line (an odd count, which the
    official script would refuse) never counts for acc+.
    """
    acc = sum(flags) / len(flags) if flags else 0.0
    acc_plus = sum(len(p) == 2 and all(p) for p in pairs) / len(pairs) if pairs else 0.0
    return SubtaskScore(acc=acc, acc_plus=acc_plus, score=acc * 100 + acc_plus * 100)
