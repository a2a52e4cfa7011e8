"""Tasks scored by a vision judge (GEdit, ImgEdit, WISE, UEval, Uni-MMMU).

The judge is built on first use, so a generate-only run (`--stage generate`) needs none, while
its id, which belongs in the scorer id that keys cached scores, is known before it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.base import Task
from tasks.judges.vision import CachedVisionJudge, LazyVisionJudge


class JudgedTask(Task):
    def __init__(self, data_dir: Path | None, judge: Any, cache_dir: Path | None):
        super().__init__(data_dir)
        self._judge = LazyVisionJudge(judge, cache_dir)

    @property
    def judge(self) -> CachedVisionJudge:
        return self._judge.get()

    def scoring_options(self) -> str:
        """What besides the judge changes the scores, as `;key=value` pairs ('' when nothing does)."""
        return ""

    @property
    def scorer_id(self) -> str | None:
        judge = self._judge.id
        return judge + self.scoring_options() if judge else None
