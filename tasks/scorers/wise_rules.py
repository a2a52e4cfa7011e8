"""WISE's scoring rules: judge replies, per-image scores, and the category-weighted WiScore.

Two official protocols of PKU-YuanGroup/WISE (rules compared at commit eb51174):

Legacy (`WISE_legacy/gpt_eval.py`, `WISE_legacy/Calculate.py`; the one published tables of
unified models report):
- A VLM judge sees the generated image with the prompt and its explanation (what a correct
  image must show) and gives Consistency, Realism and Aesthetic Quality, nominally 0, 1 or 2.
- WiScore per image = (0.7·consistency + 0.2·realism + 0.1·aesthetic) / 2.
- Categories come from the prompt id: cultural 1–400, time 401–567, space 568–700, biology
  701–800, physics 801–900, chemistry 901–1000; weights 0.4, 0.167, 0.133, 0.1, 0.1, 0.1.
- The reply parser reads `<name>: <digit>` for the three names (case-insensitive, optional `**`
  around the name, an optional ASCII colon — only ASCII: a full-width "：" is no score line) and
  takes a single digit, so "Consistency: 10" reads 1 and "Consistency: 5" reads 5 (kept, as
  the official parser keeps it, and averaged in); a later mention of a name overrides an
  earlier one. When no name matches, three or more bare lines holding 0–2 give the scores.

Verified (`vllm_eval.py`, `calculate_verified.py`; the current default upstream, a different
prompt set): one binary score per image, read from "Score: 0|1" (same colon rule), or from a
reply whose only bare digit line is 0 or 1; categories cultural 1–400, time 401–520, space
521–640, biology 641–760, physics 761–880, chemistry 881–1000; weights 0.4 and 0.12 × 5.

Both: a category score is the mean of its images' scores, every scored line counting (a prompt
id scored twice counts twice); ids outside 1–1000 are in no category; the judge is asked up to
3 times (same prompt, temperature 0), and an image still unread is absent from the results. If
any prompt id being evaluated is absent from the judged results (its reply never read, or its
image missing — the official judge script skips it), the official calculator refuses to report
anything; so does `summarize` (`IncompleteResults`, naming the ids). The overall WiScore needs
all six categories.

The judge instructions below follow the structure of the official ones (role, criteria, strict
output format, then the prompt and the explanation), written in this project's words.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tasks.judges.parsing import ParseError

SCORE_KEYS = ("consistency", "realism", "aesthetic_quality")
MAX_ATTEMPTS = 3  # the official MAX_EXTRACT_RETRIES: the same request, up to 3 times


class IncompleteResults(ValueError):
    """Prompt ids without a judged score: the official calculator reports nothing then."""

    def __init__(self, missing: list[int]):
        self.missing = missing
        shown = ", ".join(map(str, missing[:20])) + (f", … ({len(missing)} in all)" if len(missing) > 20 else "")
        super().__init__(f"wise: no judged score for prompt id(s) {shown}; the official calculator refuses to "
                         "report any WISE score then (re-generate the missing images or re-score)")


@dataclass(frozen=True)
class Protocol:
    name: str
    ranges: tuple[tuple[str, int, int], ...]
    weights: dict[str, float] = field(hash=False)
    max_tokens: int  # the official request's max_tokens

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.ranges)

    def category_of(self, prompt_id: int) -> str | None:
        for name, low, high in self.ranges:
            if low <= prompt_id <= high:
                return name
        return None


LEGACY = Protocol(
    "legacy",
    (("cultural", 1, 400), ("time", 401, 567), ("space", 568, 700), ("biology", 701, 800), ("physics", 801, 900),
     ("chemistry", 901, 1000)),
    {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1},
    max_tokens=2000,
)
VERIFIED = Protocol(
    "verified",
    (("cultural", 1, 400), ("time", 401, 520), ("space", 521, 640), ("biology", 641, 760), ("physics", 761, 880),
     ("chemistry", 881, 1000)),
    {"cultural": 0.4, "time": 0.12, "space": 0.12, "biology": 0.12, "physics": 0.12, "chemistry": 0.12},
    max_tokens=500,
)
PROTOCOLS = {p.name: p for p in (LEGACY, VERIFIED)}

_NAMED = re.compile(r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*:?\s*(\d)", re.IGNORECASE)
_BARE = re.compile(r"(?m)^\s*([0-2])\s*$")
_VERDICT = re.compile(r"\*{0,2}Score\*{0,2}\s*:?\s*([01])\b", re.IGNORECASE)
_BARE_BINARY = re.compile(r"(?m)^\s*([01])\s*$")


def category_of(prompt_id: int, protocol: Protocol = LEGACY) -> str | None:
    return protocol.category_of(prompt_id)


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


def parse_scores(reply: str) -> dict[str, float]:
    """The three legacy scores from a judge reply, any single digit kept; `ParseError` unless all three are there."""
    found: dict[str, float] = {}
    for name, digit in _NAMED.findall(reply or ""):
        found[name.lower().replace(" ", "_")] = float(digit)
    if not found:
        bare = _BARE.findall(reply or "")
        if len(bare) >= 3:
            found = dict(zip(SCORE_KEYS, (float(v) for v in bare[:3])))
    missing = [key for key in SCORE_KEYS if key not in found]
    if missing:
        raise ParseError(f"no {', '.join(missing)} score in the reply")
    return {key: found[key] for key in SCORE_KEYS}


def parse_verdict(reply: str) -> dict[str, float]:
    """The verified protocol's binary score: "Score: 0|1", else a single bare 0/1 line."""
    match = _VERDICT.search(reply or "")
    if match:
        return {"score": float(match.group(1))}
    bare = _BARE_BINARY.findall(reply or "")
    if len(bare) == 1:
        return {"score": float(bare[0])}
    raise ParseError("no `Score: 0` or `Score: 1` in the reply")


def summarize(scored: Iterable[tuple[int, float | None]], protocol: Protocol = LEGACY) -> dict[str, float]:
    """Per-category means and the weighted overall `wiscore` from (prompt id, score) pairs, a
    score of None marking an id without a judged score (then `IncompleteResults`)."""
    scored = list(scored)
    missing = sorted({prompt_id for prompt_id, value in scored if value is None})
    if missing:
        raise IncompleteResults(missing)
    per_category: dict[str, list[float]] = defaultdict(list)
    for prompt_id, value in scored:
        category = protocol.category_of(prompt_id)
        if category is not None:
            per_category[category].append(value)
    metrics = {name: sum(values) / len(values) for name, values in per_category.items() if values}
    if all(name in metrics for name in protocol.categories):
        metrics["wiscore"] = sum(protocol.weights[name] * metrics[name] for name in protocol.categories)
    return metrics


SYSTEM = ("You are an expert auditor of images made by text-to-image models. Score each image strictly, "
          "following the protocol you are given.")

INSTRUCTIONS = """Score the image below strictly and reply with the three scores only.

# How to score a generated image

You check whether a text-to-image model drew what was asked. Be severe: only images that meet the highest standard get top marks.

You receive:
- PROMPT: the text the model was given.
- EXPLANATION: what a correct image has to show, spelling out the knowledge the prompt refers to.

## The three scores

**Consistency (0-2)**: does the image show what the PROMPT asks for, as the EXPLANATION describes it?
- 0: key elements are missing, or the image contradicts the prompt.
- 1: some elements are there, others are missing or wrong; the intent is only partly met.
- 2: every element and detail of the prompt is there and right; the image is an unambiguous rendering of it.

**Realism (0-2)**: how real does the image look?
- 0: clearly artificial or physically impossible.
- 1: mostly believable, with visible flaws or unrealistic parts.
- 2: photographic quality; physics, materials, light and space are all right; nothing betrays a generated image.

**Aesthetic Quality (0-2)**: how good is the image as a picture?
- 0: poorly composed and unattractive.
- 1: acceptable composition and colour, but nothing special.
- 2: outstanding composition, colour and style.

## Reply format

Reply with exactly three lines and nothing else, for example:
Consistency: 2
Realism: 1
Aesthetic Quality: 0

## Be strict

A 2 should be rare. Consistency 2 needs complete, faithful adherence to every part of the prompt; Realism 2 needs an image that cannot be told from a photograph; Aesthetic Quality 2 needs real artistic merit, not just a pleasant picture. When in doubt, give the lower score.

## The image to score

PROMPT: "{prompt}"
EXPLANATION: "{explanation}"
Follow the scoring rules and the reply format exactly."""


VERIFIED_SYSTEM = ("You audit images made by text-to-image models for the WISE benchmark, strictly, following the "
                   "protocol you are given.")

VERIFIED_INSTRUCTIONS = """Judge the image below for the WISE benchmark and reply with one binary score only.

# What is judged

WISE prompts test world knowledge: a prompt often describes its subject indirectly (by a custom, a date, a place, a natural law), and the model has to work out what to draw.

You receive:
- PROMPT: the text the model was given.
- EXPLANATION: the intended answer and the visual evidence a correct image must show. Treat it as the ground truth.

Beauty is not judged. Judge whether the image shows what the EXPLANATION says the PROMPT means, and whether it is usable for judging.

## Checks
1. The main objects or scene the PROMPT needs are there.
2. The image shows the intended answer of the EXPLANATION, not a literal or generic reading of the PROMPT.
3. Relations that matter (layout, time, physical or biological effect, cultural object, scientific phenomenon) are right.
4. The image has no collapse, severe deformation or artefact that prevents judging it.

## Score
Score: 1 only when all four checks pass.
Score: 0 when any of them fails.

## Reply format
Exactly one line, nothing else:
Score: 0
or
Score: 1

PROMPT: "{prompt}"
EXPLANATION: "{explanation}"
Reply with `Score: 0` or `Score: 1` only."""


def judge_text(prompt: str, explanation: str, template: str = INSTRUCTIONS) -> str:
    return template.replace("{prompt}", prompt).replace("{explanation}", explanation)


def record_scores(scores: dict[str, Any] | None) -> float | None:
    """The per-image score of parsed scores (legacy WiScore, or the verified binary score); None for a failed judgement."""
    if scores is None:
        return None
    if "score" in scores:
        return float(scores["score"])
    return wiscore(scores["consistency"], scores["realism"], scores["aesthetic_quality"])
