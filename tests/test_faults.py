"""Faults: evaluations SIGKILLed at random points (while generating, while scoring, while logging
to MLflow), the tracking server restarting or crashing under a running evaluation, and a
training SIGKILLed between checkpoints. After each, a rerun must lose nothing, duplicate nothing
and end with exactly the numbers an uninterrupted run gets.

The kill points are drawn from a seeded RNG (`UMM_FAULT_SEED`, printed) and found by watching
what the process leaves on disk: the cache log (`outputs.jsonl`) while it generates, the
complete cache before any artifact while it scores, the child run's artifact folder while it logs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import _forget_mlflow_state
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate
from umm_harness.tracking import official
from umm_harness.tracking_server import TrackingServer, postgres_bin_dir

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("UMM_FAULT_SEED", "20261123"))
LIMIT = 18
BATCH = 2
WAIT_S = 240


def _rng(name: str) -> random.Random:
    print(f"fault seed {SEED} ({name}); rerun with UMM_FAULT_SEED={SEED} to replay")
    return random.Random(f"{SEED}:{name}")


def _eval_args(*extra: str) -> list[str]:
    return [sys.executable, "-m", "umm_harness", "eval", "--limit", str(LIMIT), "--batch-size", str(BATCH),
            "--threads", "1", *extra]


def _start(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None,
           drop: tuple[str, ...] = ()) -> subprocess.Popen:
    child_env = {k: v for k, v in os.environ.items() if k not in drop}
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**child_env, "CI": "true", **(env or {})})


def _wait(condition, process: subprocess.Popen, what: str, log: Path, poll: float = 0.005):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the process ended ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(poll)
    process.kill()
    pytest.fail(f"timed out waiting for {what}")


def _kill(process: subprocess.Popen, what: str) -> None:
    assert process.poll() is None, f"the process had already ended: the kill {what} missed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _cache_log(home: Path) -> Path | None:
    found = list((home / "cache").glob("*/outputs.jsonl"))
    assert len(found) <= 1, found
    return found[0] if found else None


def _valid_lines(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a torn last line, which the cache ignores
    return rows


def _run_dirs(workspace: Path) -> set[Path]:
    return {p for p in (workspace / "mlruns").glob("*/*") if p.is_dir() and len(p.name) == 32}


def _children(run_id: str):
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")


def _artifacts(run_id: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id))


def _reference(workspace: Path, tmp_path_factory, monkeypatch):
    """An uninterrupted evaluation in a cache of its own."""
    own_home = tmp_path_factory.mktemp("reference_home")
    (own_home / "tiny").symlink_to(workspace / "umm_home" / "tiny")
    monkeypatch.setenv("UMM_HOME", str(own_home))
    reference = evaluate(EvalRecipe(limit=LIMIT, batch_size=BATCH, threads=1))
    monkeypatch.setenv("UMM_HOME", str(workspace / "umm_home"))
    (child,) = _children(reference.run_id)
    return reference, _artifacts(child.info.run_id)


def _assert_same_outcome(final, final_artifacts: Path, reference, reference_artifacts: Path) -> None:
    assert official(final.metrics) == official(reference.metrics)
    final_rows = (final_artifacts / "samples" / "shapes.jsonl").read_text().splitlines()
    reference_rows = (reference_artifacts / "samples" / "shapes.jsonl").read_text().splitlines()
    assert final_rows == reference_rows  # every sample, its outputs, seeds and score record
    images = sorted(p.relative_to(final_artifacts) for p in (final_artifacts / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(reference_artifacts) for p in (reference_artifacts / "images").rglob("*.png"))
    for image in images:
        assert (final_artifacts / image).read_bytes() == (reference_artifacts / image).read_bytes(), image


def test_an_eval_killed_while_generating_scoring_and_logging_resumes_exactly(workspace, tmp_path_factory, monkeypatch):
    rng = _rng("eval-kills")
    reference, reference_artifacts = _reference(workspace, tmp_path_factory, monkeypatch)
    total = reference.results["shapes"].computed  # outputs of the whole run (samples × k)
    assert total >= 20
    home = workspace / "umm_home"

    # 1. While generating: once a random number of outputs is in the cache log.
    target = rng.randint(2, total - 6)
    log = workspace / "kill1.log"
    process = _start(_eval_args(), workspace, log)
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= target, process, f"{target} cached outputs", log)
    time.sleep(rng.uniform(0.0, 0.15))
    _kill(process, "while generating")
    before = _cache_log(home).read_text().splitlines()
    first_kill = len(_valid_lines(_cache_log(home)))
    assert target <= first_kill < total, "the kill should land while generating"
    print(f"killed while generating: {first_kill}/{total} outputs cached")

    # 2. While scoring: every output is cached, nothing of the child run is logged yet.
    runs_before = _run_dirs(workspace)
    log = workspace / "kill2.log"
    process = _start(_eval_args(), workspace, log)
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= total, process, "the last output", log, poll=0.002)
    time.sleep(rng.uniform(0.0, 0.03))
    logged = [p for p in _run_dirs(workspace) - runs_before if (p / "artifacts" / "samples").exists()]
    _kill(process, "while scoring")
    assert not logged, "the kill should land before the child run logs anything"
    print("killed while scoring (all outputs cached, no sample artifacts yet)")

    # 3. While logging to MLflow: the child run's sample records are written, the rest is not.
    runs_before = _run_dirs(workspace)
    log = workspace / "kill3.log"
    process = _start(_eval_args(), workspace, log)

    # The kill point: one of the child run's logging steps, seen on disk (then at most 10 ms).
    trigger = rng.choice(["samples/shapes.jsonl", "samples/shapes_table.json", "images/shapes"])

    def child_logging() -> Path | None:
        for run in _run_dirs(workspace) - runs_before:
            if (run / "artifacts" / trigger).exists():
                return run
        return None

    child_dir = _wait(child_logging, process, f"the child run's {trigger}", log, poll=0.002)
    time.sleep(rng.uniform(0.0, 0.01))
    _kill(process, "while logging")
    partial = sorted(str(p.relative_to(child_dir / "artifacts")) for p in (child_dir / "artifacts").rglob("*")
                     if p.is_file())
    print(f"killed while logging (at {trigger}): the child run had {len(partial)} artifact files")
    assert "plots/shapes_categories.png" not in partial, "the kill should land before the child's last artifact"

    # The rerun: nothing recomputed, nothing lost, nothing duplicated.
    final = evaluate(EvalRecipe(limit=LIMIT, batch_size=BATCH, threads=1))
    after = _cache_log(home).read_text().splitlines()
    assert after[: len(before)] == before  # the log is append-only: nothing rewritten
    keys = [(row["sample_id"], row["k"]) for row in _valid_lines(_cache_log(home))]
    assert len(keys) == len(set(keys)) == total  # every output once
    assert final.results["shapes"].computed == 0 and final.results["shapes"].reused == total
    (child,) = _children(final.run_id)
    assert child.data.metrics["shapes/num_samples"] == LIMIT and child.data.metrics["shapes/failed_samples"] == 0
    _assert_same_outcome(final, _artifacts(child.info.run_id), reference, reference_artifacts)

    # What the three killed processes left in MLflow: parent runs that never ended.
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    statuses = sorted(r.info.status for r in parents)
    print(f"parent run statuses after 3 kills and 2 complete runs: {statuses}")
    assert statuses.count("FINISHED") == 2 and len(parents) == 5
    assert all(s in ("RUNNING", "FAILED", "KILLED") for s in statuses if s != "FINISHED")


def _assert_written_once(client: MlflowClient, child) -> None:
    """No metric write applied twice. Official metrics are also attached to the evaluated logged
    model, a second write with the same value that MLflow keeps in the run's history as well."""
    from umm_harness.tracking import official

    attached = official(child.data.metrics)
    for key in child.data.metrics:
        history = client.get_metric_history(child.info.run_id, key)
        assert len(history) <= (2 if key in attached else 1) and len({m.value for m in history}) == 1, key


def _runs(experiment: str = "Default") -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_terminated_eval_ends_its_runs_killed_exits_128_plus_the_signal_and_the_rerun_finishes(workspace, sig):
    """What `timeout`, schedulers (SIGTERM) and Ctrl-C (SIGINT) do: the parent and child runs end
    KILLED, not RUNNING or FAILED; the exit code says which signal (143, 130), not a config error."""
    home = workspace / "umm_home"
    log = workspace / "terminated.log"
    process = _start(_eval_args(), workspace, log)
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= 2, process, "generation", log)
    process.send_signal(sig)
    assert process.wait(timeout=WAIT_S) == 128 + sig, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"umm: interrupted by {signal.Signals(sig).name}; run(s) ") and "rerun" in last, last
    killed = _runs()
    assert len(killed) == 2 and {r.info.status for r in killed} == {"KILLED"}
    assert all(r.info.end_time for r in killed)

    rerun = subprocess.run(_eval_args(), cwd=workspace, capture_output=True, text=True, timeout=WAIT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "left RUNNING" not in rerun.stderr  # nothing was left open to close
    statuses = sorted(r.info.status for r in _runs())
    assert statuses == ["FINISHED", "FINISHED", "KILLED", "KILLED"]


def test_the_runs_of_a_sigkilled_eval_are_closed_by_the_next_command_which_says_it_resumes(workspace):
    home = workspace / "umm_home"
    log = workspace / "sigkilled.log"
    process = _start(_eval_args(), workspace, log)
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= 2, process, "generation", log)
    _kill(process, "while generating")
    assert {r.info.status for r in _runs()} == {"RUNNING"}

    rerun = subprocess.run(_eval_args(), cwd=workspace, capture_output=True, text=True, timeout=WAIT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    closed = [line for line in rerun.stderr.splitlines() if "left RUNNING by an earlier command that was killed" in line]
    assert len(closed) == 2 and all("resumed" in line for line in closed), rerun.stderr[-3000:]
    assert sorted(r.info.status for r in _runs()) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]


_PENDING_THEN_WAIT = """
import sys, time
import mlflow
from umm_harness import interrupts
mlflow.set_experiment("umm-eval")
with interrupts.handled(), mlflow.start_run():
    mlflow.MlflowClient().create_logged_model(mlflow.active_run().info.experiment_id,
                                              source_run_id=mlflow.active_run().info.run_id)
    print("pending", flush=True)
    time.sleep(600)
"""


def test_a_registration_killed_half_way_leaves_no_pending_model_after_the_next_command(workspace):
    """A process SIGKILLed between creating its logged model and finalizing it (what a kill
    during `log_model` leaves): the next command fails that model and closes the run."""
    from umm_harness.store import open_store

    process = subprocess.Popen([sys.executable, "-c", _PENDING_THEN_WAIT], cwd=workspace, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "pending"
    _kill(process, "with a pending model")
    client = MlflowClient()
    (run,) = _runs("umm-eval")
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert (run.info.status, str(model.status)) == ("RUNNING", "PENDING")
    open_store()
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert str(client.get_logged_model(model.model_id).status) == "FAILED"


def test_a_torn_last_cache_line_is_ignored_and_recomputed(workspace):
    first = evaluate(EvalRecipe(limit=4, batch_size=1, threads=1))
    log = _cache_log(workspace / "umm_home")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut short by a kill
    again = evaluate(EvalRecipe(limit=4, batch_size=1, threads=1))
    assert again.results["shapes"].computed == 1 and again.results["shapes"].reused == len(lines) - 1
    assert official(again.metrics) == official(first.metrics)
    # The recomputed line went on a line of its own, not onto the torn one: nothing is lost again.
    assert evaluate(EvalRecipe(limit=4, batch_size=1, threads=1)).results["shapes"].computed == 0


# -- the tracking server going away under a running evaluation --------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if postgres_bin_dir() is None:
        message = "PostgreSQL binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql"
        print(f"SKIP: {message}")
        pytest.skip(message)
    with TrackingServer(tmp_path_factory.mktemp("fault_server")) as running:
        yield running


def _point_at(server: TrackingServer, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    _forget_mlflow_state()
    mlflow.set_tracking_uri(server.url)
    if server.mlflow_pid is None:
        server.start_mlflow()


def test_a_tracking_server_restart_during_an_eval_is_retried_and_the_run_finishes(workspace, server, monkeypatch):
    """MLflow's client retries refused connections (urllib3 Retry, all methods, exponential
    backoff: MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, ..._BACKOFF_FACTOR=2 by default, about 4 min in
    all). The server is down from the start of generation until after the client has begun
    retrying its first log call; the evaluation then finishes as if nothing happened."""
    _point_at(server, monkeypatch)
    experiment = "umm-restart"
    home = workspace / "umm_home"
    log = workspace / "restart.log"
    process = _start(_eval_args("--experiment", experiment), workspace, log,
                     env={"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= 2, process, "generation", log, poll=0.01)
    server.stop_mlflow()  # SIGTERM: uvicorn finishes what it is serving, then exits
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= 30 and "Retrying" in log.read_text(), process,
          "the client retrying against the stopped server", log, poll=0.05)
    server.start_mlflow()
    assert process.wait(timeout=WAIT_S) == 0, log.read_text()[-4000:]
    assert "Connection refused" in log.read_text()  # it did meet the outage

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # no run created twice
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = _children(parent.info.run_id)
    _assert_written_once(client, child)
    rows = (_artifacts(child.info.run_id) / "samples" / "shapes.jsonl").read_text().splitlines()
    assert len(rows) == LIMIT


def test_a_tracking_server_down_past_the_retry_budget_fails_clearly_and_the_rerun_resumes(
        workspace, server, monkeypatch, tmp_path_factory):
    """With a short retry budget the evaluation gives up: exit 2 and one line naming the server
    and the command that resumes, no traceback. Its outputs are all cached, so rerunning the
    same command once the server is back computes nothing."""
    _point_at(server, monkeypatch)
    experiment = "umm-outage"
    home = workspace / "umm_home"
    log = workspace / "outage.log"
    process = _start(_eval_args("--experiment", experiment), workspace, log,
                     env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    _wait(lambda: len(_valid_lines(_cache_log(home))) >= 2, process, "generation", log, poll=0.01)
    server.stop_mlflow(sig=signal.SIGKILL)  # a crash this time
    assert process.wait(timeout=WAIT_S) == 2
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith(f"umm: error: the tracking server {server.url} did not answer"), last
    assert "connection refused" in last and "resume with `umm eval --limit" in last, last
    assert len(_valid_lines(_cache_log(home))) == 30  # the outputs were all on disk before it gave up
    server.start_mlflow()

    rerun = evaluate(EvalRecipe(limit=LIMIT, batch_size=BATCH, threads=1, experiment=experiment))
    assert rerun.results["shapes"].computed == 0 and rerun.results["shapes"].reused == 30
    client = MlflowClient()
    parents = [r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
               if "mlflow.parentRunId" not in r.data.tags]
    statuses = sorted(r.info.status for r in parents)
    print(f"after the failed and the resumed evaluation: parent runs {statuses}")
    # The failed run could not be marked FAILED: the server was down when it ended.
    assert statuses == ["FINISHED", "RUNNING"]
    (child,) = _children(rerun.run_id)
    assert child.data.metrics["shapes/num_samples"] == LIMIT


# -- training -----------------------------------------------------------------------------------

_TRAIN = {"steps": 12, "checkpoint_every": 3, "batch_size": 4, "data": {"num_understanding": 12, "num_generation": 4},
          "lr": 1e-3, "warmup_steps": 2, "min_lr_ratio": 0.1, "objectives": {"understanding": 1.0, "generation": 1.0},
          "cfg_dropout": 0.5, "log_every": 2, "alias": None, "threads": 1}

_TRAIN_SCRIPT = """
import json, sys
from training.recipe import train_recipe
from training.run import train
result = train(train_recipe(**json.loads(sys.argv[1])))
print("RESULT " + json.dumps(result.to_json()))
"""


@pytest.fixture
def base_registered(workspace, tiny_janus):
    """The tiny Janus-Pro registered as version 1 of `janus-pro-tiny`."""
    pytest.importorskip("deepspeed")
    from model_flavors import flavor

    mlflow.set_experiment("base")
    with mlflow.start_run():
        flavor.log_model(tiny_janus, registered_model_name="janus-pro-tiny")
    _forget_mlflow_state()
    return workspace


@pytest.fixture
def trained_whole(base_registered, workspace):
    """An uninterrupted training of `_TRAIN`."""
    from training.recipe import train_recipe
    from training.run import train

    whole = train(train_recipe(**_TRAIN, output_dir=str(workspace / "whole")))
    assert len(whole.losses) == _TRAIN["steps"]
    return whole


def _start_training(workspace: Path, values: dict) -> tuple[subprocess.Popen, Path]:
    log = workspace / "train.log"
    # The child must be a single process of its own, whatever distributed settings this one has.
    process = _start([sys.executable, "-c", _TRAIN_SCRIPT, json.dumps(values)], workspace, log,
                     drop=("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    return process, log


def _latest(output: Path) -> int:
    latest = output / "latest"
    text = latest.read_text().strip() if latest.is_file() else ""
    return int(text.removeprefix("step")) if text.startswith("step") else 0


def _logged_steps() -> list[int]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return sorted(m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss"))


def test_a_training_killed_between_checkpoints_resumes_with_the_same_loss_curve(workspace, trained_whole):
    from training.recipe import train_recipe
    from training.run import train

    whole = trained_whole
    rng = _rng("train-kill")
    output = workspace / "killed"
    values = {**_TRAIN, "output_dir": str(output)}
    process, log = _start_training(workspace, values)
    checkpoint = rng.choice([3, 6])
    _wait(lambda: _latest(output) >= checkpoint, process, f"checkpoint {checkpoint}", log, poll=0.01)
    time.sleep(rng.uniform(0.0, 0.2))
    _kill(process, "mid-training")
    assert not (output / "export.json").exists()
    latest = _latest(output)
    print(f"training killed after checkpoint {latest}; steps logged to MLflow by then: {_logged_steps()}")

    resumed = train(train_recipe(**values))
    assert resumed.resumed_from_step == latest >= checkpoint
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6, abs=1e-7)
    assert resumed.weights_digest == whole.weights_digest  # the same weights, bit for bit
    run = MlflowClient().get_run(resumed.run_id)
    assert run.info.status == "FINISHED"  # the interrupted run, re-attached and finished
    history = MlflowClient().get_metric_history(resumed.run_id, "train/loss")
    assert {m.step for m in history} == set(range(1, _TRAIN["steps"] + 1))
    for metric in history:  # whatever was logged, at every step, is the uninterrupted curve
        assert metric.value == pytest.approx(whole.losses[metric.step - 1], rel=1e-6, abs=1e-7), metric.step


def test_a_resumed_training_logs_each_step_once(workspace, base_registered):
    from training.recipe import train_recipe
    from training.run import train

    output = workspace / "killed"
    values = {**_TRAIN, "checkpoint_every": 6, "output_dir": str(output)}
    process, log = _start_training(workspace, values)
    # Killed once step 8 is in MLflow (log_every=2) but the last checkpoint is step 6.
    _wait(lambda: _latest(output) == 6 and max(_logged_steps(), default=0) >= 8, process,
          "step 8 logged after checkpoint 6", log, poll=0.01)
    _kill(process, "after a flush past the checkpoint")
    assert _latest(output) == 6
    resumed = train(train_recipe(**values))
    assert resumed.resumed_from_step == 6
    steps = [m.step for m in MlflowClient().get_metric_history(resumed.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, _TRAIN["steps"] + 1)), sorted(steps)
