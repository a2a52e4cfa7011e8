"""The tracking store: first use serialised across processes, unusable stores refused in one line.

Without the lock, two processes opening a fresh SQLite store at once both run MLflow's schema
migrations and one of them fails (alembic "Online migration expected to match one row", or a
table that "already exists"); on this machine that happened in 6 of 6 tries with two `umm`
processes, and in 5 of 5 with two plain MLflow clients (what `mlflow run`'s launcher is).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import traceback
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry.utils import _get_store_registry as _registry_stores
from mlflow.tracking._tracking_service.utils import _tracking_store_registry

from tests.conftest import umm
from umm_harness import sqlite_store
from umm_harness.runs import start_top_level_run
from umm_harness.store import open_store


def _umm_command(uri: str, name: str) -> None:
    """What every `umm` command that logs does: open the store, then its top-level run."""
    open_store()
    with start_top_level_run(name, experiment="umm-eval"):
        mlflow.log_param("who", name)
        mlflow.log_metric("m", 1.0)


def _mlflow_run_launcher(uri: str, name: str) -> None:
    """What `mlflow run`'s launcher does before our entry point starts: plain MLflow, no code of ours."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("umm-eval")
    experiment_id = experiment.experiment_id if experiment else _create_experiment(client)
    run = client.create_run(experiment_id, run_name=name)
    client.log_param(run.info.run_id, "who", name)
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)


def _create_experiment(client: MlflowClient) -> str:
    try:
        return client.create_experiment("umm-eval")
    except MlflowException:  # the other process created it first
        return client.get_experiment_by_name("umm-eval").experiment_id


OPENERS = {"umm": _umm_command, "mlflow": _mlflow_run_launcher}


def _first_use(uri: str, opener: str, name: str, start: multiprocessing.synchronize.Barrier) -> None:
    """Runs in a forked child (mlflow already imported), so both children reach the store together."""
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        start.wait(timeout=60)
        OPENERS[opener](uri, name)
    except BaseException:
        Path(uri.removeprefix("sqlite:///")).with_name(f"{name}.error").write_text(traceback.format_exc())
        raise


def test_mlflow_builds_its_sqlite_stores_through_the_locking_builders():
    """The lock must be taken by MLflow itself: `mlflow run` opens the store before any code of ours."""
    assert _tracking_store_registry.get_store_builder("sqlite:///x.db") is sqlite_store.tracking_store
    assert _registry_stores().get_store_builder("sqlite:///x.db") is sqlite_store.registry_store


@pytest.mark.slow
def test_two_commands_on_a_fresh_store_twenty_times_leave_every_run_intact(tmp_path):
    """Each attempt pairs two `umm` commands, two `mlflow run` launchers, or one of each (in turn)."""
    fork = multiprocessing.get_context("fork")
    pairs = [("umm", "umm"), ("mlflow", "mlflow"), ("mlflow", "umm")]
    for attempt in range(20):
        folder = tmp_path / f"store{attempt}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        start = fork.Barrier(2)
        openers = pairs[attempt % len(pairs)]
        children = [fork.Process(target=_first_use, args=(uri, opener, f"{opener}{i}", start))
                    for i, opener in enumerate(openers)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=120)
        errors = "".join(p.read_text() for p in folder.glob("*.error"))
        assert [c.exitcode for c in children] == [0, 0], f"attempt {attempt} {openers}:\n{errors[-3000:]}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("umm-eval").experiment_id])
        assert sorted(r.data.params["who"] for r in runs) == [f"{o}{i}" for i, o in enumerate(openers)], attempt
        assert all(r.info.status == "FINISHED" and r.data.metrics["m"] == 1.0 for r in runs)
        client.create_registered_model("after")  # the registry's tables are complete too


def test_an_empty_store_file_is_a_fresh_store(workspace):
    (workspace / "mlflow.db").write_bytes(b"")  # a valid, empty SQLite database
    assert open_store() == os.environ["MLFLOW_TRACKING_URI"]
    assert MlflowClient().search_experiments()  # the schema is there, with its Default experiment


@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b"SQLite format 3\x00" + b"\xff" * 200])
def test_a_corrupt_store_is_one_line_before_any_work(workspace, content):
    (workspace / "mlflow.db").write_bytes(content)
    result = umm("eval", "--limit", "1", cwd=workspace)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("umm: error: tracking store sqlite:///") and "not a usable MLflow database" in result.stderr
    assert not (workspace / "umm_home" / "cache").exists()  # nothing ran


def test_a_store_path_that_is_a_folder_or_has_no_folder_is_one_line(workspace):
    (workspace / "adir.db").mkdir()
    for uri, fragment in [(f"sqlite:///{workspace / 'adir.db'}", "is a folder"),
                          (f"sqlite:///{workspace / 'missing' / 'mlflow.db'}", "does not exist")]:
        result = umm("eval", "--limit", "1", cwd=workspace, env={"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 2 and fragment in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1
