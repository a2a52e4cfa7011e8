"""MM-Vet's grading rules: the judge prompt, reading the judge's score, and the official totals.

Follows yuweihao/MM-Vet's `mm-vet_evaluator.py` (GPT-4 grader):
- Prompt: an instruction (compare prediction with ground truth; `<AND>` means every element must
  be present for full credit, `<OR>` that any one is enough; a score from 0.0 to 1.0 in steps of
  0.1; fill in the last cell), then a Markdown table `Question | Ground truth | Prediction |
  Correctness` of graded examples, then the row to grade, `question | answer | prediction | `
  with an empty last cell. The answer's `<AND>` / `<OR>` get a space on each side, as officially.
  The instruction and the example rows here are this project's own words with the official
  structure (partial credit for half of an `<AND>` answer, a long explanation scored partly
  and fully); `load_grader_prompt` reads the official wording from the evaluator script instead.
- Reply: up to 3 tokens at temperature 0; the score is the text before the first single space,
  stripped, read as a float, accepted unless above 1 or below 0. So "0.6 because…" reads 0.6,
  "1.0\n" reads 1.0, but " 0.6" (a leading space) and "0.6," do not read; "nan" reads as NaN
  (NaN fails neither comparison), and a NaN score makes every total it is summed into NaN.
- Retries (the official loop): the prompt again with a request for the digit appended, at
  temperatures 0, 0.5, 1.0, 1.5 (so the schedule is 0, 0, 0.5, 1.0, 1.5); after the fifth
  unreadable reply the official loop sends a sixth request (at 2.0), discards its reply and
  scores 0.0. The sixth request is sent here too and its reply recorded, never read.
- Totals: per capability, sum of scores / count × 100, rounded with numpy (`np.round`, half to
  even on the binary value ×10: 1.25 → 1.2, and 0.15 → 0.2 where Python's `round` gives 0.1).

Rules checked against yuweihao/MM-Vet@acde843 `mm-vet_evaluator.py` (unchanged since c7ff270,
the commit `grader_prompt="official"` downloads). Departures: the grader
prompt and the retry reminder are this project's words with the official structure (the
official prompt is used with `grader_prompt="official"`; the reminder stays ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from tasks.judges.parsing import Attempt, ParseError

MAX_TOKENS = 3

INSTRUCTION = (
    "Grade how correct an AI model's prediction is, judged against the ground truth. In a ground truth, "
    "<AND> joins parts that must all appear in the prediction for it to be fully right, and <OR> joins "
    "alternatives of which any single one makes it fully right. Give a correctness score of 0.0 (completely "
    "wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9 or 1.0 (completely right). Fill in only the empty "
    "last cell of the table with the score."
)

_CARTOON_TRUTH = (
    "The cartoon shows a fish teaching a class of fish how to climb a tree. It mocks tests that judge everyone "
    "by one skill, whatever each of them is actually good at, since a fish can never pass such a test."
)
EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    ("Which two numbers solve the equation?", "2 <AND> -3", "x = 4", "0.0"),
    ("Which two numbers solve the equation?", "2 <AND> -3", "x = 2", "0.5"),
    ("Which two numbers solve the equation?", "2 <AND> -3", "x = -3", "0.5"),
    ("Which two numbers solve the equation?", "2 <AND> -3", "x = 2 or x = 3", "0.5"),
    ("Which two numbers solve the equation?", "2 <AND> -3", "x = 2 and x = -3", "1.0"),
    ("What fruit is in the bowl?", "apple <OR> green apple", "A green apple.", "1.0"),
    ("Why is this cartoon funny?", _CARTOON_TRUTH, "A fish is teaching other fish to climb trees.", "0.4"),
    ("Why is this cartoon funny?", _CARTOON_TRUTH,
     "A fish teaches fish to climb a tree, which none of them can ever do. The joke is aimed at exams that "
     "measure every student with the same single ability, even when it does not suit them.", "1.0"),
)

RETRY_SUFFIX = "\nReply with the correctness score only, a number from 0.0 to 1.0: "

OFFICIAL_SCHEDULE: tuple[Attempt, ...] = (
    Attempt(0.0), *(Attempt(temperature, RETRY_SUFFIX) for temperature in (0.0, 0.5, 1.0, 1.5)),
    Attempt(2.0, RETRY_SUFFIX, discarded=True),
)


def harness_grader_prompt() -> str:
    """The grading instruction and example table, as this project words them."""
    rows = "\n".join(" | ".join(row) for row in EXAMPLES)
    return f"{INSTRUCTION}\n\nQuestion | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n{rows}\n"


def load_grader_prompt(path: Path) -> str:
    """The grader prompt from a file: the official `mm-vet_evaluator.py` (its module-level `prompt`) or plain text."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix != ".py":
        return text
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompt" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise ValueError(f"{path} has no module-level `prompt = \"\"\"...\"\"\"` string (the MM-Vet grader prompt)")


def grading_prompt(grader_prompt: str, question: str, answer: str, prediction: str) -> str:
    """The grader prompt plus the row to grade, its last cell left empty (official layout)."""
    truth = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return grader_prompt + "\n" + " | ".join([question, truth, prediction, ""])


def parse_score(reply: str) -> float:
    """The official reading: text before the first space, stripped, as a float not above 1 nor below 0 (NaN passes)."""
    head = reply.split(" ")[0].strip()
    try:
        score = float(head)
    except ValueError:
        raise ParseError(f"not a number: {head[:40]!r}") from None
    if score > 1.0 or score < 0.0:
        raise ParseError(f"score {head!r} is outside [0, 1]")
    return score


def official_round(value: float, decimals: int = 1) -> float:
    """Rounding as the official totals do it (numpy: the binary value scaled, then half to even)."""
    return float(np.round(np.float64(value), decimals))


def percent(total: float, count: int, decimals: int = 1) -> float:
    """sum / count × 100, computed and rounded in the official order."""
    return official_round(np.float64(total) / count * 100, decimals)
