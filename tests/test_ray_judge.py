"""`ray: {judge: ...}`: a judged benchmark's judge calls on the Ray cluster (Ray started locally on
this CPU). The tiny chat VLM behind a real `python -m tasks.judges.server` process judges GEdit's
fixture edits; sent from Ray actors, its replies land in the same judge cache, the records and
metrics equal the local executor's, and a rerun asks the judge nothing. The `ray.data.llm` vLLM
stage needs vLLM, which does not install beside this project's transformers: without it the
recipe is refused with one line, and the test that runs it skips."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest

from tasks.judges.tiny import build_tiny_vision_judge
from tests.fixtures_editing import write_gedit
from tests.test_editing_e2e import JUDGE_NAME, judge_url  # noqa: F401 - the tiny judge server, a fixture
from umm_harness.config import EvalRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.evaluate import evaluate
from umm_harness.tracking import official


def _recipe(data: Path, cache: Path, judge_cache: Path, judge_url: str, **extra) -> EvalRecipe:
    write_gedit(data)
    return EvalRecipe(model="tiny:diffusers-ip2p", suite="gedit", seed=7, data_dir=data, params={"steps": 2},
                      judge={"backend": "openai", "model": JUDGE_NAME, "max_tokens": 24, "base_url": judge_url,
                             "cache_dir": judge_cache},
                      task_options={"gedit": {"input_area": 64 * 64}}, cache_dir=cache, **extra)


def _replies(judge_cache: Path) -> list[tuple]:
    with sqlite3.connect(judge_cache / "judge_cache.sqlite") as db:
        return db.execute("SELECT judge_id, prompt_sha256, settings, reply, created FROM replies ORDER BY 2, 3").fetchall()


@pytest.mark.slow
def test_judge_calls_sent_from_ray_actors_give_the_local_records_and_a_rerun_asks_nothing(workspace, judge_url):
    data = workspace / "data"
    local = evaluate(_recipe(data, workspace / "local", workspace / "judge-local", judge_url))
    ray_settings = {"actors": 1, "judge": {"endpoint": judge_url, "actors": 2}}
    on_ray = evaluate(_recipe(data, workspace / "ray", workspace / "judge-ray", judge_url, executor="ray",
                              ray=ray_settings))
    assert on_ray.results["gedit"].scored == local.results["gedit"].scored == 4
    import ray

    # Ray's public state API needs the dashboard, which the local Ray here runs without.
    senders = [a for a in ray._private.state.actors().values() if a["ActorClassName"] == "_EndpointClient"]
    assert len(senders) == 2  # the judge requests went out from two Ray actors
    assert on_ray.results["gedit"].records == local.results["gedit"].records
    assert official(on_ray.metrics) == official(local.metrics)
    asked = _replies(workspace / "judge-ray")
    assert asked and {row[0] for row in asked} == {f"openai:{JUDGE_NAME}#max_tokens=24"}
    assert [row[:4] for row in asked] == [row[:4] for row in _replies(workspace / "judge-local")]

    # A fresh output cache: the edits are made and scored again, every judge reply read back.
    again = evaluate(_recipe(data, workspace / "ray-again", workspace / "judge-ray", judge_url, executor="ray",
                             ray=ray_settings))
    assert again.results["gedit"].scored == 4 and official(again.metrics) == official(on_ray.metrics)
    assert _replies(workspace / "judge-ray") == asked  # no reply asked (nor re-stored) again


def test_a_vllm_judge_stage_without_vllm_is_one_clear_error(workspace, judge_url):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the stage itself is tested by the next test")
    recipe = _recipe(workspace / "data", workspace / "cache", workspace / "judge", judge_url, executor="ray",
                     ray={"judge": {"engine": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}})
    with pytest.raises(ConfigError, match=r"needs vLLM: pip install vllm"):
        evaluate(recipe)


def test_ray_judge_settings_need_the_ray_executor_and_one_way(workspace, judge_url):
    with pytest.raises(ConfigError, match="ray.judge.*only with --executor ray"):
        evaluate(_recipe(workspace / "data", workspace / "c", workspace / "j", judge_url,
                         ray={"judge": {"endpoint": judge_url}}))
    with pytest.raises(ValueError, match="exactly one of `endpoint`"):
        EvalRecipe(executor="ray", ray={"judge": {"endpoint": judge_url, "engine": "vllm", "model": "m"}})


@pytest.mark.slow
def test_the_vllm_judge_stage_on_ray_scores_the_edits(workspace, judge_url, tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM (pip install vllm), which does not install beside this project's transformers")
    judge_model = build_tiny_vision_judge(tmp_path / "vlm")
    summary = evaluate(_recipe(workspace / "data", workspace / "cache", workspace / "judge", judge_url,
                               executor="ray", ray={"judge": {"engine": "vllm", "model": str(judge_model)}}))
    assert summary.results["gedit"].scored == 4
    assert {row[0] for row in _replies(workspace / "judge")} == {f"vllm:{judge_model}#max_tokens=24"}
