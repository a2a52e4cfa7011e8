"""Running one benchmark against one backbone: batch, seed, cache, score.

Stage 1 sends every (sample, k) that the cache does not hold yet to the backbone in batches of
one task kind, shortest prompts together, and writes each finished batch to the cache before
the next. Stage 2 scores every sample from the cache. So a killed run resumes where it stopped
and a rerun of a finished one makes no model call at all.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from itertools import takewhile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tqdm import tqdm

from tasks.base import Sample, Task
from umm_harness.core.backbone import Backbone
from umm_harness.batch_size import BatchSizer
from umm_harness.cache import CachedOutput, ResultCache
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult
from umm_harness.core.seeding import sample_seed
from umm_harness.scoring_worker import CHUNK, ScoringWorker, score_items

log = logging.getLogger(__name__)

Stage = Literal["all", "generate", "score"]


class BatchExecutor(Protocol):
    """Runs planned batches elsewhere (e.g. `umm_harness.ray_executor`): yields (batch index, results,
    seconds in the model) as each batch finishes, in any order."""

    def run_batches(self, batches: list[list[InferenceRequest]]) -> Iterator[tuple[int, list[InferenceResult], float]]:
        ...


def progress_enabled() -> bool:
    """Progress bars for people at a terminal; quiet under CI and in logs."""
    return not os.environ.get("CI") and sys.stderr.isatty()


@dataclass
class BenchmarkResult:
    samples: list[Sample]
    records: dict[str, dict[str, Any]]  # sample id → score record
    failed: dict[str, str]  # sample id → why it could not be run
    skipped: dict[str, str]  # sample id → why it was not asked (capability)
    computed: int  # outputs computed by this process
    reused: int  # outputs found in the cache
    model_seconds: float  # time inside backbone calls
    metrics: dict[str, float] = field(default_factory=dict)
    scored: int = 0  # samples scored by this run (the others' records came from the cache)


def limit_samples(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first `limit` items taken round-robin over categories, so a quick look covers them all.

    An item is a sample, or the samples sharing a `group` (both halves of a UEval question)."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group or sample.id, []).append(sample)
    if not limit or limit >= len(groups):
        return samples
    by_category: dict[str, list[str]] = {}
    for key, members in groups.items():
        by_category.setdefault(members[0].category, []).append(key)
    picked: list[str] = []
    for rank in range(max(len(keys) for keys in by_category.values())):
        picked += [keys[rank] for keys in by_category.values() if rank < len(keys)]
    chosen = set(picked[:limit])
    return [sample for sample in samples if (sample.group or sample.id) in chosen]


def request_for(sample: Sample, k: int, run_seed: int, overrides: InferenceParams) -> InferenceRequest:
    assert sample.request is not None
    params = overrides.merged_over(sample.request.params)
    params = params.model_copy(update={"seed": sample_seed(run_seed, sample.id, k)})
    return sample.request.model_copy(update={"params": params})


def _plan(task: Task, backbone: Backbone | None, capabilities: frozenset[str] | None, limit: int | None,
          shard: tuple[int, int], samples: list[Sample] | None):
    """(samples, failed, skipped, runnable, this rank's (sample, k) work items, in batching order)."""
    capabilities = backbone.capabilities if backbone is not None else capabilities or frozenset()
    key = backbone.key if backbone is not None else "the backbone"
    samples = limit_samples(task.samples() if samples is None else samples, limit)
    failed = {s.id: s.error for s in samples if s.error}
    skipped = {
        s.id: f"backbone '{key}' cannot do {s.request.task}"
        for s in samples
        if s.request is not None and s.request.task not in capabilities
    }
    runnable = [s for s in samples if s.id not in failed and s.id not in skipped]
    # One task kind per batch, similar prompt lengths together (less padding). A data-parallel
    # rank takes every world_size-th item of this fixed order, whatever the others have done.
    work = sorted(((s, k) for s in runnable for k in range(s.n)),
                  key=lambda item: (item[0].request.task, len(item[0].request.prompt or ""), item[0].id, item[1]))
    rank, world_size = shard
    return samples, failed, skipped, runnable, work[rank::world_size]


def pending_outputs(task: Task, backbone: Backbone, cache: ResultCache, *, limit: int | None = None,
                    shard: tuple[int, int] = (0, 1), samples: list[Sample] | None = None) -> int:
    """How many outputs of this rank's share `run_benchmark` would have to compute (0: all cached)."""
    *_, mine = _plan(task, backbone, None, limit, shard, samples)
    return sum((s.id, k) not in cache for s, k in mine)


def _generate_elsewhere(executor: BatchExecutor, pending: list[tuple[Sample, int]], sizer: BatchSizer,
                        cache: ResultCache, run_seed: int, overrides: InferenceParams, bar: tqdm,
                        landed: Callable[[list[tuple[Sample, int]]], None]) -> float:
    """The pending outputs in the same batches as the local loop, through `executor`; each finished
    batch goes to the cache as it arrives, so a killed driver loses nothing that came back."""
    batches: list[list[tuple[Sample, int]]] = []
    start = 0
    while start < len(pending):
        kind = pending[start][0].request.task
        batches.append(list(takewhile(lambda item: item[0].request.task == kind,
                                      pending[start : start + sizer.size(kind)])))
        start += len(batches[-1])
    requests = [[request_for(sample, k, run_seed, overrides) for sample, k in batch] for batch in batches]
    model_seconds = 0.0
    for index, results, seconds in executor.run_batches(requests):
        cache.add_batch([
            (sample.id, k, request.params.seed, result.text, result.images, result.elapsed_s)
            for (sample, k), request, result in zip(batches[index], requests[index], results)
        ])
        model_seconds += seconds
        bar.update(len(results))
        landed(batches[index])
    return model_seconds


def run_benchmark(
    task: Task,
    backbone: Backbone | None,
    cache: ResultCache,
    *,
    run_seed: int,
    batch_size: int | str | BatchSizer,
    overrides: InferenceParams | None = None,
    limit: int | None = None,
    stage: Stage = "all",
    capabilities: frozenset[str] | None = None,
    shard: tuple[int, int] = (0, 1),
    samples: list[Sample] | None = None,
    scorer: str | None = None,
    executor: BatchExecutor | None = None,
    on_outputs: Callable[[list[CachedOutput]], None] | None = None,
) -> BenchmarkResult:
    """Stage 1 (`generate`), stage 2 (`score`) or both (`all`) of one benchmark.

    `score` never calls the backbone (pass None and its class's `capabilities`): every output
    must already be cached. `shard=(rank, world_size)` generates every world_size-th pending
    output only (data-parallel ranks split the work this way, deterministically). `samples`:
    the task's samples, when the caller has loaded them already. `scorer`: the scorer's identity
    (`cache.scorer_identity`); records it already gave these very outputs are reused, not recomputed.
    `executor`: generate there (batches of the sizer's size, no out-of-memory back-off) instead of
    calling `backbone` here. A two-stage task (detector, judge) is scored by a worker process while
    generation runs (`umm_harness.scoring_worker`); the records are the same either way.
    `on_outputs`: called with each batch of outputs once it is in the cache (image uploads).
    """
    overrides = overrides or InferenceParams()
    samples, failed, skipped, runnable, mine = _plan(task, backbone, capabilities, limit, shard, samples)
    pending = [(s, k) for s, k in mine if (s.id, k) not in cache]
    reused = len(mine) - len(pending)
    if stage == "score" and pending:
        missing = sorted({sample.id for sample, _ in pending})
        raise ConfigError(f"{task.name}: the generate run has no outputs for {len(missing)} sample(s) "
                          f"(e.g. {missing[0]}); score needs a finished generate stage with the same limit")
    if reused:
        log.info("%s: %d outputs found in the cache, %d to compute", task.name, reused, len(pending))

    sizer = batch_size if isinstance(batch_size, BatchSizer) else BatchSizer(batch_size)
    scoring = _Scoring(task, runnable, cache, scorer) if stage != "generate" else None
    if scoring is not None and pending and task.two_stage:
        scoring.start_worker()  # scores each sample as its outputs land, beside the model loop
    model_seconds = 0.0
    try:
        with tqdm(total=len(pending), desc=f"{task.name}: generate", unit="out", disable=not progress_enabled()) as bar:
            def landed(batch: list[tuple[Sample, int]]) -> None:
                if scoring is not None:
                    scoring.landed(batch)
                if on_outputs is not None:
                    on_outputs([cache.entry(sample.id, k) for sample, k in batch])

            if executor is not None and pending:
                model_seconds = _generate_elsewhere(executor, pending, sizer, cache, run_seed, overrides, bar, landed)
            done = len(pending) if executor is not None else 0
            while done < len(pending):
                kind = pending[done][0].request.task
                batch = list(takewhile(lambda item: item[0].request.task == kind,
                                       pending[done : done + sizer.size(kind)]))
                requests = [request_for(sample, k, run_seed, overrides) for sample, k in batch]
                start = time.perf_counter()
                try:
                    results = backbone.run(requests)
                except Exception as error:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                    if sizer.shrink(kind, error):
                        continue
                    raise
                model_seconds += time.perf_counter() - start
                sizer.worked(kind)
                cache.add_batch([
                    (sample.id, k, request.params.seed, result.text, result.images, result.elapsed_s)
                    for (sample, k), request, result in zip(batch, requests, results)
                ])
                done += len(batch)
                bar.update(len(batch))
                landed(batch)

        if scoring is None:
            return BenchmarkResult(samples, {}, failed, skipped, len(pending), reused, model_seconds)
        records = scoring.finish()
    finally:
        if scoring is not None:
            scoring.close()
    metrics = {f"{task.metric_prefix}{name}": value for name, value in task.aggregate(runnable, records).items()}
    return BenchmarkResult(samples, records, failed, skipped, len(pending), reused, model_seconds, metrics,
                           scoring.scored)


class _Scoring:
    """Stage 2 of one benchmark: records the cache already holds for these very outputs are reused,
    the rest are scored, by a worker process as each sample's outputs land (`start_worker`) or
    here once generation is done. Records are saved to the cache as they come, so a scorer
    failure loses none already made."""

    def __init__(self, task: Task, runnable: list[Sample], cache: ResultCache, scorer: str | None):
        self.task, self.runnable, self.cache, self.scorer = task, runnable, cache, scorer
        self.records: dict[str, dict[str, Any]] = {}
        if scorer is not None:
            self.records = {s.id: r for s in runnable if (r := cache.score_record(scorer, s.id, s.n)) is not None}
        self.scored = 0
        self.worker: ScoringWorker | None = None
        self._index = {s.id: i for i, s in enumerate(runnable)}
        self._missing: dict[str, int] = {}  # sample id → outputs not cached yet
        self._groups: dict[str, list[Sample]] = {}  # items not sent to the worker yet, by group
        self._bar = tqdm(total=len(runnable) - len(self.records), desc=f"{task.name}: score", unit="sample",
                         disable=not progress_enabled())

    def start_worker(self) -> None:
        self.worker = ScoringWorker.start(self.task, self.runnable, self.cache.images_dir)
        if self.worker is None:
            return
        to_score = [s for s in self.runnable if s.id not in self.records]
        self._missing = {s.id: sum((s.id, k) not in self.cache for k in range(s.n)) for s in to_score}
        for sample in to_score:  # the samples of one item (UEval's halves) are scored together
            self._groups.setdefault(sample.group or sample.id, []).append(sample)
        self._submit_complete(to_score)

    def _submit_complete(self, samples: list[Sample]) -> None:
        """To the worker: the groups of `samples` whose every output is cached now, each in sample order."""
        ready = []
        for key in dict.fromkeys(s.group or s.id for s in samples):
            members = self._groups.pop(key, None)
            if members is None:
                continue
            if any(self._missing[s.id] for s in members):
                self._groups[key] = members
            else:
                ready += members
        self.worker.submit([(self._index[s.id], [self.cache.entry(s.id, k) for k in range(s.n)]) for s in ready])

    def landed(self, batch: list[tuple[Sample, int]]) -> None:
        """A batch of outputs is in the cache: the items it completes go to the worker."""
        if self.worker is None:
            return
        for sample, _ in batch:
            if sample.id in self._missing:
                self._missing[sample.id] -= 1
        self._submit_complete([sample for sample, _ in batch if self._missing.get(sample.id) == 0])
        self._keep(self.worker.collect())

    def _keep(self, scored: list[tuple[str, dict[str, Any]]]) -> None:
        if not scored:
            return
        self.records.update(scored)
        self.scored += len(scored)
        self._bar.update(len(scored))
        if self.scorer is not None:
            self.cache.add_scores(self.scorer, [(sid, self.runnable[self._index[sid]].n, record)
                                                for sid, record in scored])

    def finish(self) -> dict[str, dict[str, Any]]:
        """Every runnable sample's record, in sample order."""
        if self.worker is not None:
            self.worker.finish(self._keep)
            if self.worker.unavailable:
                log.warning("%s: the scoring worker could not load the task (%s); scoring here",
                            self.task.name, self.worker.unavailable)
        # Judged tasks take many samples at once to batch their judge calls; outputs are read from
        # the cache a chunk at a time so thousands of images never sit in memory together.
        to_score = [s for s in self.runnable if s.id not in self.records]
        chunk = CHUNK if hasattr(self.task, "score_many") else 1
        for start in range(0, len(to_score), chunk):
            items = [(s, [self.cache.output(s.id, k) for k in range(s.n)]) for s in to_score[start : start + chunk]]
            self._keep([(s.id, record) for (s, _), record in zip(items, score_items(self.task, items))])
        return {s.id: self.records[s.id] for s in self.runnable}

    def close(self) -> None:
        self._bar.close()
        if self.worker is not None:
            self.worker.close()
