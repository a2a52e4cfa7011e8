"""ImgEdit-Bench scoring rules, as PKU-YuanGroup/ImgEdit's benchmark scripts apply them.

Read from PKU-YuanGroup/ImgEdit @ 547185d12c08267a862b94248576e1746e479937, `Benchmark/Basic/`
(`basic_bench.py`, `step1_get_avgscore.py`, `step2_typescore.py`) and `Benchmark/UGE/`
(`UGE_bench.py`, `get_average_score.py`), and re-written here. The judge prompts are not copied:
`prompts.json` and the UGE prompt (a string in `UGE_bench.py`) are fetched at that commit.

- Reply parsing (`parse_reply`): every line that, stripped, splits on `": "` into exactly two
  parts whose second is all digits gives one integer score. So `4.5`, `4/5`, `**4**`, `3 (Good)`
  and `3.` do not count, and any other `<Name>: <digits>` line does. A reply with no such line
  is dropped from every average (not zeroed).
- Per image: the mean of its scores, `round(…, 2)`. Per edit type (and for UGE): the mean of
  the rounded per-image scores, `round(…, 2)` again.
- The official scripts compute no Overall. Papers' Overall is the unweighted mean of the nine
  type scores (`overall`); the mean over all scored images is beside it as `overall_weighted`
  (TorchUMM's "overall"; Ovis-U1's own row). Both rounded to 2 decimals, as tables print them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from tasks.judges.parsing import ParseError

EDIT_TYPES = ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose", "action")
MAX_TOKENS = 2048  # the official call sets none; the official fine-tuned judge's README uses 2048


def parse_reply(reply: str) -> list[int]:
    """The integer scores of one judge reply (official rule); `ParseError` when there are none."""
    scores = []
    for line in reply.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            try:
                scores.append(int(parts[1]))
            except ValueError:  # digits int() refuses (superscripts): the official script crashes here
                continue
    if not scores:
        raise ParseError("no '<name>: <digits>' line in the reply")
    return scores


def image_score(scores: list[int]) -> float:
    """One image's score: the mean of its reply's scores, rounded to 2 decimals (step 1)."""
    return round(sum(scores) / len(scores), 2)


def mean_2(values: list[float]) -> float:
    """A mean of rounded image scores, rounded to 2 decimals (step 2, and the UGE average)."""
    return round(sum(values) / len(values), 2)


def summarize(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Metrics from (edit type or "uge", image score) pairs of the scored images.

    `<type>` for each edit type with a scored image, `overall` (the unweighted mean of the nine
    type scores, only when all nine have one), `overall_weighted` (over every scored basic image),
    `types` (how many types have a score) and `uge` (the UGE suite's average)."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for edit_type, score in rows:
        by_type[edit_type].append(score)
    metrics = {edit_type: mean_2(scores) for edit_type, scores in by_type.items() if scores}
    basic = [score for edit_type in EDIT_TYPES for score in by_type.get(edit_type, [])]
    types = [edit_type for edit_type in EDIT_TYPES if edit_type in metrics]
    if types:
        metrics["types"] = float(len(types))
        metrics["overall_weighted"] = mean_2(basic)
    if len(types) == len(EDIT_TYPES):
        metrics["overall"] = round(sum(metrics[t] for t in EDIT_TYPES) / len(EDIT_TYPES), 2)
    return metrics
