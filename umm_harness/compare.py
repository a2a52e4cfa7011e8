"""`umm compare`: registered versions of one model, side by side on one suite.

Each version's evaluation is reused when a finished one exists (same model version, suite,
seed, sample limit and harness version) and run otherwise. Deltas against the baseline version
come with a paired bootstrap interval: sample ids are resampled with replacement, the same
resample for both versions, and every metric is recomputed with the task's own `aggregate`,
so the interval is right for any official metric, not only for plain means.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from pydantic import BaseModel, ConfigDict, Field

import umm_harness
from tasks.base import Sample, Task
from tasks.registry import suite_benchmarks, task_class
from umm_harness.config import EvalRecipe, flatten
from umm_harness.core.errors import ConfigError
from umm_harness.evaluate import evaluate
from umm_harness.model_registry import describe_version
from umm_harness.runner import limit_samples
from umm_harness.runs import benchmark_runs, parent_runs, run_path, start_top_level_run, take_project_run
from umm_harness.search_filters import quoted
from umm_harness.tracking import log_batch, official

log = logging.getLogger(__name__)


class CompareRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = "janus-pro-tiny"
    versions: list[str] = Field(default_factory=list)  # empty: the two latest versions
    baseline: str | None = None  # default: the first of `versions`
    suite: str = "shapes"
    seed: int = 0
    limit: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, ge=1)
    data_dir: Path | None = None
    bootstrap: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    experiment: str | None = None  # None: MLflow's current experiment (umm_harness.runs)


@dataclass
class Delta:
    metric: str
    version: str
    value: float
    baseline_value: float
    delta: float
    low: float
    high: float


@dataclass
class Comparison:
    model_name: str
    baseline: str
    versions: list[str]
    values: dict[str, dict[str, float]]  # version → metric → value
    deltas: list[Delta]
    eval_runs: dict[str, str]  # version → parent eval run id
    run_id: str | None = None

    def delta(self, metric: str, version: str) -> Delta:
        return next(d for d in self.deltas if d.metric == metric and d.version == version)

    def table(self) -> pd.DataFrame:
        rows = []
        for metric in sorted(self.values[self.baseline]):
            row: dict[str, Any] = {"metric": metric}
            for version in self.versions:
                row[f"v{version}"] = self.values[version].get(metric)
            for d in (d for d in self.deltas if d.metric == metric):
                row[f"delta v{d.version}"] = d.delta
                row[f"ci v{d.version}"] = f"[{d.low:+.4f}, {d.high:+.4f}]"
            rows.append(row)
        return pd.DataFrame(rows)


def _latest_versions(name: str, count: int) -> list[str]:
    versions = sorted((int(mv.version) for mv in MlflowClient().search_model_versions(f"name = {quoted(name)}")))
    if len(versions) < count:
        raise ConfigError(f"registered model '{name}' has {len(versions)} version(s); comparing needs {count}: "
                          + ("evaluate one first (`umm eval` or `mlflow run . -e eval`), then " if not versions else "")
                          + "post-train it (`umm train` or `mlflow run . -e train`)")
    return [str(v) for v in versions[-count:]]


def find_eval_run(name: str, version: str, suite: str, seed: int, limit: int | None) -> str | None:
    """The newest finished parent eval run of exactly this work, made by any entry point, if one exists."""
    parents = parent_runs(
        f"tags.`umm.model_name` = {quoted(name)} and tags.`umm.model_version` = '{version}' "
        f"and tags.`umm.suite` = {quoted(suite)} and tags.`umm.seed` = '{seed}' "
        f"and tags.`umm.limit` = '{limit or 'all'}' and tags.`umm.stage` = 'all' "
        f"and tags.`umm.harness_version` = '{umm_harness.__version__}' and attributes.status = 'FINISHED'"
    )
    return parents[0].info.run_id if parents else None


def _records(parent: Run, benchmark: str) -> dict[str, dict[str, Any]]:
    """The score record of every sample the evaluation scored, from its benchmark run."""
    scored = benchmark_runs(parent.info.run_id, benchmark, stages=("all", "score"))
    if not scored:
        tags = parent.data.tags
        raise ConfigError(f"eval run {parent.info.run_id} has no finished '{benchmark}' run; run "
                          f"`umm eval --model {tags.get('umm.model_uri', '<model>')} --suite {tags.get('umm.suite')}` "
                          "again, or delete that run")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=scored[0].info.run_id,
                                                   artifact_path=f"samples/{benchmark}.jsonl", dst_path=tmp)
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {row["sample_id"]: row for row in rows if row.get("status") == "scored"}


def paired_bootstrap(
    task: Task, samples: list[Sample], base: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]],
    resamples: int, confidence: float, seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """metric → (delta, low, high) of other − base over the samples both scored."""
    paired = [s for s in samples if s.id in base and s.id in other]
    if not paired:
        return {}
    point_base, point_other = task.aggregate(paired, base), task.aggregate(paired, other)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {metric: [] for metric in point_base if metric in point_other}
    for _ in range(resamples):
        resample = [paired[i] for i in rng.integers(0, len(paired), len(paired))]
        metrics_base, metrics_other = task.aggregate(resample, base), task.aggregate(resample, other)
        for metric, values in draws.items():
            if metric in metrics_base and metric in metrics_other:
                values.append(metrics_other[metric] - metrics_base[metric])
    tail = (1 - confidence) / 2 * 100
    return {
        metric: (point_other[metric] - point_base[metric],
                 float(np.percentile(values, tail)) if values else float("nan"),
                 float(np.percentile(values, 100 - tail)) if values else float("nan"))
        for metric, values in draws.items()
    }


def _ensure_eval(recipe: CompareRecipe, version: str) -> str:
    run_id = find_eval_run(recipe.model_name, version, recipe.suite, recipe.seed, recipe.limit)
    if run_id:
        log.info("reusing eval run %s for %s version %s", run_id, recipe.model_name, version)
        return run_id
    log.info("no finished eval of %s version %s on %s: running it", recipe.model_name, version, recipe.suite)
    summary = evaluate(EvalRecipe(model=f"models:/{recipe.model_name}/{version}", suite=recipe.suite,
                                  seed=recipe.seed, limit=recipe.limit, batch_size=recipe.batch_size,
                                  data_dir=recipe.data_dir, experiment=recipe.experiment))
    return summary.run_id


def compare(recipe: CompareRecipe, log_run: bool = True) -> Comparison:
    # Under `mlflow run`, the launcher's run is the comparison's, not a fallback evaluation's.
    project_run = take_project_run() if log_run else None
    benchmarks = suite_benchmarks(recipe.suite)
    versions = recipe.versions or _latest_versions(recipe.model_name, 2)
    baseline = recipe.baseline or versions[0]
    if baseline not in versions:
        versions = [baseline, *versions]
    client = MlflowClient()
    for version in versions:
        try:
            client.get_model_version(recipe.model_name, version)
        except mlflow.exceptions.MlflowException:
            raise ConfigError(f"registered model '{recipe.model_name}' has no version {version}") from None

    eval_runs = {version: _ensure_eval(recipe, version) for version in versions}
    parents = {version: client.get_run(run_id) for version, run_id in eval_runs.items()}
    values = {version: official({k: v for k, v in parent.data.metrics.items() if k.split("/", 1)[0] in benchmarks})
              for version, parent in parents.items()}
    deltas: list[Delta] = []
    for benchmark in benchmarks:
        task = task_class(benchmark)(data_dir=recipe.data_dir)
        samples = limit_samples(task.samples(), recipe.limit)
        base_records = _records(parents[baseline], benchmark)
        for version in versions:
            if version == baseline:
                continue
            intervals = paired_bootstrap(task, samples, base_records, _records(parents[version], benchmark),
                                         recipe.bootstrap, recipe.confidence, seed=recipe.seed)
            for metric, (delta, low, high) in intervals.items():
                key = f"{benchmark}/{metric}"
                deltas.append(Delta(key, version, values[version].get(key, float("nan")),
                                    values[baseline].get(key, float("nan")), delta, low, high))
    comparison = Comparison(recipe.model_name, baseline, versions, values, deltas, eval_runs)
    if log_run:
        comparison.run_id = _log_comparison(recipe, comparison, project_run)
        for version in versions:
            if version != baseline:
                describe_version(recipe.model_name, version, deltas=_headline(comparison, version, recipe.suite))
    return comparison


def _headline(comparison: Comparison, version: str, suite: str, count: int = 3) -> str:
    """The `count` largest changes of `version` against the baseline, with their intervals."""
    largest = sorted((d for d in comparison.deltas if d.version == version), key=lambda d: -abs(d.delta))[:count]
    changes = ", ".join(f"{d.metric} {d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for d in largest)
    return (f"Against version {comparison.baseline} on {suite} (comparison run {comparison.run_id}): "
            f"{changes or 'no paired metric'}.")


def _links(comparison: Comparison, suite: str) -> str:
    """The comparison run's description: what it compared, with a link to each evaluation run."""
    client = MlflowClient()
    lines = [f"{comparison.model_name} on {suite}: version {' vs '.join(comparison.versions)}, deltas against "
             f"version {comparison.baseline} with paired bootstrap intervals.", "", "Evaluation runs compared:", ""]
    for version, run_id in comparison.eval_runs.items():
        run = client.get_run(run_id)
        lines.append(f"- version {version}: [eval run {run_id}]({run_path(run)}) ({run.info.run_name})")
    return "\n".join(lines)


def _log_comparison(recipe: CompareRecipe, comparison: Comparison, project_run: str | None) -> str:
    import matplotlib.pyplot as plt

    run_name = f"{comparison.model_name}: v{' vs v'.join(comparison.versions)}"
    with start_top_level_run(run_name, recipe.experiment, project_run) as run:
        comparison.run_id = run.info.run_id
        mlflow.set_tag("mlflow.note.content", _links(comparison, recipe.suite))
        metrics = {f"delta/{d.metric}/v{d.version}": d.delta for d in comparison.deltas}
        metrics |= {f"ci_low/{d.metric}/v{d.version}": d.low for d in comparison.deltas}
        metrics |= {f"ci_high/{d.metric}/v{d.version}": d.high for d in comparison.deltas}
        log_batch(metrics=metrics, params=flatten(recipe.model_dump(mode="json"), "recipe."),
                  tags={"umm.model_name": comparison.model_name, "umm.suite": recipe.suite,
                        "umm.baseline_version": comparison.baseline,
                        "umm.compared_versions": ",".join(comparison.versions),
                        "umm.eval_runs": json.dumps(comparison.eval_runs)})
        mlflow.log_text(comparison.table().to_csv(index=False), "comparison.csv")
        main_metrics = sorted(comparison.values[comparison.baseline])
        figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(main_metrics) + 2), 4))
        width = 0.8 / len(comparison.versions)
        for index, version in enumerate(comparison.versions):
            heights = [comparison.values[version].get(m, 0.0) for m in main_metrics]
            errors = None
            if version != comparison.baseline:
                found = {d.metric: d for d in comparison.deltas if d.version == version}
                errors = np.array([[max(found[m].delta - found[m].low, 0) if m in found else 0 for m in main_metrics],
                                   [max(found[m].high - found[m].delta, 0) if m in found else 0 for m in main_metrics]])
            axis.bar(np.arange(len(main_metrics)) + index * width, heights, width, yerr=errors, capsize=3,
                     label=f"v{version}" + (" (baseline)" if version == comparison.baseline else ""))
        axis.set_xticks(np.arange(len(main_metrics)) + 0.4 - width / 2, main_metrics, rotation=45, ha="right",
                        fontsize=7)
        axis.legend()
        axis.set_title(f"{comparison.model_name} on {recipe.suite} (error bars: {recipe.confidence:.0%} CI of delta)")
        figure.tight_layout()
        mlflow.log_figure(figure, "plots/comparison.png")
        plt.close(figure)
        return run.info.run_id
