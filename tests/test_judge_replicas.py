"""A judge served by several replicas: requests spread over them, a failed replica is bypassed.

Two real `tasks.judges.server` processes serve the same tiny judge; the client is the `openai`
backend with both URLs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tasks.judges.base import JudgeUnavailable, judge_config, make_judge
from tasks.judges.openai_backend import OpenAIJudge, split_base_urls
from tasks.judges.server import running
from tasks.judges.tiny import build_tiny_judge
from tasks.judges.transformers_backend import TransformersJudge
from umm_harness.core.ports import free_port

PROMPTS = [f"How many shapes are in picture {i}?" for i in range(8)]


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory) -> Path:
    return build_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0)


def test_replica_urls_from_a_string_or_a_recipe_list():
    assert split_base_urls("127.0.0.1:8000, 127.0.0.1:8001,127.0.0.1:8000") == [
        "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]
    config = judge_config({"backend": "openai", "base_url": ["a:1", "b:2"], "model": "m", "concurrency": 2})
    assert config.base_url == ("a:1", "b:2") and config.concurrency == 2
    judge = OpenAIJudge(base_url=config.base_url, model="m", concurrency=2)
    assert [r.url for r in judge.replicas] == ["http://a:1/v1", "http://b:2/v1"] and judge.concurrency == 4


@pytest.mark.slow
def test_requests_spread_over_replicas_and_move_off_a_dead_one(tiny_judge_dir, tmp_path):
    expected = TransformersJudge(str(tiny_judge_dir)).complete(PROMPTS, 6)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running(tiny_judge_dir, tmp_path / "a.log", name="tiny-judge"))
        second_stack = contextlib.ExitStack()
        second = second_stack.enter_context(running(tiny_judge_dir, tmp_path / "b.log", name="tiny-judge"))
        judge = OpenAIJudge(base_url=[first, second], concurrency=1, backoff_s=0.05)
        assert judge.id == "openai:tiny-judge"  # the same id whichever replica answers: one shared cache
        assert judge.complete(PROMPTS, 6) == expected
        assert all(replica.answered > 0 for replica in judge.replicas)

        second_stack.close()  # one replica goes away; its share moves to the other
        before = judge.replicas[0].answered
        assert judge.complete(PROMPTS, 6) == expected
        assert judge.replicas[0].answered - before == len(PROMPTS)


def test_every_replica_down_is_one_clear_error_naming_them(tmp_path):
    urls = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    judge = make_judge({"backend": "openai", "base_url": urls, "model": "m", "cache_dir": str(tmp_path)})
    judge.inner.retries, judge.inner.backoff_s = 2, 0.01
    with pytest.raises(JudgeUnavailable) as error:
        judge.complete(["hello"], 3)
    assert all(f"http://{url}/v1/chat/completions" in str(error.value) for url in urls)
