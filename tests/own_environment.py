"""Backbones whose authors' code imports only in an environment of its own (Emu3.5, JanusFlow): their
tiny random-weight model is built inside the environment MLflow makes for them, and `umm eval` runs
the registered model there."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pytest
from PIL import Image

from model_flavors import flavor
from tests.conftest import REPO
from tests.reload import assert_same_predictions, environment_python, predict_in_fresh_process
from tests.serving import invoke, served
from umm_harness.config import EvalRecipe
from umm_harness.core.requests import InferenceParams, encode_png
from umm_harness.evaluate import evaluate

RED_SCENE = encode_png(Image.new("RGB", (64, 64), "red"))  # the image every row that takes one is sent


def shared_checkout(folder: str) -> tuple[Path, pytest.MarkDecorator]:
    """A snapshot of upstream code in ../shared/upstream, and the mark that skips a module without it."""
    checkout = REPO.parent / "shared" / "upstream" / folder
    return checkout, pytest.mark.skipif(not checkout.is_dir(), reason=f"no {folder} checkout at {checkout}")


def tiny_in_its_own_environment(checkpoint: Callable[[str], flavor.Checkpoint], hub_id: str, builder: str,
                                checkout: Path, root: Path) -> tuple[Path, Path, Path]:
    """(model folder, its environment's python, the tiny weights): MLflow builds (or finds) the uv
    environment of a model of the hub checkpoint `hub_id`; `python -m <builder> <folder> <checkout>`
    builds the tiny model in it, with the model's own `code/` on the path; that is saved as a model."""
    started = time.perf_counter()
    flavor.save_model(checkpoint(hub_id), root / "environment-only")
    python = environment_python(root / "environment-only", "uv", root)
    environment_s = time.perf_counter() - started
    subprocess.run([str(python), "-m", builder, str(root / "tiny"), str(checkout)], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": str(root / "environment-only" / "code")}, timeout=900)
    flavor.save_model(checkpoint(str(root / "tiny")), root / "model")
    print(f"{builder}: environment ready in {environment_s:.1f} s; tiny build {time.perf_counter() - started:.1f} s")
    return root / "model", python, root / "tiny"


def assert_registers_and_evaluates_on_shapes(checkpoint: flavor.Checkpoint, params: InferenceParams) -> None:
    """Logged and registered (`<backbone>-tiny`, version 1), the model goes through `umm eval` on four
    `shapes` samples in the environment it names: the run is tagged with its backbone and uv, no sample fails."""
    key = checkpoint.backbone
    mlflow.set_experiment(key)
    with mlflow.start_run():
        info = flavor.log_model(checkpoint, registered_model_name=f"{key}-tiny")
    assert info.registered_model_version == 1
    summary = evaluate(EvalRecipe(model=f"models:/{key}-tiny/1", limit=4, seed=1, batch_size=4, params=params,
                                  experiment=f"eval-{key}"))
    tags = mlflow.MlflowClient().get_run(summary.run_id).data.tags
    assert tags["umm.backbone"] == key and tags["umm.env_manager"] == "uv"  # the model's own choice
    assert summary.metrics["shapes/failed_samples"] == 0
    assert 0.0 <= summary.metrics["shapes/generation_overall"] <= 1.0
    assert 0.0 <= summary.metrics["shapes/understanding_acc"] <= 1.0


@contextmanager
def served_answers(model_dir: Path, rows: list[dict[str, Any]], params: dict[str, Any],
                   cwd: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(url, its answers to `rows`) from `mlflow models serve --env-manager uv` of the model, while it runs."""
    with served(str(model_dir), cwd=cwd, timeout_s=900, env_manager="uv") as url:
        answer = invoke(url, rows, params=params)
        assert answer.status_code == 200, answer.text
        yield url, answer.json()["predictions"]


def assert_a_fresh_process_answers_alike(model_dir: Path, python: Path, rows: list[dict[str, Any]],
                                         params: dict[str, Any], predictions: list[dict[str, Any]], cwd: Path) -> None:
    """The model loaded by a fresh `python` of its environment, from its own code/, answers as `predictions`."""
    fresh = predict_in_fresh_process({"model": (model_dir, rows, params)}, cwd, python=str(python))["model"]
    assert fresh["module"].startswith(str(model_dir / "code"))
    assert_same_predictions(fresh["rows"], predictions)
