"""`--executor ray`: generation on a Ray Data pool of backbone actors; everything else stays here.

The runner plans the batches as always (fixed work order, per-sample seeds in every request);
this executor ships them to a pool of actors, each of which loads the backbone once, and streams
each finished batch back to the driver, which writes it to the same resumable cache before
taking the next. Scoring and MLflow logging happen on the driver exactly as with the local
executor, so the outputs and metrics are the same, and a driver killed mid-run resumes from the
cache when rerun.

Actors take one GPU each on GPU clusters; on CPU machines a fraction of a CPU (`cpus_per_actor`),
since whole-CPU actors would leave Ray Data's read task no CPU on a small machine. Requests and
results cross process boundaries pickled in a binary column, images included.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from umm_harness.core.backbone import Backbone
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceRequest, InferenceResult
from umm_harness.ray_judge import RayJudgeSettings

log = logging.getLogger(__name__)


class RaySettings(BaseModel):
    """The `ray:` block of an eval recipe."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None  # a running cluster (`ray://host:10001`, `auto`); None: a local Ray
    actors: int = Field(default=1, ge=1)  # backbone replicas
    cpus_per_actor: float = Field(default=0.5, gt=0)
    gpus_per_actor: float = Field(default=0, ge=0)  # 1 on GPU clusters
    judge: RayJudgeSettings | None = None  # judged benchmarks' judge calls on the cluster too (`ray_judge`)


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--executor ray needs Ray Data: pip install -e '.[ray]'") from None
    return ray


class _BackboneActor:
    """One backbone replica: loads the model once, answers pickled batches."""

    def __init__(self, load: Callable[[], Backbone]):
        self.backbone = load()

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import time

        import numpy as np

        answers, seconds = [], []
        for payload in rows["requests"]:
            requests: list[InferenceRequest] = pickle.loads(payload)
            start = time.perf_counter()
            results = self.backbone.run(requests)
            seconds.append(time.perf_counter() - start)
            answers.append(pickle.dumps(results))
        return {"index": rows["index"], "results": np.array(answers, dtype=object),
                "seconds": np.array(seconds)}


class RayExecutor:
    """Runs batches of requests on Ray actors; `run_batches` yields them as they finish."""

    def __init__(self, load: Callable[[], Backbone], settings: RaySettings, env: dict[str, str] | None = None):
        self.ray = _require_ray()
        self.load = load
        self.settings = settings
        self.env = env or {}

    def start(self) -> Any:
        """Ray, started (or joined) once per process, for the generation and judge stages alike."""
        ray = self.ray
        if ray.is_initialized():
            return ray
        runtime_env = {"env_vars": {k: v for k, v in self.env.items() if v is not None}}
        if self.settings.address:
            ray.init(address=self.settings.address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return ray

    def run_batches(self, batches: list[list[InferenceRequest]]) -> Iterator[tuple[int, list[InferenceResult], float]]:
        """(batch index, results, seconds in the model) for every batch, in the order they finish."""
        if not batches:
            return
        self.start()
        rows = [{"index": i, "requests": pickle.dumps(batch)} for i, batch in enumerate(batches)]
        dataset = self.ray.data.from_items(rows).map_batches(
            _BackboneActor,
            fn_constructor_kwargs={"load": self.load},
            batch_size=1,
            compute=self.ray.data.ActorPoolStrategy(size=self.settings.actors),
            num_cpus=self.settings.cpus_per_actor,
            num_gpus=self.settings.gpus_per_actor or None,
        )
        for row in dataset.iter_rows():
            yield int(row["index"]), pickle.loads(row["results"]), float(row["seconds"])
