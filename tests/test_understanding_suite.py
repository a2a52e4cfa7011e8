"""The `understanding` suite end to end: the tiny Janus-Pro on MME, MMMU, MMBench, MM-Vet,
MathVista and MMStar (fixture rows in each hub's schema), judged by a tiny local transformers
judge; and `umm eval` through the CLI with an opt-in corrected mode beside an official task."""

import json
import re
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from tasks.judges.tiny import build_tiny_judge
from tasks.scorers.mmmu_rules import SUBJECTS
from tests.fixtures_hub import write_mathvista, write_mmbench, write_mme, write_mmmu, write_mmstar
from tests.test_mm_vet import write_mmvet
from umm_harness.cli import cli
from umm_harness.config import EvalRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.evaluate import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub_data")
    write_mme(root)
    write_mmmu(root, SUBJECTS)
    write_mmbench(root, pre_rotated=True)
    write_mmvet(root)
    write_mathvista(root)
    write_mmstar(root)
    return root


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    return build_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0)


def test_one_parent_run_with_a_child_per_benchmark(workspace, data_dir, judge_dir):
    judge = {"backend": "transformers", "model": str(judge_dir), "cache_dir": str(workspace / "judge_cache")}
    summary = evaluate(EvalRecipe(suite="understanding", data_dir=data_dir, judge=judge, batch_size=4,
                                  params={"max_new_tokens": 8}))
    client = MlflowClient()
    parent = client.get_run(summary.run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.run_id}'")
    assert sorted(c.data.tags["umm.benchmark"] for c in children) == ["mathvista", "mm_vet", "mmbench", "mme", "mmmu",
                                                                       "mmstar"]
    assert all(c.data.tags["umm.scoring_mode"] == "official" for c in children)
    for key in ["mme/perception", "mme/cognition", "mmmu/overall", "mmbench/overall", "mm_vet/overall",
                "mathvista/overall", "mmstar/overall", "mmstar/category/coarse perception"]:
        assert key in parent.data.metrics, key
    # Corrupt images in the fixtures: recorded per sample, counted, the run went on.
    for benchmark in ["mme", "mmmu", "mm_vet"]:
        assert parent.data.metrics[f"{benchmark}/failed_samples"] == 1
    assert parent.data.metrics["mmstar/failed_samples"] == 2  # a corrupt image, a question without options
    assert parent.data.metrics["mm_vet/judge_failures"] >= 0

    mme = next(c for c in children if c.data.tags["umm.benchmark"] == "mme")
    path = mlflow.artifacts.download_artifacts(run_id=mme.info.run_id, artifact_path="samples/mme.jsonl")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    scored = [row for row in rows if row["status"] == "scored"]
    assert scored and all({"reply", "extracted", "reference", "correct"} <= row.keys() for row in scored)
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1 and "images[0]" in failed[0]["reason"]


def test_umm_eval_runs_mmstar_and_keeps_a_corrected_mode_apart(workspace, data_dir):
    """`umm eval` (the real CLI) with the tiny Janus-Pro on MMStar, and MME in its opt-in
    corrected mode: tagged `umm.scoring_mode=corrected`, its metrics under `mme/corrected/`."""
    recipe = workspace / "eval.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny:janus-pro", "suite": "mmstar,mme", "data_dir": str(data_dir),
                                      "params": {"max_new_tokens": 8}, "task_options": {"mme": {"corrected": True}}}))
    result = CliRunner().invoke(cli, ["eval", "--recipe", str(recipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"\brun ([0-9a-f]{32}): ", result.output).group(1)
    client = MlflowClient()
    parent = client.get_run(run_id)
    children = {c.data.tags["umm.benchmark"]: c for c in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")}
    assert children["mmstar"].data.tags["umm.scoring_mode"] == "official"
    assert children["mme"].data.tags["umm.scoring_mode"] == "corrected"
    metrics = parent.data.metrics
    assert 0.0 <= metrics["mmstar/overall"] <= 1.0 and metrics["mmstar/num_samples"] == 4
    assert "mme/corrected/perception" in metrics and "mme/perception" not in metrics


def test_task_options_are_checked_by_name(workspace, data_dir):
    with pytest.raises(ConfigError, match="task_options.mme: unknown option 'strict'"):
        evaluate(EvalRecipe(suite="mme", data_dir=data_dir, task_options={"mme": {"strict": True}}))


def test_a_judged_benchmark_without_a_judge_fails_before_any_model_loads(workspace, data_dir, monkeypatch):
    for name in ("UMM_JUDGE_BASE_URL", "UMM_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="mm_vet is scored by an LLM judge"):
        evaluate(EvalRecipe(suite="mm_vet", data_dir=data_dir))
