"""Where every command's runs go, and how any command finds them again.

One layout whatever the entry point (`umm ...`, `mlflow run . -e ...`, the Python API):
- each command has one top-level run (an eval's parent, a training, a comparison, a loop). Under
  `mlflow run` it is the run the launcher made (`MLFLOW_RUN_ID`), handed to the command's own
  run only: nested runs and the runs of sub-steps (compare's fallback evaluations, the loop's
  steps) are new runs, never that one;
- an evaluation's benchmarks are child runs of its parent, tagged `umm.benchmark`;
- runs go to the experiment the user named (`--experiment`, a recipe's `experiment:`,
  `mlflow run --experiment-name`, `MLFLOW_EXPERIMENT_NAME`, `mlflow.set_experiment`), else to
  MLflow's `Default`: the same place for every entry point;
- those experiments are tagged for MLflow's model-training view (not the GenAI one). MLflow
  3.17.2's UI itself follows its global "GenAI | Model training" switch (the `workflowType` URL
  parameter, else the browser's last choice, GenAI at first), so the links we print carry
  `workflowType=machine_learning`; the tag is what other MLflow versions and clients read.

Readers tell a parent from a child by the `umm.benchmark` tag, not by nesting (a Python API
caller may nest an evaluation in a run of their own), and search every experiment.
"""

from __future__ import annotations

import os
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from umm_harness.core.errors import ConfigError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The value MLflow's UI maps to its "Machine learning" (model-training) view.
MODEL_TRAINING_KIND = "custom_model_development"
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"  # opens a UI page in that view (3.17.2)
BENCHMARK_TAG = "umm.benchmark"


def take_project_run() -> str | None:
    """The run `mlflow run` made for this entry point, if any, handed out once. Removing the
    variable also stops MLflow from attaching every later `start_run` (nested ones too) to it."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def _named_experiment(name: str) -> str:
    """The id of experiment `name`, created if new (without making it the process-wide active
    experiment, which `mlflow.set_experiment` would, for every later run of the process)."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process created it between the lookup and ours
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ConfigError(f"experiment '{name}' is deleted; restore it (mlflow experiments restore) or name another")
    return found.experiment_id


def tag_for_model_training(experiment_id: str) -> None:
    """Open the experiment in the model-training view, unless someone chose a kind already."""
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    except MlflowException:  # another command tagged it between the look-up and ours (SQL stores refuse the twin)
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
            raise


def start_top_level_run(run_name: str, experiment: str | None = None, run_id: str | None = None
                        ) -> mlflow.ActiveRun:
    """A command's own run: `run_id` (the project run `take_project_run` handed over) or a new
    run in `experiment` (None: MLflow's current one). Inside a caller's active run it nests.
    Use it as `with start_top_level_run(...) as run:`, or end it with `mlflow.end_run`."""
    if run_id:
        run = mlflow.start_run(run_id=run_id)
        MlflowClient().set_tag(run_id, "mlflow.runName", run_name)
    else:
        run = mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None,
                               experiment_id=_named_experiment(experiment) if experiment else None)
    tag_for_model_training(run.info.experiment_id)
    return run


def run_path(run: Run) -> str:
    """The run's page in the MLflow UI, relative to the UI's address."""
    return f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def find_runs(filter_string: str) -> list[Run]:
    """Runs matching `filter_string` in any experiment, newest first."""
    return mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=filter_string,
                              order_by=["attributes.start_time DESC"])


def parent_runs(filter_string: str) -> list[Run]:
    """Evaluation parents matching `filter_string`, newest first (children carry `umm.benchmark`)."""
    return [run for run in find_runs(filter_string) if BENCHMARK_TAG not in run.data.tags]


def benchmark_runs(parent_run_id: str, benchmark: str, stages: tuple[str, ...]) -> list[Run]:
    """The finished child runs of `benchmark` under an evaluation parent, newest first."""
    children = find_runs(f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{BENCHMARK_TAG}` = '{benchmark}' "
                         "and attributes.status = 'FINISHED'")
    return [run for run in children if run.data.tags.get("umm.stage") in stages]


def where_to_look(run_id: str, model_name: str, model_version: str) -> list[str]:
    """What a finished evaluation tells its user: where the run is, how to open it, which
    registered version it made, and, for a random-weight tiny model, what its scores mean."""
    run = MlflowClient().get_run(run_id)
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        lines = [f"results: {uri.rstrip('/')}/{run_path(run)}{MODEL_TRAINING_VIEW}"]
    else:
        lines = [f"results: run {run_id}; to browse them: mlflow ui --backend-store-uri {uri}",
                 f"  then open http://127.0.0.1:5000/{run_path(run)}{MODEL_TRAINING_VIEW}"]
    lines.append(f"registered model: models:/{model_name}/{model_version}")
    version = MlflowClient().get_model_version(model_name, model_version)
    if version.tags.get("umm.base_model", "").startswith("tiny:") and "umm.method" not in version.tags:
        lines.append("note: this tiny model has random weights, so it scores near zero by design; "
                     "`make loop` post-trains it and promotes the trained version when it scores better")
    return lines
