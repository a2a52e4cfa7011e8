"""GEdit-Bench scoring rules (VIEScore, task "tie"), as Step1X-Edit's GEdit-Bench code applies them.

Read from stepfun-ai/Step1X-Edit @ 570eba6ebda0c45c013983a483afbf2fd12bfcbc, `GEdit-Bench/`
(`viescore/__init__.py`, `viescore/utils.py`, `test_gedit_score.py`, `calculate_statistics.py`,
`generate_image_example.py`) and re-written here; the judge prompts are the benchmark's protocol
input and are reproduced unchanged, with attribution, in `tasks/data/gedit_viescore_prompts.json`.

- Prompts: semantic consistency (SC) = context + two-image edit rule + SC rule, `<instruction>`
  replaced, shown [source, edit]; perceptual quality (PQ) = context + PQ rule, shown the edit only.
  Pieces joined with newlines.
- Reply parsing (`parse_scores`), in the official order: the text between two `||V^=^V||`
  delimiters; else the span from the first `{` to the last `}`; else (no such span) a bare
  `[a, b]` list of two integers, or the whole reply as one integer 0–10. A span is read as JSON
  (newlines removed; `score` wrapped in a list when it is not one), and when that fails, through
  the official regex repair (quote the keys, wrap numbers in lists), whose result is used as is.
- Per sample: SC = min(SC scores), PQ = min(PQ scores), O = sqrt(SC·PQ).
- Aggregation (`summarize`): per language and group, the mean over samples; the headline is the
  unweighted mean of the group means; "intersection" does the same over `Intersection_exist` rows.
- Edit resized to the judged source's size before judging (PIL's default, bicubic, as `.resize`).
- Model input: the raw input image resized to about 512² pixels with sides rounded to multiples
  of 32 (`official_input_size`), as the official generation example does.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

from tasks.judges.parsing import ParseError

GROUPS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
          "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")
LANGUAGES = ("en", "cn")
MAX_TOKENS = 1400  # the official GPT judge's `max_tokens`
DELIMITER = "||V^=^V||"
PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "gedit_viescore_prompts.json"


@cache
def _prompt_parts() -> dict[str, str]:
    return json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))["prompts"]


def sc_prompt(instruction: str) -> str:
    """The semantic-consistency prompt for one instruction (shown with [source, edit])."""
    parts = _prompt_parts()
    joined = "\n".join([parts["_context_no_delimit"], parts["_prompts_0shot_two_image_edit_rule"],
                        parts["_prompts_0shot_tie_rule_SC"]])
    return joined.replace("<instruction>", instruction)


def pq_prompt() -> str:
    """The perceptual-quality prompt (shown with the edit only)."""
    parts = _prompt_parts()
    return "\n".join([parts["_context_no_delimit"], parts["_prompts_0shot_rule_PQ"]])


# --- reply parsing ----------------------------------------------------------------------------


def _repair_json(text: str) -> str:
    """The official fallback repair: quote bare keys, then wrap numeric values in a list and quote
    other non-literal values."""
    quoted = re.sub(r"(\w+):", r'"\1":', text)

    def value(match: re.Match[str]) -> str:
        key, raw, end = match.group(1), match.group(2).strip(), match.group(3)
        if re.match(r"^-?\d+(\.\d+)?$", raw):
            raw = f"[{raw}]"
        elif not re.match(r"^(true|false|null)$", raw, re.IGNORECASE):
            raw = f'"{raw}"'
        return f"{key}: {raw}{end}"

    return re.sub(r'(".*?"):(.*?)(,|})', value, quoted)


def _bare_scores(reply: str) -> list[int]:
    """No JSON span: a `[a, b]` list of two integers, or the whole reply as one integer 0–10."""
    start, end = reply.find("["), reply.rfind("]") + 1
    listed = reply[start:end]
    if re.match(r"^\[\d+, ?\d+\]$", listed):
        return list(json.loads(listed))
    try:
        number = int(reply)
    except ValueError:
        raise ParseError("no JSON object, score list or bare number in the reply") from None
    if not 0 <= number <= 10:
        raise ParseError(f"bare number {number} is outside 0-10")
    return [number]


def _json_span(reply: str) -> str:
    if reply.count(DELIMITER) == 2:
        start, end = reply.find(DELIMITER) + len(DELIMITER), reply.rfind(DELIMITER)
    else:
        start, end = reply.find("{"), reply.rfind("}") + 1
    if start == end:
        raise ParseError("empty JSON span")
    return reply[start:end].strip().replace("\n", "")


def parse_scores(reply: str) -> list[float]:
    """The scores a VIEScore reply gives (official parsing and fallbacks); `ParseError` otherwise.

    Where the official code would crash on what it read (no `score` key, a non-numeric score),
    this raises `ParseError` instead, so the reply is retried and then counted as unparsable."""
    if reply.count(DELIMITER) != 2 and (reply.find("{") == -1 or reply.rfind("}") == -1):
        return [float(s) for s in _bare_scores(reply)]
    span = _json_span(reply)
    try:
        data = json.loads(span)
        scores = data["score"]
        if not isinstance(scores, list):
            scores = [scores]
    except Exception:  # the official code repairs whatever went wrong, and keeps the repair as is
        try:
            data = json.loads(_repair_json(span))
        except json.JSONDecodeError:
            raise ParseError("the JSON span does not parse, even after the official repair") from None
        scores = data.get("score") if isinstance(data, dict) else None
    if not isinstance(scores, list) or not scores or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
        raise ParseError(f"`score` is not a non-empty list of numbers: {scores!r}")
    return [float(s) for s in scores]


def guessed_score(sample_id: str, part: str) -> int:
    """The deterministic stand-in for the official `random.randint(0, 10)` guess on an unparsable
    reply: the same draw, from a generator seeded by the sample and the part (SC or PQ)."""
    seed = int.from_bytes(hashlib.sha256(f"gedit|{sample_id}|{part}".encode()).digest()[:8], "little")
    return random.Random(seed).randint(0, 10)


def overall(sc: float, pq: float) -> float:
    return math.sqrt(sc * pq)


# --- images ------------------------------------------------------------------------------------


def official_input_size(width: int, height: int, target_area: int = 512 * 512) -> tuple[int, int]:
    """The model-input size of the official generation example: the aspect ratio kept, about
    `target_area` pixels, each side rounded (half to even) to a multiple of 32, then the width
    moved by 32 towards the target area."""
    ratio = width / height
    w = math.sqrt(target_area * ratio)
    h = w / ratio
    w, h = round(w / 32) * 32, round(h / 32) * 32
    if w * h < target_area:
        w += 32
    elif w * h > target_area:
        w -= 32
    return w, h


def edit_for_judging(edit: Image.Image, source: Image.Image) -> Image.Image:
    """The edit as the official scorer shows it: RGB, resized to the judged source's size."""
    return edit.convert("RGB").resize(source.size)


# --- aggregation -------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Official metrics from scored rows (`language`, `group`, `intersection`, `sc`, `pq`, `o`).

    Per language L and set S (`full`, `intersection`): `L/S/<group>/{sc,pq,o}` (group means), and
    the unweighted mean of the group means as `L/{sc,pq,o}` (full set, the headline) and
    `L/intersection/{sc,pq,o}`, reported only when every one of the eleven groups has a scored row
    (the official mean over a missing group is NaN; `L/S/groups` says how many have one).
    """
    by: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by[(row["language"], "full", row["group"])].append(row)
        if row["intersection"]:
            by[(row["language"], "intersection", row["group"])].append(row)
    metrics: dict[str, float] = {}
    for language in sorted({key[0] for key in by}):
        for subset in ("full", "intersection"):
            group_means: dict[str, dict[str, float]] = {}
            for group in GROUPS:
                members = by.get((language, subset, group))
                if not members:
                    continue
                group_means[group] = {key: _mean([float(m[key]) for m in members]) for key in ("sc", "pq", "o")}
                for key, value in group_means[group].items():
                    metrics[f"{language}/{subset}/{group}/{key}"] = value
            if group_means:
                metrics[f"{language}/{subset}/groups"] = float(len(group_means))
            if len(group_means) == len(GROUPS):
                prefix = language if subset == "full" else f"{language}/{subset}"
                for key in ("sc", "pq", "o"):
                    metrics[f"{prefix}/{key}"] = _mean([means[key] for means in group_means.values()])
    return metrics
