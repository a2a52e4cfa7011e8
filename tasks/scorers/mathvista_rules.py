"""MathVista's answer rules: the rule prefetch, normalising an extraction, and the final match.

Follows lupantech/MathVista's `evaluation/extract_answer.py` (the rules tried before the LLM
extractor) and `evaluation/calculate_score.py` (normalisation and exact match against the
answer string), compared at commit 53d5258. The rules run on the raw reply, never stripped:
an empty reply extracts "", a reply that is exactly an option's text extracts it, a reply that
Python's `int` (integer answers) or `float` (float answers) accepts extracts that number
(`int`/`float` themselves allow surrounding whitespace, "1_000", "nan"). Nothing else is
read by rule: a bare option letter, a list literal, "1,000" all go to the LLM extractor, as
officially. Two official options, each off by default as in the official scripts:
`quick_extract` (before the extractor, the pattern `The answer is "(.*)"` and a full stop gives the quoted text) and
`ignore_empty_extractions` (an empty multi-choice extraction is no prediction instead of the
option closest to ""). Kept quirks (BENCHMARKS.md):
- integer answers are truncated, `int(float(x))`, so an extracted 3.7 counts as 3;
- for multi-choice, only "(x)" or a bare upper-case letter is read as a letter; anything else,
  a bare lower-case "b" included, is mapped to the option with the smallest edit distance;
- a list answer must match as a string, so "[1,2]" is not "[1, 2]".
The corrected mode (opt-in, metrics under `corrected/`) strips the reply before the rules,
reads a reply that is only an option letter or only a list literal `[...]` by rule, ignores
empty extractions, reads a lone lower-case letter as that option, and compares lists element
by element.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_BARE_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?")
_QUICK = re.compile(r'The answer is "(.*)"\.')


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def prefetch(reply: str, *, question_type: str, answer_type: str, choices: list[str], quick_extract: bool = False,
             corrected: bool = False) -> str | None:
    """The extraction the rules can make on their own; None means "ask the extractor"."""
    text = reply.strip() if corrected else reply
    if text == "":
        return ""
    if question_type == "multi_choice" and text in choices:
        return text
    if answer_type == "integer":
        try:
            return str(int(text))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(text))
        except ValueError:
            pass
    if quick_extract:
        quoted = _QUICK.search(text)
        if quoted:
            return quoted.group(1)
    if corrected and question_type == "multi_choice":
        letter = _BARE_LETTER.fullmatch(text)
        if letter and letter.group(1) in letters(len(choices)):
            return letter.group(1)
    if corrected and answer_type == "list" and isinstance(_literal(text), list):
        return text
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions each cost 1."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def normalize(
    extraction: str,
    *,
    question_type: str,
    answer_type: str,
    choices: list[str],
    precision: float | None,
    ignore_empty_extractions: bool = False,
    corrected: bool = False,
) -> str | None:
    """The extraction in the answer's own form (an option's text, an integer, a rounded float); None if impossible."""
    if question_type == "multi_choice":
        text = extraction.strip()
        if (ignore_empty_extractions or corrected) and not text:
            return None
        in_parens = re.findall(r"\(([a-zA-Z])\)", text)
        if in_parens:
            text = in_parens[0].upper()
        elif corrected and len(text) == 1 and text.isalpha():
            text = text.upper()
        options = letters(len(choices))
        if text in options:
            return choices[options.index(text)]
        distances = [edit_distance(text, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))  # type: ignore[arg-type]
    except (ValueError, OverflowError, TypeError):  # TypeError: a float question without a precision
        return None
    if answer_type == "list":
        return str(extraction)
    return None


def matches(prediction: str | None, answer: str, *, answer_type: str, corrected: bool = False) -> bool:
    """Exact match of the normalised prediction with the answer string (lists element-wise when corrected)."""
    if prediction is None:
        return False
    if corrected and answer_type == "list":
        predicted, expected = _literal(prediction), _literal(answer)
        if isinstance(predicted, list | tuple) and isinstance(expected, list | tuple):
            return list(predicted) == list(expected)
    return prediction == answer


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
