"""Every entry point works with every other, on a fresh store: the MLflow project's entry points
chained as a new user runs them (eval → train → eval @challenger → compare → promote), and a
chain mixing the Python API, `umm` and `mlflow run`. Whatever made a run, the next command finds
it, the layout is one parent per evaluation with one child per benchmark, and everything lands in
one experiment (MLflow's Default, tagged for the model-training view)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, umm
from umm_harness.cli import main
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate
from umm_harness.model_registry import logged_model_id
from umm_harness.runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

pytestmark = pytest.mark.slow

LIMIT = "120"  # round-robin over the shapes categories: 48 understanding questions
MODEL = "janus-pro-tiny"


@pytest.fixture
def project(workspace) -> Path:
    """A copy of the MLflow project in the test's folder: experiments created by its entry points
    keep their artifacts there, never in the repository's own `mlruns/`."""
    copy = workspace / "project"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "mlruns", "mlflow.db", "ci-artifacts",
                                                              "__pycache__", ".umm", ".pytest_cache"))
    return copy


def _train_recipe(project: Path, steps: int) -> str:
    recipe = (REPO / "projects" / "train_shapes_sft.yaml").read_text()
    short = recipe.replace("steps: 600", f"steps: {steps}").replace("checkpoint_every: 100", "checkpoint_every: 0")
    assert short != recipe
    (project / "projects" / "train_test.yaml").write_text(short)
    return "projects/train_test.yaml"


def _start_mlflow_run(project: Path, entry: str, cwd: Path, env: dict[str, str] | None = None,
                     **params: str) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    args = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    return subprocess.Popen(["mlflow", "run", str(project), "-e", entry, "--env-manager", "local", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen, entry: str) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, f"mlflow run -e {entry}: {stderr[-4000:]}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def mlflow_run(project: Path, entry: str, **params: str) -> subprocess.CompletedProcess:
    return _finished(_start_mlflow_run(project, entry, project.parent, **params), entry)


def _eval_parents(client: MlflowClient) -> list:
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.`umm.suite` = 'shapes'")
    return [run for run in runs if "umm.benchmark" not in run.data.tags and run.data.tags.get("umm.stage") != "loop"
            and run.data.tags.get("umm.stage") != "train" and "umm.compared_versions" not in run.data.tags]


def _assert_one_layout(client: MlflowClient, experiment_id: str) -> None:
    """Every eval parent: in the experiment, finished, one finished child per benchmark run."""
    parents = _eval_parents(client)
    assert parents
    for parent in parents:
        assert parent.info.experiment_id == experiment_id, parent.data.tags.get("mlflow.runName")
        assert parent.info.status == "FINISHED"
        children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert children, f"eval run {parent.info.run_id} has no child run"
        assert all(c.data.tags["umm.benchmark"] == "shapes" and c.info.status == "FINISHED" for c in children)
        assert all("shapes/understanding_acc" in c.data.metrics for c in children
                   if c.data.tags["umm.stage"] in ("all", "score"))
    running = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.info.status != "FINISHED"]
    assert not running


@pytest.mark.timeout(1800)  # five `mlflow run` processes and a 250-step training, on a busy machine
def test_the_mlflow_project_entry_points_chain_to_a_promotion(project):
    client = MlflowClient()
    first = mlflow_run(project, "eval", limit=LIMIT)
    # What a newcomer reads at the end: where the results are, and what a random model's scores mean;
    # not the libraries' notices to developers.
    assert "then open http://127.0.0.1:5000/#/experiments/0/runs/" in first.stdout, first.stdout[-2000:]
    assert "registered model: models:/janus-pro-tiny/1" in first.stdout and "`make loop`" in first.stdout
    for notice in ("FutureWarning", "DeprecationWarning", "Setting accelerator"):
        assert notice not in first.stdout + first.stderr, notice
    mlflow_run(project, "train", recipe=_train_recipe(project, steps=250))
    assert client.get_model_version_by_alias(MODEL, "challenger").version == 2
    mlflow_run(project, "eval", model=f"models:/{MODEL}@challenger", limit=LIMIT)
    compared = mlflow_run(project, "compare", limit=LIMIT)
    assert "comparison run" in compared.stdout
    promoted = mlflow_run(project, "promote", limit=LIMIT)
    assert "is now champion" in promoted.stdout, promoted.stdout + promoted.stderr[-2000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == 2

    default = client.get_experiment("0")
    assert default.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    _assert_one_layout(client, "0")
    evals = _eval_parents(client)
    # compare and promote reused the two evaluations the project made: no third evaluation.
    assert sorted(r.data.tags["umm.model_version"] for r in evals) == ["1", "2"]
    assert all(r.data.tags["mlflow.project.entryPoint"] == "eval" for r in evals)
    assert {r.data.tags["mlflow.runName"] for r in evals} == {f"{MODEL} × shapes"}

    # The compare entry point's own run is the comparison, linking the runs it compared.
    (comparison,) = client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'compare'")
    eval_runs = json.loads(comparison.data.tags["umm.eval_runs"])
    assert set(eval_runs.values()) == {r.info.run_id for r in evals}
    note = comparison.data.tags["mlflow.note.content"]
    for run in evals:
        assert f"#/experiments/0/runs/{run.info.run_id}" in note

    # The new version says what it is and what it changed; its scores sit on its logged model.
    v2 = client.get_model_version(MODEL, "2")
    assert v2.description.startswith("sft of version 1"), v2.description
    eval_v2 = next(r for r in evals if r.data.tags["umm.model_version"] == "2")
    assert f"Scores on shapes (limit {LIMIT}, seed 0; eval run {eval_v2.info.run_id})" in v2.description
    assert "Against version 1 on shapes" in v2.description and "shapes/understanding_acc +0." in v2.description
    scores = {m.key: m for m in client.get_logged_model(logged_model_id(MODEL, "2")).metrics}
    assert scores["shapes/understanding_acc"].dataset_name == "shapes"
    assert scores["shapes/understanding_acc"].value == eval_v2.data.metrics["shapes/understanding_acc"]


@pytest.mark.timeout(1800)
def test_a_chain_of_mixed_entry_points_finds_every_run(project):
    client = MlflowClient()
    base = evaluate(EvalRecipe(limit=int(LIMIT)))  # the Python API
    assert base.model_version == "1"
    trained = umm("train", "--recipe", _train_recipe(project, steps=6), cwd=project)
    assert trained.returncode == 0, trained.stderr[-3000:]

    # A generate run made by `mlflow run`, scored by `umm` (found by model, suite, seed and limit).
    mlflow_run(project, "eval", model=f"models:/{MODEL}/2", limit=LIMIT, stage="generate")
    scored = umm("eval", "--stage", "score", "--model", f"models:/{MODEL}/2", "--limit", LIMIT, cwd=project)
    assert scored.returncode == 0, scored.stderr[-3000:]
    (generate,) = [r for r in _eval_parents(client) if r.data.tags["umm.stage"] == "generate"]
    assert scored.stdout.startswith(f"run {generate.info.run_id}")

    # compare finds the Python API's evaluation of v1; v2 has no stage-all evaluation yet, so it
    # runs one, in the same experiment as everything else.
    compared = umm("compare", "--versions", "1,2", "--limit", LIMIT, "--bootstrap", "200", cwd=project)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert f"v1={base.run_id}" in compared.stdout
    promoted = umm("promote", "--candidate", "2", "--limit", LIMIT, "--gate", "shapes/understanding_acc >= champion - 1",
                   "--max-regression", "1", cwd=project)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == 2

    _assert_one_layout(client, "0")
    evals = _eval_parents(client)
    assert sorted((r.data.tags["umm.model_version"], r.data.tags["umm.stage"]) for r in evals) == [
        ("1", "all"), ("2", "all"), ("2", "generate")]
    train_runs = client.search_runs(["0"], "tags.`umm.stage` = 'train'")
    assert len(train_runs) == 1


@pytest.mark.timeout(1200)
def test_two_mlflow_runs_started_together_on_a_fresh_store_both_finish(project):
    """MLflow's launcher opens the store before our entry point runs: the store's first use must be
    serialised inside MLflow itself (`umm_harness.sqlite_store`). Two attempts, each with two
    `mlflow run . -e eval` on a new store (tests/test_store.py repeats the store opening 20 times)."""
    for attempt in range(2):
        folder = project.parent / f"store{attempt}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        runs = [_start_mlflow_run(project, "eval", folder, env={"MLFLOW_TRACKING_URI": uri}, limit="4")
                for _ in range(2)]
        for run in runs:
            _finished(run, "eval")
        client = MlflowClient(uri)
        parents = [r for r in client.search_runs(["0"]) if "umm.benchmark" not in r.data.tags]
        assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents), attempt
        for parent in parents:
            (child,) = client.search_runs(["0"], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
            assert child.info.status == "FINISHED" and "shapes/understanding_acc" in child.data.metrics
        assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == [1]  # same weights


def test_a_missing_run_or_version_is_one_line_naming_what_to_run(workspace, capsys):
    compared = umm("compare", cwd=workspace)  # the real process: nothing but that line on the console
    assert compared.returncode == 2 and compared.stderr.count("\n") == 1, compared.stderr
    assert "umm eval" in compared.stderr and "umm train" in compared.stderr
    for args, hint in ((["promote"], "mlflow run . -e eval"),
                       (["eval", "--stage", "score", "--model", "models:/nothing/1"], "not in the registry"),
                       (["eval", "--stage", "score", "--from-run", "0" * 32], "not a run")):
        with pytest.raises(SystemExit) as exited:
            main(args)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.startswith("umm: error:") and err.count("\n") == 1, err
        assert hint in err, err


def test_a_tracked_inference_is_a_run_in_the_current_experiment(workspace, capsys):
    out = workspace / "circle.png"
    main(["infer", "--task", "generation", "--prompt", "a red circle", "--seed", "3", "--out", str(out), "--track"])
    (run,) = MlflowClient().search_runs(["0"], "tags.`umm.stage` = 'infer'")  # Default, like every other command
    assert run.data.params["task"] == "generation" and run.data.tags["umm.backbone"] == "janus_pro"
    assert MlflowClient().get_experiment("0").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "images")] == ["images/output_0.png"]
    assert out.is_file()
