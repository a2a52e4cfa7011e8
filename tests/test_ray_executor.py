"""`--executor ray`: generation on a Ray Data actor pool (Ray started locally on this CPU), the
same outputs and metrics as the local executor, and a killed driver resumed from the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from umm_harness.config import EvalRecipe
from umm_harness.core.home import umm_home
from umm_harness.evaluate import evaluate
from umm_harness.tracking import official

pytestmark = pytest.mark.slow
LIMIT = 18  # 2 samples of each shapes category


def _outputs(cache_root: Path) -> dict[tuple[str, int], dict]:
    lines = [json.loads(line) for log in cache_root.glob("*/outputs*.jsonl") for line in log.read_text().splitlines()]
    return {(line["sample_id"], line["k"]): line for line in lines}


def _samples(run_id: str) -> list[dict]:
    child = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.mlflow.parentRunId = '{run_id}'")[0]
    path = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="samples/shapes.jsonl")
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_the_ray_executor_gives_the_local_executors_outputs_and_metrics(workspace, tmp_path):
    local = evaluate(EvalRecipe(limit=LIMIT, batch_size=4, cache_dir=tmp_path / "local"))
    on_ray = evaluate(EvalRecipe(limit=LIMIT, batch_size=4, cache_dir=tmp_path / "ray", executor="ray",
                                 ray={"actors": 2, "cpus_per_actor": 0.5}))
    assert on_ray.results["shapes"].computed == local.results["shapes"].computed > 0
    import ray

    assert ray.is_initialized() and len(ray.nodes()) == 1  # the outputs came back through Ray
    ours, theirs = _outputs(tmp_path / "ray"), _outputs(tmp_path / "local")
    assert ours.keys() == theirs.keys()
    for key, line in ours.items():  # same seeds, answers and images (images by their content digest)
        assert {k: v for k, v in line.items() if k not in ("elapsed_s",)} == \
               {k: v for k, v in theirs[key].items() if k not in ("elapsed_s",)}
    assert official(on_ray.metrics) == official(local.metrics)
    assert _samples(on_ray.run_id) == _samples(local.run_id)


def test_a_killed_ray_driver_resumes_from_the_cache(workspace, tmp_path):
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "umm_harness", "eval", "--limit", str(LIMIT), "--batch-size", "2",
            "--executor", "ray", "--cache-dir", str(cache)]
    driver = subprocess.Popen(args, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(_outputs(cache)) < 4:
        assert driver.poll() is None, "the driver ended before the kill"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait(timeout=60)
    before = _outputs(cache)
    assert len(before) >= 4

    done = subprocess.run(args, cwd=workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _outputs(cache)
    for key, line in before.items():
        assert after[key] == line  # nothing finished was recomputed
    client = mlflow.MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                                  "tags.`umm.benchmark` = 'shapes' and attributes.status = 'FINISHED'")
    assert child.data.metrics["shapes/outputs_reused"] == len(before)
    assert child.data.metrics["shapes/outputs_computed"] == len(after) - len(before)
    assert not list((umm_home() / "cache").glob("*"))  # all of it under --cache-dir
