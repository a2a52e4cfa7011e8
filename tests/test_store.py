"""The tracking store: first use serialised across processes, unusable stores refused in one line.

Without the lock, two processes opening a fresh SQLite store at once both run MLflow's schema
migrations and one of them fails (alembic "Online migration expected to match one row"); on
this machine that happened in 6 of 6 tries.
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

from tests.conftest import umm
from umm_harness.store import open_store

def _first_use(uri: str, name: str, start: multiprocessing.synchronize.Barrier) -> None:
    """What every `umm` command that logs does first, then a run: the smallest real use of a store.
    Runs in a forked child (mlflow already imported), so both children reach the store together."""
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        start.wait(timeout=60)
        open_store()
        mlflow.set_experiment("umm-eval")
        with mlflow.start_run(run_name=name):
            mlflow.log_param("who", name)
            mlflow.log_metric("m", 1.0)
    except BaseException:
        Path(uri.removeprefix("sqlite:///")).with_name(f"{name}.error").write_text(traceback.format_exc())
        raise


@pytest.mark.slow
def test_two_commands_on_a_fresh_store_twenty_times_leave_every_run_intact(tmp_path):
    fork = multiprocessing.get_context("fork")
    for attempt in range(20):
        folder = tmp_path / f"store{attempt}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        start = fork.Barrier(2)
        children = [fork.Process(target=_first_use, args=(uri, name, start)) for name in ("a", "b")]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=120)
        errors = "".join(p.read_text() for p in folder.glob("*.error"))
        assert [c.exitcode for c in children] == [0, 0], f"attempt {attempt}:\n{errors[-3000:]}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("umm-eval").experiment_id])
        assert sorted(r.data.params["who"] for r in runs) == ["a", "b"], attempt
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
