"""`umm eval` end to end: the tiny Janus-Pro on `shapes`, as MLflow runs, registered, resumable."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from safetensors import SafetensorError

from model_flavors.janus import JanusPro
from tasks import registry as task_registry
from tasks.base import Sample, Task
from tasks.shapes import ShapesTask
from tests.conftest import REPO
from umm_harness.core.home import umm_home
from umm_harness.core.ports import free_port
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate
from umm_harness.tracking import official

LIMIT = 36  # round-robin over the 9 shapes categories: 4 samples each


def _child_runs(parent_id: str):
    experiment = MlflowClient().get_run(parent_id).info.experiment_id
    return MlflowClient().search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_eval_logs_a_parent_run_per_model_and_suite_and_a_child_per_benchmark(workspace):
    summary = evaluate(EvalRecipe(limit=LIMIT, seed=3))
    client = MlflowClient()
    parent = client.get_run(summary.run_id)
    assert parent.data.tags["umm.model_uri"] == "models:/janus-pro-tiny/1"
    assert parent.data.tags["umm.suite"] == "shapes" and parent.data.tags["umm.seed"] == "3"
    assert {"umm.backbone", "umm.model_version", "umm.git_commit", "umm.stage"} <= parent.data.tags.keys()
    assert parent.data.tags["umm.attn_implementation"] == "sdpa"  # auto, on a CPU
    assert parent.data.params["recipe.model"] == "tiny:janus-pro"
    assert parent.data.params["recipe.limit"] == str(LIMIT)

    (child,) = _child_runs(summary.run_id)
    assert child.data.tags["umm.benchmark"] == "shapes"
    metrics = child.data.metrics
    for key in ["shapes/understanding_acc", "shapes/generation_overall", "shapes/understanding_exists",
                "shapes/understanding_count", "shapes/understanding_color", "shapes/generation_counting",
                "shapes/generation_position", "shapes/generation_color_attr"]:
        assert 0.0 <= metrics[key] <= 1.0, key
        assert parent.data.metrics[key] == metrics[key]
    assert metrics["shapes/num_samples"] == LIMIT and metrics["shapes/failed_samples"] == 0

    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id))
    rows = [json.loads(line) for line in (artifacts / "samples" / "shapes.jsonl").read_text().splitlines()]
    assert len(rows) == LIMIT and all(row["status"] == "scored" for row in rows)
    generation = [row for row in rows if row["category"].startswith("generation/")]
    assert generation and all(len(row["outputs"]) == 2 for row in generation)
    for row in generation:
        assert [o["k"] for o in row["outputs"]] == [0, 1] and len({o["seed"] for o in row["outputs"]}) == 2
        assert all((artifacts / path).is_file() for o in row["outputs"] for path in o["images"])
    table = json.loads((artifacts / "samples" / "shapes_table.json").read_text())
    assert {"sample_id", "category", "score"} <= set(table["columns"])
    assert (artifacts / "plots" / "shapes_categories.png").is_file()
    assert (Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id)) / "recipe.yaml").is_file()

    version = client.get_model_version("janus-pro-tiny", "1")
    assert version.tags["umm.backbone"] == "janus_pro" and len(version.tags["umm.weights_digest"]) == 64


def test_same_weights_reuse_the_registered_version_and_the_cache(workspace):
    first = evaluate(EvalRecipe(limit=LIMIT))
    second = evaluate(EvalRecipe(limit=LIMIT))
    assert (first.model_version, second.model_version) == ("1", "1")
    assert len(MlflowClient().search_model_versions("name = 'janus-pro-tiny'")) == 1
    assert second.results["shapes"].computed == 0 and second.results["shapes"].reused > 0
    assert official(second.metrics) == official(first.metrics)

    by_uri = evaluate(EvalRecipe(model="models:/janus-pro-tiny/1", limit=LIMIT))
    assert by_uri.model_version == "1" and official(by_uri.metrics) == official(first.metrics)


def test_rerunning_a_finished_eval_loads_no_model_and_scores_nothing(workspace, monkeypatch):
    first = evaluate(EvalRecipe(limit=LIMIT))
    calls = {"load": 0, "score": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(JanusPro, "load", classmethod(counted("load", JanusPro.load.__func__)))
    monkeypatch.setattr(ShapesTask, "score", counted("score", ShapesTask.score))
    again = evaluate(EvalRecipe(limit=LIMIT))
    assert calls == {"load": 0, "score": 0}
    assert again.results["shapes"].records == first.results["shapes"].records  # the records, as computed
    assert official(again.metrics) == official(first.metrics) and again.run_id != first.run_id
    (child,) = _child_runs(again.run_id)
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id))
    assert (artifacts / "plots" / "shapes_categories.png").is_file() and len(list((artifacts / "images").rglob("*.png")))

    assert again.results["shapes"].scored == 0

    # One more sample to generate: the model loads (before any run starts) and only it is scored
    # (by the scoring worker, beside generation).
    more = evaluate(EvalRecipe(limit=LIMIT + 1))
    assert calls["load"] == 1 and more.results["shapes"].scored == 1 and more.results["shapes"].computed > 0


def test_a_model_that_cannot_load_fails_before_any_run_exists(workspace, tiny_janus_dir):
    broken = workspace / "broken-janus"
    shutil.copytree(tiny_janus_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SafetensorError, match="deserializing header"):
        evaluate(EvalRecipe(model=str(broken), limit=LIMIT))
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


class ShapesWithACorruptImage(Task):
    """The shapes suite, with one understanding sample whose image bytes are garbage."""

    name = "shapes_corrupt"

    def __init__(self, data_dir=None):
        super().__init__(data_dir)
        self.inner = ShapesTask()

    def samples(self) -> list[Sample]:
        samples = self.inner.samples()
        bad = samples[0]
        samples[0] = Sample.build(id=bad.id, category=bad.category, references=bad.references,
                                  task="understanding", prompt=bad.request.prompt, images=["bm90IGFuIGltYWdl"])
        return samples

    def score(self, sample, outputs):
        return self.inner.score(sample, outputs)

    def aggregate(self, samples, records):
        return self.inner.aggregate(samples, records)


def test_an_undecodable_image_fails_its_sample_and_the_run_goes_on(workspace, monkeypatch):
    monkeypatch.setitem(task_registry.TASKS, "shapes_corrupt", "tests.test_eval:ShapesWithACorruptImage")
    summary = evaluate(EvalRecipe(suite="shapes_corrupt", limit=LIMIT))
    result = summary.results["shapes_corrupt"]
    assert len(result.failed) == 1
    (reason,) = result.failed.values()
    assert "images[0]" in reason and "not a readable image" in reason
    assert summary.metrics["shapes_corrupt/understanding_acc"] >= 0
    (child,) = _child_runs(summary.run_id)
    assert child.data.metrics["shapes_corrupt/failed_samples"] == 1
    rows = Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="samples/shapes_corrupt.jsonl"))
    failed = [json.loads(line) for line in rows.read_text().splitlines() if '"failed"' in line]
    assert failed[0]["reason"] == reason


def _cache_log() -> Path:
    (folder,) = list((umm_home() / "cache").iterdir())
    return folder / "outputs.jsonl"


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_recomputing_samples(workspace, tmp_path_factory, monkeypatch):
    args = [sys.executable, "-m", "umm_harness", "eval", "--batch-size", "1", "--limit", "60", "--threads", "1"]
    process = subprocess.Popen(args, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        cache = list((umm_home() / "cache").glob("*/outputs.jsonl"))
        if cache and len(cache[0].read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _cache_log().read_text().splitlines()
    assert 10 <= len(before) < 60 + 30, "the kill should land mid-run"

    resumed = evaluate(EvalRecipe(limit=60, batch_size=1))
    after = _cache_log().read_text().splitlines()
    assert after[: len(before)] == before  # nothing rewritten
    keys = [(json.loads(line)["sample_id"], json.loads(line)["k"]) for line in after]
    assert len(keys) == len(set(keys))  # nothing computed twice
    assert resumed.results["shapes"].reused == len(before)
    assert resumed.results["shapes"].reused + resumed.results["shapes"].computed == len(keys)

    # An uninterrupted run in a clean cache gets exactly the same outputs and metrics.
    monkeypatch.setenv("UMM_HOME", str(tmp_path_factory.mktemp("clean_home")))
    (Path(os.environ["UMM_HOME"]) / "tiny").symlink_to(workspace / "umm_home" / "tiny")
    clean = evaluate(EvalRecipe(limit=60, batch_size=1))
    assert clean.results["shapes"].reused == 0
    assert official(clean.metrics) == official(resumed.metrics)
    clean_lines = {json.loads(line)["sample_id"] + str(json.loads(line)["k"]): json.loads(line)["text"]
                   for line in _cache_log().read_text().splitlines()}
    resumed_lines = {json.loads(line)["sample_id"] + str(json.loads(line)["k"]): json.loads(line)["text"]
                     for line in after}
    assert clean_lines == resumed_lines


@pytest.mark.slow
def test_mlflow_run_eval_entry_point(workspace):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["mlflow", "run", str(REPO), "-e", "eval", "--env-manager", "local", "-P", "limit=18",
         "--experiment-name", "umm-eval"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("umm-eval")
    parents = client.search_runs([experiment.experiment_id], "tags.`umm.suite` = 'shapes' and attributes.status = 'FINISHED'")
    parent = next(run for run in parents if "mlflow.parentRunId" not in run.data.tags)
    assert parent.data.params["limit"] == "18"  # the -P parameter, logged by `mlflow run`
    assert parent.data.tags["mlflow.project.entryPoint"] == "eval"
    assert "shapes/understanding_acc" in parent.data.metrics
    assert client.get_model_version("janus-pro-tiny", "1").status == "READY"


def test_generate_then_score_reads_logged_images_and_never_regenerates(workspace, monkeypatch):
    generated = evaluate(EvalRecipe(limit=LIMIT, stage="generate"))
    assert generated.results["shapes"].records == {} and generated.results["shapes"].computed > 0
    (gen_child,) = _child_runs(generated.run_id)
    assert "shapes/understanding_acc" not in gen_child.data.metrics and gen_child.data.tags["umm.stage"] == "generate"

    # Scoring must not touch the model: make loading it impossible.
    monkeypatch.setattr("umm_harness.evaluate.resolve_model", lambda *a, **k: pytest.fail("score loaded the model"))
    first = evaluate(EvalRecipe(model="models:/janus-pro-tiny/1", limit=LIMIT, stage="score"))
    again = evaluate(EvalRecipe(limit=LIMIT, stage="score", from_run=generated.run_id))
    assert first.run_id == again.run_id == generated.run_id
    children = _child_runs(generated.run_id)
    assert sorted(c.data.tags["umm.stage"] for c in children) == ["generate", "score", "score"]
    assert official(first.metrics) == official(again.metrics)
    assert first.results["shapes"].computed == 0

    monkeypatch.undo()
    reference = evaluate(EvalRecipe(limit=LIMIT))  # both stages at once, from the same cache
    assert official(reference.metrics) == official(first.metrics)


def test_score_without_a_generate_run_is_a_config_error(workspace):
    from umm_harness.core.errors import ConfigError

    evaluate(EvalRecipe(limit=LIMIT, stage="generate"))
    with pytest.raises(ConfigError, match="no finished generate run"):
        evaluate(EvalRecipe(model="models:/janus-pro-tiny/1", limit=LIMIT + 1, stage="score"))
    with pytest.raises(ConfigError, match="needs --from-run"):
        evaluate(EvalRecipe(limit=LIMIT, stage="score"))


@pytest.mark.slow
def test_two_data_parallel_ranks_give_exactly_the_one_rank_run(workspace, tmp_path_factory, monkeypatch):
    one_rank = evaluate(EvalRecipe(limit=LIMIT, batch_size=4))
    monkeypatch.setenv("UMM_HOME", str(tmp_path_factory.mktemp("dp_home")))
    (Path(os.environ["UMM_HOME"]) / "tiny").symlink_to(workspace / "umm_home" / "tiny")
    done = subprocess.run([sys.executable, "-m", "umm_harness", "eval", "--limit", str(LIMIT), "--batch-size", "4",
                           "--nproc", "2"], cwd=workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = sorted(p.name for p in (umm_home() / "cache").glob("*/outputs*.jsonl"))
    assert logs == ["outputs-rank1.jsonl", "outputs.jsonl"]  # each rank wrote its own share
    lines = [json.loads(line) for p in (umm_home() / "cache").glob("*/outputs*.jsonl") for line in p.read_text().splitlines()]
    keys = [(line["sample_id"], line["k"]) for line in lines]
    assert len(keys) == len(set(keys)) == one_rank.results["shapes"].computed

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                              "tags.`umm.ranks` = '2' and tags.`umm.benchmark` = 'shapes'")
    (child,) = runs
    assert official({k: v for k, v in child.data.metrics.items()}) == official(one_rank.metrics)
    assert child.data.metrics["shapes/outputs_computed"] == len(keys)


def _stop_node(launcher: subprocess.Popen, sig: int) -> None:
    """Signal a node's launcher and every rank it started (torchrun gives its ranks their own
    sessions), and wait until all of them are gone."""
    import psutil

    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)
    _, alive = psutil.wait_procs(processes, timeout=60)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=30)
    launcher.wait(timeout=30)


def _node(workspace: Path, node_rank: int, endpoint: str, cache_dir: Path) -> subprocess.Popen:
    """One node's launcher of a two-node run (its own process group, so a test can drop the whole node)."""
    args = [sys.executable, "-m", "umm_harness", "eval", "--limit", str(LIMIT), "--batch-size", "2", "--threads", "1",
            "--nnodes", "2", "--node-rank", str(node_rank), "--rdzv-endpoint", endpoint, "--cache-dir", str(cache_dir)]
    return subprocess.Popen(args, cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_two_nodes_share_the_work_and_a_lost_node_is_recovered_by_a_rerun(workspace, tmp_path_factory, monkeypatch):
    one_rank = evaluate(EvalRecipe(limit=LIMIT, batch_size=2))
    total = one_rank.results["shapes"].computed
    monkeypatch.setenv("UMM_HOME", str(tmp_path_factory.mktemp("nodes_home")))
    (Path(os.environ["UMM_HOME"]) / "tiny").symlink_to(workspace / "umm_home" / "tiny")
    shared = tmp_path_factory.mktemp("shared_cache")  # the folder every node sees

    # Both nodes start; node 1 is lost (its launcher and ranks killed) once it has finished a few outputs.
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [_node(workspace, rank, endpoint, shared) for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sum(_line_count(p) for p in shared.glob("*/outputs*.jsonl")) < 6:
        assert all(node.poll() is None for node in nodes), nodes[0].stdout.read()[-3000:]
        time.sleep(0.05)
    _stop_node(nodes[1], signal.SIGKILL)  # the lost node
    _stop_node(nodes[0], signal.SIGTERM)  # the scheduler stops the rest of the job
    before = {log.name: log.read_text().splitlines() for log in shared.glob("*/outputs*.jsonl")}
    done_before = sum(len(lines) for lines in before.values())
    assert 6 <= done_before < total, "the node should be lost mid-generation"

    # The same two commands again: nothing finished is recomputed, the result is the one-rank run's.
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [_node(workspace, rank, endpoint, shared) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    after = {log.name: log.read_text().splitlines() for log in shared.glob("*/outputs*.jsonl")}
    assert sorted(after) == ["outputs-rank1.jsonl", "outputs.jsonl"]  # one log per global rank
    for name, lines in before.items():
        assert after[name][: len(lines)] == lines, f"{name}: finished outputs were rewritten"
    keys = [(json.loads(line)["sample_id"], json.loads(line)["k"]) for lines in after.values() for line in lines]
    assert len(keys) == len(set(keys)) == total
    assert not list((umm_home() / "cache").glob("*/outputs*.jsonl"))  # --cache-dir, not $UMM_HOME/cache

    client = MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                                  "tags.`umm.ranks` = '2' and tags.`umm.benchmark` = 'shapes' "
                                  "and attributes.status = 'FINISHED'")
    assert child.data.metrics["shapes/outputs_reused"] == done_before
    assert official(child.data.metrics) == official(one_rank.metrics)
    (one_rank_child,) = _child_runs(one_rank.run_id)
    assert _sample_rows(child.info.run_id) == _sample_rows(one_rank_child.info.run_id)


def _rank_process(launcher: subprocess.Popen, rank: int, deadline: float):
    """The worker process torchrun started for `rank` (found by its RANK variable)."""
    import psutil

    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "umm_harness" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never started")


def _line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_a_killed_rank_resumes_without_recomputing_and_matches_the_one_rank_run(workspace, tmp_path_factory,
                                                                                 monkeypatch):
    one_rank = evaluate(EvalRecipe(limit=LIMIT, batch_size=2))
    total = one_rank.results["shapes"].computed
    monkeypatch.setenv("UMM_HOME", str(tmp_path_factory.mktemp("killed_rank_home")))
    (Path(os.environ["UMM_HOME"]) / "tiny").symlink_to(workspace / "umm_home" / "tiny")
    args = [sys.executable, "-m", "umm_harness", "eval", "--limit", str(LIMIT), "--batch-size", "2", "--nproc", "2",
            "--threads", "1"]

    # SIGKILL rank 1 from outside once its own cache log holds a few outputs.
    launcher = subprocess.Popen(args, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    rank1 = _rank_process(launcher, 1, deadline)
    while time.monotonic() < deadline and not list((umm_home() / "cache").glob("*/outputs-rank1.jsonl")):
        time.sleep(0.02)
    (rank1_log,) = (umm_home() / "cache").glob("*/outputs-rank1.jsonl")
    while time.monotonic() < deadline and _line_count(rank1_log) < 4:
        time.sleep(0.02)
    rank1.send_signal(signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0  # torchrun stops rank 0 too and reports the failure
    before = {log.name: log.read_text().splitlines() for log in rank1_log.parent.glob("outputs*.jsonl")}
    done_before = sum(len(lines) for lines in before.values())
    assert 4 <= len(before["outputs-rank1.jsonl"]) < total // 2, "the kill should land mid-generation"

    done = subprocess.run(args, cwd=workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {log.name: log.read_text().splitlines() for log in rank1_log.parent.glob("outputs*.jsonl")}
    assert sorted(after) == ["outputs-rank1.jsonl", "outputs.jsonl"]
    for name, lines in before.items():
        assert after[name][: len(lines)] == lines, f"{name}: finished outputs were rewritten"
    keys = [(json.loads(line)["sample_id"], json.loads(line)["k"]) for lines in after.values() for line in lines]
    assert len(keys) == len(set(keys)) == total  # nothing computed twice, nothing missing

    client = MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                                  "tags.`umm.ranks` = '2' and tags.`umm.benchmark` = 'shapes' "
                                  "and attributes.status = 'FINISHED'")
    assert child.data.metrics["shapes/outputs_computed"] == total - done_before
    assert child.data.metrics["shapes/outputs_reused"] == done_before
    assert official(child.data.metrics) == official(one_rank.metrics)
    (one_rank_child,) = _child_runs(one_rank.run_id)
    assert _sample_rows(child.info.run_id) == _sample_rows(one_rank_child.info.run_id)


def _sample_rows(run_id: str) -> list[dict]:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="samples/shapes.jsonl")
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class OutOfMemoryAboveFour:
    """A simulated accelerator: the real tiny Janus-Pro, but batches over 4 raise CUDA's OOM error."""

    def __init__(self, backbone):
        self.inner, self.batch_sizes = backbone, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, requests):
        self.batch_sizes.append(len(requests))
        if len(requests) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.run(requests)


def test_auto_batch_size_backs_off_on_out_of_memory_and_remembers(workspace, tiny_janus, tmp_path):
    from tasks.shapes import ShapesTask
    from umm_harness.batch_size import BatchSizer
    from umm_harness.cache import ResultCache
    from umm_harness.runner import run_benchmark

    memory = tmp_path / "batch_sizes.json"
    backbone = OutOfMemoryAboveFour(tiny_janus)
    result = run_benchmark(ShapesTask(), backbone, ResultCache(tmp_path / "c1"), run_seed=0, limit=24,
                           batch_size=BatchSizer("auto", memory, "tiny"))
    assert result.computed == sum(s.n for s in result.samples)  # 30 images + 6 answers, nothing lost
    # 30 generation outputs pending: 64 → 30 tried, then 32 → 30, 16, 8, and 4 fits; then the
    # 9 understanding questions learn their own size the same way.
    assert backbone.batch_sizes == [30, 30, 16, 8, 4, 4, 4, 4, 4, 4, 4, 2, 9, 9, 9, 8, 4, 4, 1]
    assert json.loads(memory.read_text()) == {"tiny:understanding": 4, "tiny:generation": 4}

    backbone.batch_sizes.clear()  # the next run starts from the remembered size
    run_benchmark(ShapesTask(), backbone, ResultCache(tmp_path / "c2"), run_seed=0, limit=24,
                  batch_size=BatchSizer("auto", memory, "tiny"))
    assert max(backbone.batch_sizes) == 4

    fixed = OutOfMemoryAboveFour(tiny_janus)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed batch size is the user's word: no back-off
        run_benchmark(ShapesTask(), fixed, ResultCache(tmp_path / "c3"), run_seed=0, limit=24, batch_size=8)
