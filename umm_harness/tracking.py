"""How an evaluation appears in MLflow (DESIGN.md, "MLflow conventions").

Metrics are `<benchmark>/<metric>` and are logged in one batch per run (one call per value
costs ~5 ms each on SQLite). Per-sample records go out as JSONL and as an MLflow table;
images keep their cache file names under `images/<benchmark>/`. Editing samples also get their
input image logged beside the edit (`<edit name>_source.png`) and a second table,
`samples/<benchmark>_edits.json`, whose image columns the UI shows side by side.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image

from tasks.base import Sample
from umm_harness.cache import CachedOutput, ResultCache
from umm_harness.runner import BenchmarkResult

log = logging.getLogger(__name__)


# Per-benchmark counts logged beside the official metrics (`<benchmark>/<name>`).
BOOKKEEPING_METRICS = ("num_samples", "failed_samples", "skipped_samples", "outputs_computed", "outputs_reused",
                       "outputs_per_s", "peak_rss_mb", "peak_vram_mb")


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and peak accelerator memory when there is one."""
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peaks["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def official(metrics: dict[str, float]) -> dict[str, float]:
    """The benchmark metrics without the bookkeeping counts."""
    return {k: v for k, v in metrics.items() if k.rsplit("/", 1)[-1] not in BOOKKEEPING_METRICS}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log_batch(metrics: dict[str, float] | None = None, params: dict[str, str] | None = None,
              tags: dict[str, str] | None = None) -> None:
    """Metrics, params and tags of the active run in as few requests as MLflow allows (one
    request takes at most 100 params and 100 tags)."""
    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    param_list = [Param(key, value[:6000]) for key, value in (params or {}).items()]
    tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    for start in range(0, max(len(param_list), len(tag_list), 1), 100):
        mlflow.MlflowClient().log_batch(
            run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()] if not start else [],
            params=param_list[start:start + 100], tags=tag_list[start:start + 100],
        )


def prefixed(benchmark: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{benchmark}/{name}": value for name, value in metrics.items()}


def _sample_rows(benchmark: str, result: BenchmarkResult, cache: ResultCache) -> list[dict[str, Any]]:
    """One row per sample: what was asked, every output (seed, text, image artifact paths), and
    the task's score record; `outputs` is also what a later `--stage score` reads back."""
    rows = []
    for sample in result.samples:
        row: dict[str, Any] = {"sample_id": sample.id, "category": sample.category}
        if sample.request is not None:
            row["prompt"] = sample.request.prompt
        row["references"] = sample.references
        if sample.id in result.failed:
            row.update(status="failed", reason=result.failed[sample.id])
        elif sample.id in result.skipped:
            row.update(status="skipped", reason=result.skipped[sample.id])
        else:
            entries = [cache.entry(sample.id, k) for k in range(sample.n)]
            outputs = [{"k": e.k, "seed": e.seed, "text": e.text,
                        "images": [f"images/{benchmark}/{name}" for name in e.images]} for e in entries]
            # The task's record first: the bookkeeping keys below must not be shadowed by it.
            record = result.records.get(sample.id)
            row = {**(record or {}), **row, "status": "scored" if record is not None else "generated",
                   "outputs": outputs}
        rows.append(row)
    return rows


def _category_plot(benchmark: str, metrics: dict[str, float], cache: ResultCache) -> Path:
    """The bar chart of `metrics`, drawn once per distinct set of values and kept in the cache:
    rerunning a finished evaluation logs the same picture without drawing it again."""
    path = cache.folder / "plots" / ResultCache.key(metrics=metrics) / f"{benchmark}_categories.png"
    if path.is_file():
        return path
    names = sorted(metrics)
    # Margins from the longest label instead of `tight_layout` (an extra layout pass that doubled
    # the drawing time); a Figure of its own, not pyplot's global state.
    label_in = 0.045 * max(len(name) for name in names) + 0.3  # 8 pt labels at 45°
    figure = Figure(figsize=(max(4.0, 0.6 * len(names) + 1), 2.8 + label_in))
    figure.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=label_in / (2.8 + label_in))
    axis = figure.add_subplot()
    axis.bar(range(len(names)), [metrics[n] for n in names], color="#4C72B0")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axis.set_title(benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path.with_suffix(".tmp.png"))
    path.with_suffix(".tmp.png").replace(path)  # a killed run never leaves half a picture
    return path


def _upload_images(run_id: str, benchmark: str, cache: ResultCache, names: list[str],
                   sources: dict[str, Image.Image] | None = None) -> None:
    """Cached images (and edit sources) into the run's `images/<benchmark>/`, in one request."""
    with tempfile.TemporaryDirectory(dir=cache.folder) as tmp:  # beside the images: links, not copies
        for name in names:
            try:
                os.link(cache.images_dir / name, Path(tmp) / name)
            except OSError:  # a file system without hard links
                shutil.copyfile(cache.images_dir / name, Path(tmp) / name)
        for name, image in (sources or {}).items():
            image.save(Path(tmp) / name, format="PNG")
        mlflow.MlflowClient().log_artifacts(run_id, tmp, f"images/{benchmark}")


class ImageUploads:
    """A benchmark's new images go into its run while the model works: each batch, as it lands in
    the cache, is logged by one background thread (file copies and uploads wait on I/O, not on the
    model loop), so at the end only what is still in flight remains. `log_benchmark` logs the rest."""

    def __init__(self, benchmark: str, cache: ResultCache):
        self.run_id = mlflow.active_run().info.run_id
        self.benchmark, self.cache = benchmark, cache
        self.logged: set[str] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="umm-upload")
        self._uploads: list[Future] = []

    def add(self, outputs: list[CachedOutput]) -> None:
        names = [name for output in outputs for name in output.images if name not in self.logged]
        if names:
            self.logged.update(names)
            self._uploads.append(self._thread.submit(_upload_images, self.run_id, self.benchmark, self.cache, names))

    def wait(self) -> None:
        """Every upload done (an upload's error is raised here)."""
        self._thread.shutdown(wait=True)
        for upload in self._uploads:
            upload.result()


def _log_images(benchmark: str, rows: list[dict[str, Any]], cache: ResultCache,
                sources: dict[str, Image.Image] | None = None, uploads: ImageUploads | None = None) -> None:
    """Log this run's images only (the cache may hold more, from a run with a larger limit), and
    the input image of each edit beside it (`<edit name>_source.png`); those `uploads` already
    logged are not logged again."""
    names = [Path(path).name for row in rows for output in row.get("outputs") or [] for path in output["images"]]
    if uploads is not None:
        uploads.wait()
        names = [name for name in names if name not in uploads.logged]
    if names or sources:
        _upload_images(mlflow.active_run().info.run_id, benchmark, cache, names, sources)


def _edit_pairs(result: BenchmarkResult, cache: ResultCache) -> list[tuple[Sample, Image.Image, Path]]:
    """(sample, input image, first edit's file) for every editing sample that has an edit."""
    pairs = []
    for sample in result.samples:
        request = sample.request
        if request is None or request.task != "editing" or not request.images:
            continue
        entry = None if sample.id in result.failed or sample.id in result.skipped else cache.entry(sample.id, 0)
        if entry is not None and entry.images:
            pairs.append((sample, request.images[0], cache.images_dir / entry.images[0]))
    return pairs


def _thumbnail(image: Image.Image, side: int = 256) -> Image.Image:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    return small


def _log_edit_table(benchmark: str, result: BenchmarkResult, pairs: list[tuple[Sample, Image.Image, Path]]) -> None:
    """`samples/<benchmark>_edits.json`: instruction, score, input and edit side by side in the MLflow UI."""
    rows = []
    for sample, source, edit_path in pairs:
        with Image.open(edit_path) as edit:
            edit_small = _thumbnail(edit)
        record = result.records.get(sample.id) or {}
        rows.append({"sample_id": sample.id, "category": sample.category, "instruction": sample.request.prompt,
                     "score": record.get("score"), "source": _thumbnail(source), "edit": edit_small})
    mlflow.log_table(pd.DataFrame(rows), artifact_file=f"samples/{benchmark}_edits.json")


def log_benchmark(benchmark: str, result: BenchmarkResult, cache: ResultCache, log_images: bool = True,
                  uploads: ImageUploads | None = None) -> dict[str, float]:
    """Log one benchmark's outcome to the active (child) run; returns the prefixed metrics
    (official ones and bookkeeping: sample counts, failures, outputs computed and reused).
    `uploads`: the images already on their way during generation."""
    metrics = prefixed(benchmark, result.metrics)
    bookkeeping = {
        "num_samples": len(result.samples),
        "failed_samples": len(result.failed),
        "skipped_samples": len(result.skipped),
        "outputs_computed": result.computed,
        "outputs_reused": result.reused,
    }
    if result.computed and result.model_seconds > 0:
        bookkeeping["outputs_per_s"] = result.computed / result.model_seconds
    bookkeeping.update(peak_memory_mb())
    metrics.update(prefixed(benchmark, bookkeeping))
    log_batch(metrics=metrics)

    rows = _sample_rows(benchmark, result, cache)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / f"{benchmark}.jsonl"
        jsonl.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
        mlflow.log_artifact(str(jsonl), "samples")
    table = pd.DataFrame([{k: (json.dumps(v, default=str) if isinstance(v, dict | list) else v)
                           for k, v in row.items()} for row in rows])
    mlflow.log_table(table, artifact_file=f"samples/{benchmark}_table.json")
    pairs = _edit_pairs(result, cache)
    if pairs:
        _log_edit_table(benchmark, result, pairs)
    if log_images:
        _log_images(benchmark, rows, cache, {f"{path.stem}_source.png": source for _, source, path in pairs}, uploads)
    if result.metrics:
        mlflow.log_artifact(str(_category_plot(benchmark, result.metrics, cache)), "plots")
    if result.failed:
        log.warning("%s: %d sample(s) failed and were left out of the metrics (see samples/%s.jsonl)",
                    benchmark, len(result.failed), benchmark)
    return metrics


def log_model_scores(benchmark: str, result: BenchmarkResult, metrics: dict[str, float], model_id: str | None) -> None:
    """Attach the benchmark's official metrics to the evaluated model too (MLflow 3 logged-model
    metrics, the benchmark as their dataset), so the registry's version pages show its scores."""
    scores = official(metrics)
    if model_id is None or not scores:
        return
    samples = pd.DataFrame({"sample_id": [s.id for s in result.samples],
                            "category": [s.category for s in result.samples]})
    dataset = mlflow.data.from_pandas(samples, name=benchmark)
    try:
        mlflow.log_metrics(scores, model_id=model_id, dataset=dataset)
    except MlflowException as exc:
        # Another evaluation recorded the same dataset in this experiment at this very moment: the
        # SQL store refuses the twin row, and the second attempt finds the first one's.
        if not re.search(r"unique|duplicate key", str(exc), re.IGNORECASE):
            raise
        mlflow.log_metrics(scores, model_id=model_id, dataset=dataset)


def score_summary(run_id: str, suite: str, limit: int | None, seed: int, metrics: dict[str, float]) -> str:
    """One paragraph of an evaluation's official metrics, for the evaluated version's description."""
    values = ", ".join(f"{key} {value:.3f}" for key, value in sorted(official(metrics).items()))
    return f"Scores on {suite} (limit {limit or 'all'}, seed {seed}; eval run {run_id}): {values}."
