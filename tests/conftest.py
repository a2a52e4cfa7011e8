"""Shared fixtures: an isolated MLflow store and UMM_HOME per test, one tiny model per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _quiet_torch():
    import torch

    torch.set_num_threads(1)  # tiny models run faster on one thread per process (MODELS.md)


def tiny_dir(tmp_path_factory, name: str, builder) -> Path:
    """A tiny model built by `builder` once per test session, shared by every test file that asks for it."""
    folder = tmp_path_factory.getbasetemp() / "tiny-backbones" / name
    if not folder.is_dir():
        builder(folder, seed=0)
    return folder


def tiny_dir_fixture(name: str, builder):
    """A session fixture giving `tiny_dir(..., name, builder)`: `tiny_x_dir = tiny_dir_fixture("x", build_tiny)`."""

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory) -> Path:
        return tiny_dir(tmp_path_factory, name, builder)

    return fixture


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory) -> Path:
    """The tiny Janus-Pro, built once per test session (it is deterministic from its seed)."""
    from model_flavors.janus import build_tiny

    folder = tmp_path_factory.mktemp("tiny") / "janus-pro"
    build_tiny(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_janus(tiny_janus_dir):
    from model_flavors.janus import JanusPro

    return JanusPro.load(str(tiny_janus_dir))


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_janus_dir) -> Path:
    """A fresh MLflow store (MLflow's default layout, in tmp) and UMM_HOME holding the tiny model."""
    home = tmp_path / "umm_home"
    shutil.copytree(tiny_janus_dir, home / "tiny" / "janus-pro")
    monkeypatch.setenv("UMM_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    _forget_mlflow_state()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    _forget_mlflow_state()


def _forget_mlflow_state() -> None:
    # `mlflow.set_experiment` exports MLFLOW_EXPERIMENT_ID for child processes; a test's choice
    # must not leak into the next test's store.
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(name, None)
    mlflow.tracking.fluent._active_experiment_id = None


def umm(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `umm` CLI in a subprocess, with this process's environment (plus `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "umm_harness", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
