"""Scoring beside generation: a two-stage task is scored in a worker process while the model runs,
with exactly the records of scoring afterwards in this process; a scorer failure loses nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.base import Output, Sample
from tasks.shapes import ShapesTask
from umm_harness.cache import ResultCache
from umm_harness.runner import run_benchmark
from umm_harness.scoring_worker import ScoringWorker

LIMIT = 18  # 6 understanding questions and 12 generation prompts of 2 images


class FailingShapes(ShapesTask):
    """The shapes scorer, failing on one sample (module level, so it can travel to the worker)."""

    def __init__(self, fail_on: str | None):
        super().__init__()
        self.fail_on = fail_on

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        if sample.id == self.fail_on:
            raise ValueError(f"scorer broke on {sample.id}")
        return super().score(sample, outputs)


class PairedShapes(ShapesTask):
    """Understanding question i and generation prompt i form one item (a `group`), and a sample's
    score needs its partner seen (as UEval's image half needs its text half's answer)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def samples(self) -> list[Sample]:
        return [s.model_copy(update={"group": s.id.split("-")[1]}) for s in super().samples()]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        self.seen |= {sample.id for sample, _ in items}
        partner = {"u": "g", "g": "u"}
        return [{**self.score(sample, outputs), "partner_seen": f"{partner[sample.id[0]]}-{sample.id[2:]}" in self.seen}
                for sample, outputs in items]


def _in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScoringWorker, "start", classmethod(lambda cls, *args: None))


def test_the_worker_scores_exactly_as_this_process_does(tiny_janus, tmp_path, monkeypatch):
    scored_here: list[str] = []
    original = ShapesTask.score

    def watched(task, sample, outputs):
        scored_here.append(sample.id)
        return original(task, sample, outputs)

    monkeypatch.setattr(ShapesTask, "score", watched)  # seen in this process only
    beside = run_benchmark(ShapesTask(), tiny_janus, ResultCache(tmp_path / "beside"), run_seed=0, limit=LIMIT,
                           batch_size=4, scorer="shapes")
    assert scored_here == [] and beside.scored == len(beside.samples) == LIMIT  # all in the worker

    _in_this_process(monkeypatch)
    after = run_benchmark(ShapesTask(), tiny_janus, ResultCache(tmp_path / "after"), run_seed=0, limit=LIMIT,
                          batch_size=4, scorer="shapes")
    assert len(scored_here) == LIMIT
    assert list(beside.records) == list(after.records) == [s.id for s in after.samples]  # sample order
    assert beside.records == after.records and beside.metrics == after.metrics


def test_a_scorer_failure_keeps_every_output_and_every_record_made(tiny_janus, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="scorer broke on g-00003") as failure:
        run_benchmark(FailingShapes(fail_on="g-00003"), tiny_janus, cache, run_seed=0, limit=LIMIT, batch_size=4,
                      scorer="shapes")
    assert any("scoring worker" in note for note in failure.value.__notes__)
    samples = ShapesTask().samples()
    total = sum(s.n for s in samples if s.id in {f"u-{i:05d}" for i in range(6)} | {f"g-{i:05d}" for i in range(12)})
    assert len(ResultCache(tmp_path / "cache")) == total  # generation went on to the end
    kept = [s.id for s in samples if ResultCache(tmp_path / "cache").score_record("shapes", s.id, s.n)]
    assert kept and "g-00003" not in kept

    # Fixed, the rerun generates nothing and scores only what the failure left unscored.
    rerun = run_benchmark(FailingShapes(fail_on=None), tiny_janus, ResultCache(tmp_path / "cache"), run_seed=0,
                          limit=LIMIT, batch_size=4, scorer="shapes")
    assert rerun.computed == 0 and rerun.scored == LIMIT - len(kept)
    reference = run_benchmark(ShapesTask(), tiny_janus, ResultCache(tmp_path / "reference"), run_seed=0, limit=LIMIT,
                              batch_size=4)
    assert rerun.records == reference.records and rerun.metrics == reference.metrics


def test_the_samples_of_one_item_go_to_the_worker_together(tiny_janus, tmp_path):
    result = run_benchmark(PairedShapes(), tiny_janus, ResultCache(tmp_path / "cache"), run_seed=0, limit=6,
                           batch_size=2, scorer="paired")
    assert result.scored == len(result.samples) == 12  # 6 items of two halves
    assert all(record["partner_seen"] for record in result.records.values())
