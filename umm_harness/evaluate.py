"""`umm eval`: one parent run per (model version × suite), one child run per benchmark."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException

import umm_harness
from model_flavors.registry import backbone_class
from tasks.base import Sample, Task
from tasks.judged import JudgedTask
from tasks.registry import build_task, suite_benchmarks, task_class
from umm_harness.core.acceleration import check_device
from umm_harness.core.backbone import Backbone, LazyBackbone
from umm_harness.batch_size import BatchSizer
from umm_harness.cache import CachedOutput, ResultCache, scorer_identity
from umm_harness.core.home import umm_home
from umm_harness.config import EvalRecipe, flatten
from umm_harness.distributed import Ranks, current_ranks
from umm_harness.core.errors import ConfigError
from umm_harness.model_ref import ResolvedModel, resolve_model, resolve_registered
from umm_harness.model_registry import describe_version, ensure_registered, logged_model_id
from umm_harness.ray_executor import RayExecutor
from umm_harness.ray_judge import ray_vision_judge
from umm_harness.runner import BenchmarkResult, pending_outputs, run_benchmark
from umm_harness.runs import BENCHMARK_TAG, benchmark_runs, parent_runs, start_top_level_run, take_project_run
from umm_harness.search_filters import quoted
from umm_harness.tracking import (ImageUploads, git_commit, log_batch, log_benchmark, log_model_scores, official,
                                  score_summary)

log = logging.getLogger(__name__)


@dataclass
class EvalSummary:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    results: dict[str, BenchmarkResult]


def evaluate(recipe: EvalRecipe) -> EvalSummary | None:
    """Stage `all` or `generate`: a new parent run. Stage `score`: a child run beside the
    generate run's, in that run's parent, from its logged outputs. Under several data-parallel
    ranks, only rank 0 returns a summary (the others return None)."""
    if recipe.stage != "score":  # scoring reads logged outputs: it needs no model device
        try:
            check_device(recipe.device)
        except ConfigError as exc:
            raise ConfigError(f"field 'device': {exc}") from None
    names = suite_benchmarks(recipe.suite)
    judges = _task_judges(recipe, names)
    tasks = [build_task(name, recipe.data_dir, judges[name], recipe.task_options.get(name)) for name in names]
    # Every benchmark's data is read (and checked) before any model loads or anything is logged.
    samples = {task.name: task.samples() for task in tasks}
    ranks = current_ranks(recipe.device)
    if recipe.threads or ranks.world_size > 1:
        torch.set_num_threads(recipe.threads or max(1, (os.cpu_count() or 1) // ranks.world_size))
    if recipe.stage == "score":
        return _score_logged_outputs(recipe, tasks, samples) if ranks.is_main else None
    model = resolve_model(recipe.model, backbone=recipe.backbone, revision=recipe.revision, dtype=recipe.dtype,
                          device=recipe.device, register_as=recipe.register_as, options=recipe.backbone_options,
                          attn_implementation=recipe.attn_implementation, compile=recipe.compile, lazy=True,
                          env_manager=recipe.env_manager)
    try:
        return _evaluate_model(recipe, model, tasks, samples, ranks)
    finally:
        model.close()  # a model served in its own environment stops with the evaluation


def _evaluate_model(recipe: EvalRecipe, model: ResolvedModel, tasks: list[Task], samples: dict[str, list[Sample]],
                    ranks: Ranks) -> EvalSummary | None:
    caches = {task.name: _cache(task, model, recipe, ranks) for task in tasks}
    if recipe.executor == "ray" and ranks.world_size > 1:
        raise ConfigError("--executor ray spreads the work over Ray actors: use it without torchrun ranks")
    if recipe.executor == "local" and isinstance(model.backbone, LazyBackbone) and any(
            pending_outputs(task, model.backbone, caches[task.name], limit=recipe.limit, samples=samples[task.name],
                            shard=(ranks.rank, ranks.world_size)) for task in tasks):
        model.backbone.loaded()  # now, so that a model that cannot load fails before any run exists
    if not ranks.is_main:
        for task in tasks:
            _run_task(task, model, recipe, ranks, samples[task.name], caches[task.name])
        return None
    common_tags = {
        "umm.backbone": model.backbone.key,
        "umm.suite": recipe.suite,
        "umm.seed": str(recipe.seed),
        "umm.limit": str(recipe.limit or "all"),
        "umm.stage": recipe.stage,
        "umm.ranks": str(ranks.world_size),
        "umm.env_manager": model.env_manager,
        "umm.capabilities": ",".join(sorted(model.backbone.capabilities)),
        **({"umm.attn_implementation": model.backbone.attn_implementation} if model.backbone.attn_implementation else {}),
        **({"umm.trust_remote_code": "true"} if recipe.backbone_options.get("trust_remote_code") else {}),
        "umm.git_commit": git_commit(),
        "umm.harness_version": umm_harness.__version__,
    }
    metrics: dict[str, float] = {}
    results: dict[str, BenchmarkResult] = {}
    run_name = f"{model.registered_name} × {recipe.suite}"
    with start_top_level_run(run_name, recipe.experiment, take_project_run()) as parent:
        version = ensure_registered(model)
        model_id = logged_model_id(model.registered_name, version)
        model_uri = f"models:/{model.registered_name}/{version}"
        common_tags.update({"umm.model_uri": model_uri, "umm.model_version": version,
                            "umm.model_name": model.registered_name})
        log_batch(params=flatten(recipe.model_dump(mode="json"), "recipe."), tags=common_tags)
        mlflow.log_dict(recipe.model_dump(mode="json"), "recipe.yaml")
        for task in tasks:
            with mlflow.start_run(run_name=task.name, nested=True, experiment_id=parent.info.experiment_id):
                log_batch(tags={**common_tags, "umm.benchmark": task.name, **_scorer_tag(task), **task.run_tags()})
                uploads = ImageUploads(task.name, caches[task.name])  # images go up while the model works
                result, cache = _run_task(task, model, recipe, ranks, samples[task.name], caches[task.name],
                                          on_outputs=uploads.add)
                _tag_if_all_skipped(task.name, result)
                logged = log_benchmark(task.name, result, cache, uploads=uploads)
                log_model_scores(task.name, result, logged, model_id)
                metrics.update(logged)
                results[task.name] = result
        log_batch(metrics=metrics)
        run_id = parent.info.run_id
    if official(metrics):  # a generate-only run has none yet
        describe_version(model.registered_name, version,
                         scores=score_summary(run_id, recipe.suite, recipe.limit, recipe.seed, metrics))
    return EvalSummary(run_id, model.registered_name, version, metrics, results)


def _cache(task: Task, model: ResolvedModel, recipe: EvalRecipe, ranks: Ranks) -> ResultCache:
    folder = (recipe.cache_dir or umm_home() / "cache") / ResultCache.key(
        weights=model.digest, benchmark=task.name, seed=recipe.seed, dtype=recipe.dtype,
        params=recipe.params.model_dump(exclude_none=True), data_dir=recipe.data_dir,
        options=recipe.task_options.get(task.name),
    )
    log.info("%s: cache %s", task.name, folder)
    return ResultCache(folder, rank=ranks.rank)


def _run_task(task: Task, model: ResolvedModel, recipe: EvalRecipe, ranks: Ranks, samples: list[Sample],
              cache: ResultCache, on_outputs: Callable[[list[CachedOutput]], None] | None = None
              ) -> tuple[BenchmarkResult, ResultCache] | None:
    """One benchmark on this rank; with several ranks each generates its shard, then rank 0
    merges every rank's cache log and scores (the others return None)."""
    sizer = BatchSizer(recipe.batch_size, umm_home() / "batch_sizes.json", model.digest)
    run = partial(run_benchmark, task, model.backbone, run_seed=recipe.seed, batch_size=sizer,
                  overrides=recipe.params, limit=recipe.limit, samples=samples,
                  scorer=scorer_identity(task, recipe.judge), executor=_executor(recipe), on_outputs=on_outputs)
    if ranks.world_size == 1:
        return run(cache, stage=recipe.stage), cache
    shard = run(cache, stage="generate", shard=(ranks.rank, ranks.world_size))
    computed = ranks.sum(shard.computed)  # also waits until every rank has finished its shard
    if not ranks.is_main:
        return None
    merged = ResultCache(cache.folder)
    result = run(merged, stage=recipe.stage)  # everything is cached now: this only scores
    result.computed, result.reused = computed, result.reused - computed
    result.model_seconds = shard.model_seconds
    return result, merged


def _tag_if_all_skipped(benchmark: str, result: BenchmarkResult) -> None:
    """A benchmark the backbone cannot run at all (editing on a model that cannot edit) says why on its run."""
    if result.samples and len(result.skipped) == len(result.samples):
        reason = sorted(set(result.skipped.values()))[0]
        log.warning("%s: every sample skipped (%s)", benchmark, reason)
        log_batch(tags={"umm.skipped": reason})


def _executor(recipe: EvalRecipe) -> RayExecutor | None:
    """The Ray executor a recipe asks for (None: generate in this process). Its actors load the
    model as this process would, with the same store and home folder."""
    if recipe.executor == "local":
        return None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative to this process's folder
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    env = {"MLFLOW_TRACKING_URI": uri, "UMM_HOME": str(umm_home().resolve()), "CI": os.environ.get("CI")}
    return RayExecutor(partial(load_backbone, recipe), recipe.ray, env)


def _task_judges(recipe: EvalRecipe, names: list[str]) -> dict[str, Any]:
    """Each benchmark's judge: the recipe's, except that under `ray.judge` the vision-judged
    benchmarks get one whose calls run on the Ray cluster (same id, same reply cache)."""
    judged = [name for name in names if issubclass(task_class(name), JudgedTask)]
    if recipe.ray.judge is None or not judged:
        return dict.fromkeys(names, recipe.judge)
    if recipe.executor != "ray":
        raise ConfigError("field 'ray.judge': the judge stage runs on Ray only with --executor ray")
    on_ray = ray_vision_judge(recipe.ray.judge, recipe.judge, _executor(recipe).start)
    return {name: on_ray if name in judged else recipe.judge for name in names}


def load_backbone(recipe: EvalRecipe) -> Backbone:
    """The recipe's model, loaded now (in a Ray actor)."""
    return resolve_model(recipe.model, backbone=recipe.backbone, revision=recipe.revision, dtype=recipe.dtype,
                         device=recipe.device, options=recipe.backbone_options,
                         attn_implementation=recipe.attn_implementation, compile=recipe.compile,
                         env_manager=recipe.env_manager).backbone  # a served model stops with the actor


def _scorer_tag(task: Task) -> dict[str, str]:
    """Which scorer produced the numbers (detector, VQA model, judge), so they are never mixed."""
    scorer = getattr(task, "scorer_id", None)
    return {"umm.scorer": str(scorer)} if scorer else {}


def _generate_run(recipe: EvalRecipe) -> Run:
    """The parent run whose outputs `--stage score` reads: `from_run`, or the newest finished
    generate (or all) run of the same model version, suite, seed and limit."""
    client = MlflowClient()
    if recipe.from_run:
        try:
            run = client.get_run(recipe.from_run)
        except MlflowException:
            raise ConfigError(f"from_run '{recipe.from_run}' is not a run in this tracking store") from None
        if "umm.suite" not in run.data.tags or run.data.tags.get("umm.stage") not in ("generate", "all"):
            raise ConfigError(f"from_run '{recipe.from_run}' is not an evaluation run; pass the run that "
                              "`umm eval --stage generate` (or `mlflow run . -e eval -P stage=generate`) made")
        if BENCHMARK_TAG in run.data.tags:  # a benchmark's run: its parent holds the evaluation
            run = client.get_run(run.data.tags["mlflow.parentRunId"])
        return run
    if not recipe.model.startswith("models:/"):
        raise ConfigError("--stage score needs --from-run <run id>, or --model models:/<name>/<version> to find it")
    name, version, _ = resolve_registered(recipe.model)
    parents = [run for run in parent_runs(
        f"tags.`umm.model_name` = {quoted(name)} and tags.`umm.model_version` = '{version}' "
        f"and tags.`umm.suite` = {quoted(recipe.suite)} and tags.`umm.seed` = '{recipe.seed}' "
        f"and tags.`umm.limit` = '{recipe.limit or 'all'}' and attributes.status = 'FINISHED'")
        if run.data.tags.get("umm.stage") != "score"]
    if not parents:
        raise ConfigError(f"no finished generate run of {recipe.model} on '{recipe.suite}' with seed {recipe.seed} "
                          f"and limit {recipe.limit or 'all'}; run `umm eval --stage generate --model {recipe.model} "
                          f"--suite {recipe.suite}` (same seed and limit) first, or pass --from-run")
    return parents[0]


def _score_logged_outputs(recipe: EvalRecipe, tasks: list[Task], samples: dict[str, list[Sample]]) -> EvalSummary:
    source = _generate_run(recipe)
    tags = source.data.tags
    capabilities = (frozenset(tags["umm.capabilities"].split(",")) if "umm.capabilities" in tags
                    else backbone_class(tags["umm.backbone"]).capabilities)
    project_run = take_project_run()  # under `mlflow run`: it becomes the (first) score run
    model_id = (logged_model_id(tags["umm.model_name"], tags["umm.model_version"])
                if "umm.model_name" in tags and "umm.model_version" in tags else None)
    metrics: dict[str, float] = {}
    results: dict[str, BenchmarkResult] = {}
    with mlflow.start_run(run_id=source.info.run_id):
        for task in tasks:
            generated = benchmark_runs(source.info.run_id, task.name, stages=("generate", "all"))
            if not generated:
                raise ConfigError(f"run {source.info.run_id} has no finished generate run of '{task.name}'; "
                                  f"run `umm eval --stage generate --suite {task.name}` for that model first")
            with tempfile.TemporaryDirectory() as tmp, _score_run(task.name, source, project_run):
                project_run = None
                log_batch(tags={**{k: v for k, v in tags.items() if k.startswith("umm.")}, "umm.stage": "score",
                                "umm.benchmark": task.name, "umm.source_run": generated[0].info.run_id,
                                **_scorer_tag(task), **task.run_tags()},
                          params=flatten(recipe.model_dump(mode="json", include={"judge", "task_options"}), "score."))
                cache = _download_outputs(generated[0].info.run_id, task.name, Path(tmp))
                result = run_benchmark(task, None, cache, run_seed=recipe.seed, batch_size=recipe.batch_size,
                                       limit=recipe.limit, stage="score", capabilities=capabilities,
                                       samples=samples[task.name])
                logged = log_benchmark(task.name, result, cache, log_images=False)
                log_model_scores(task.name, result, logged, model_id)
                metrics.update(logged)
                results[task.name] = result
        log_batch(metrics=official(metrics))
    if "umm.model_name" in tags and "umm.model_version" in tags:
        describe_version(tags["umm.model_name"], tags["umm.model_version"],
                         scores=score_summary(source.info.run_id, recipe.suite, recipe.limit, recipe.seed, metrics))
    return EvalSummary(source.info.run_id, tags.get("umm.model_name", ""), tags.get("umm.model_version", ""),
                       metrics, results)


def _score_run(benchmark: str, source: Run, run_id: str | None) -> mlflow.ActiveRun:
    """A new child of `source` for one benchmark's scores, or the handed-over project run made one."""
    if run_id is None:
        return mlflow.start_run(run_name=f"{benchmark} (score)", nested=True, experiment_id=source.info.experiment_id)
    MlflowClient().log_batch(run_id, tags=[RunTag("mlflow.parentRunId", source.info.run_id),
                                           RunTag("mlflow.runName", f"{benchmark} (score)")])
    return mlflow.start_run(run_id=run_id, nested=True)


def _download_outputs(run_id: str, benchmark: str, folder: Path) -> ResultCache:
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder / "artifacts")))
    rows = [json.loads(line) for line in (artifacts / "samples" / f"{benchmark}.jsonl").read_text().splitlines()]
    cache = ResultCache(folder / "cache")
    cache.import_outputs(rows, artifacts)
    return cache
