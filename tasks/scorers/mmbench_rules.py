"""MMBench's rule path: reading an option from a reply, and rotating a question's options.

Follows VLMEvalKit's current matching (`vlmeval/utils/matching_util.py`, compared at commit
e8e78f0) and its CircularEval (`mcq_circular_eval` with exact matching, i.e. no LLM judge).
Kept quirks (BENCHMARKS.md):
- a reply holding "Failed to obtain answer via API" names no letter (not even a refusal's
  "Z"); only the option-text match below can still read it;
- a letter is read when exactly one option letter is a token of the reply (after
  `.()[],:;!*#{}` become spaces) and its first occurrence is among the last tokens
  (index > tokens − 5), so the article in "A dog." reads as option A;
- failing that, "answer is X" / "correct answer is X" (any case, X one of A–D, optional `**`
  around it) names X when X is an option: "The answer is Because…" reads B;
- otherwise an option's text is looked for as a substring of the reply ("cat" is inside
  "concatenate"), only in replies at most twice as long as all option texts together, and
  only when exactly one option matches.
Options and replies pass through pandas tables officially (TSV questions, xlsx predictions):
a cell that pandas reads as missing ("", "NA", "None", "null", …) is no option, and such a
reply is the text "nan".
Which groups are scored, and how a group is judged, is in `tasks/mmbench.py`.
"""

from __future__ import annotations

import math
import re
from typing import Any

# VLMEvalKit reports MMBench's level-2 abilities by these short names.
L2_ABBREVIATIONS = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}

# Refusals VLMEvalKit maps to the never-right option "Z".
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = ".()[],:;!*#{}"
_API_FAILURE = "Failed to obtain answer via API"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# The strings pandas' readers take for a missing value by default (`keep_default_na`).
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def table_cell(value: Any) -> str | None:
    """A cell as it comes back from the official pandas tables: its text, or None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return None if text in PANDAS_NA else text


def table_reply(reply: str | None) -> str:
    """A reply after the official prediction table's round trip: a missing one reads "nan"."""
    cell = table_cell(reply)
    return "nan" if cell is None else cell


def read_letter(reply: str, choices: dict[str, str]) -> str | None:
    """An option letter named as a token near the end of the reply, or after "answer is" ("Z" for a refusal)."""
    if _API_FAILURE in reply:
        return None
    if any(refusal in reply for refusal in _REFUSALS):
        return "Z"
    spaced = reply
    for char in _SEPARATORS:
        spaced = spaced.replace(char, " ")
    tokens = spaced.split()
    named = [letter for letter in choices if letter in tokens]
    if len(named) == 1 and tokens.index(named[0]) > len(tokens) - 5:
        return named[0]
    if not named and "Z" in tokens:
        return "Z"
    said = _ANSWER_IS.search(reply)
    if said and said.group(1).upper() in choices:
        return said.group(1).upper()
    return None


def read_text(reply: str, choices: dict[str, str]) -> str | None:
    """The one option whose text is inside a reply that is not much longer than the options."""
    reply = reply.lower()
    if len(reply) > 2 * sum(len(text) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if text.lower() in reply]
    return found[0] if len(found) == 1 else None


def read_option(reply: str | None, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer` on the reply as the prediction table gives it back: a letter
    first, an option's text second, else nothing."""
    reply = table_reply(reply)
    return read_letter(reply, choices) or read_text(reply, choices)


def rotate(texts: list[str], answer: str, k: int) -> tuple[list[str], str]:
    """Rotation k of a question (ABCD → BCDA for k=1): the option texts and where the answer moved."""
    n = len(texts)
    rotated = [texts[(i + k) % n] for i in range(n)]
    return rotated, chr(ord("A") + (ord(answer) - ord("A") - k) % n)
