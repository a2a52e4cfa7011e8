"""MM-Vet: loading the hub schema, the grading prompt, reading judge scores, retries, totals.

Scores are worked out by hand from the official rules (tasks/scorers/mm_vet_rules.py). The
arithmetic is checked with `StandInJudge` (scripted replies); the plumbing end to end with the
tiny random judge behind the real local OpenAI-compatible server, whose replies are garbage, so
what is checked there is the failure accounting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.base import Output, Sample
from tasks.judges import JudgeConfig
from tasks.judges.parsing import ParseError
from tasks.judges.server import running
from tasks.judges.tiny import build_tiny_judge
from tasks.mm_vet import MMVetTask
from tasks.scorers.mm_vet_rules import (
    EXAMPLES,
    RETRY_SUFFIX,
    grading_prompt,
    harness_grader_prompt,
    load_grader_prompt,
    official_round,
    parse_score,
)
from tests.fixtures_hub import CORRUPT, IMAGE, _write, image
from tests.test_judges import JUDGE_ENV, SECRET, StandInJudge
from umm_harness.core.errors import ConfigError

MMVET_SCHEMA = pa.schema([("question_id", pa.string()), ("image", IMAGE), ("question", pa.string()),
                          ("answer", pa.string()), ("image_source", pa.string()), ("capability", pa.string())])


def write_mmvet(data_dir: Path) -> list[dict]:
    """Three questions as lmms-lab/MMVet stores them, then one on a corrupt image."""
    rows = [
        {"question_id": "v1_0", "image": image("white", "v1_0.png"), "question": "What is x in the equation?",
         "answer": "-1<AND>-5", "image_source": "fixture", "capability": "ocr,math"},
        {"question_id": "v1_1", "image": image("red", "v1_1.png"), "question": "What colour is the square?",
         "answer": "red<OR>crimson", "image_source": "fixture", "capability": "rec"},
        {"question_id": "v1_2", "image": image("blue", "v1_2.png"), "question": "What does the sign say?",
         "answer": "STOP", "image_source": "fixture", "capability": "rec,ocr"},
        {"question_id": "v1_3", "image": CORRUPT, "question": "Why is this funny?", "answer": "It is not.",
         "image_source": "fixture", "capability": "rec,know,gen"},
    ]
    _write(data_dir / "lmms-lab/MMVet/data/test-00000-of-00001.parquet", rows, MMVET_SCHEMA)
    return rows


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)


def answered(text: str) -> list[Output]:
    return [Output(k=0, seed=0, text=text)]


def prediction_of(prompt: str) -> str:
    """The prediction cell of the row a grading prompt asks about."""
    return prompt.removesuffix(RETRY_SUFFIX).splitlines()[-1].split(" | ")[2]


def graded_by(scores: dict[str, str]) -> StandInJudge:
    """A stand-in judge replying with the score scripted for each prediction."""
    return StandInJudge(lambda prompt, n: scores[prediction_of(prompt)])


def sample(id: str, caps: list[str], question: str = "Q?", answer: str = "A") -> Sample:
    return Sample(id=id, category="_".join(sorted(caps)),
                  references={"question": question, "answer": answer, "capabilities": caps})


# --- construction and loading -------------------------------------------------------------


def test_without_a_judge_the_task_refuses_to_start():
    with pytest.raises(ConfigError, match="mm_vet is scored by an LLM judge and none is configured"):
        MMVetTask()


def test_the_environment_can_name_the_judge(monkeypatch, tmp_path):
    monkeypatch.setenv("UMM_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("UMM_JUDGE_MODEL", "gpt-4-0613")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("UMM_HOME", str(tmp_path))
    task = MMVetTask()
    assert task.options.judge == "openai:gpt-4-0613" and SECRET not in task.options.model_dump_json()
    assert (tmp_path / "judge_cache" / "judge_cache.sqlite").is_file()  # the default cache folder


def test_loads_the_hub_schema(tmp_path):
    rows = write_mmvet(tmp_path)
    samples = MMVetTask(tmp_path, judge=StandInJudge(lambda p, n: "1.0"), cache_dir=tmp_path / "c").samples()
    assert [s.id for s in samples] == ["v1_0", "v1_1", "v1_2", "v1_3"]
    first = samples[0]
    assert first.request.prompt == rows[0]["question"] and len(first.request.images) == 1
    assert first.references == {"question": "What is x in the equation?", "answer": "-1<AND>-5",
                                "capabilities": ["ocr", "math"]}
    assert first.category == "math_ocr" and samples[2].category == "ocr_rec"
    assert samples[3].request is None and samples[3].error  # the corrupt image fails one sample


# --- the grading prompt and reading the score ---------------------------------------------


def test_grading_prompt_layout():
    grader = harness_grader_prompt()
    prompt = grading_prompt(grader, "What is x in the equation?", "-1<AND>-5", "x = -1")
    assert prompt.startswith(grader)
    assert prompt.endswith("| 1.0\n\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | ")
    assert "Question | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n" in grader
    assert len(EXAMPLES) == 8 and grader.count(" | ") == 3 * (len(EXAMPLES) + 2)  # header, rule, rows
    assert grading_prompt(grader, "q", "a<OR>b", "p").endswith("q | a <OR> b | p | ")


def test_official_grader_prompt_is_read_from_the_evaluator_script(tmp_path):
    script = tmp_path / "mm-vet_evaluator.py"
    script.write_text('import json\nprompt = """Grade it.\n\nQ | GT | P | C\n"""\n\ndef main():\n    pass\n')
    assert load_grader_prompt(script) == "Grade it.\n\nQ | GT | P | C\n"
    task = MMVetTask(judge=StandInJudge(lambda p, n: "1.0"), grader_prompt=script, cache_dir=tmp_path)
    assert task.grader_prompt == "Grade it.\n\nQ | GT | P | C\n"
    with pytest.raises(ConfigError, match="grader_prompt"):
        MMVetTask(judge=StandInJudge(lambda p, n: "1.0"), grader_prompt=tmp_path / "missing.py", cache_dir=tmp_path)


@pytest.mark.parametrize(("reply", "score"), [
    ("0.6", 0.6), ("0.6 because it names one of the two roots", 0.6), ("1.0\n", 1.0), ("\n0.8", 0.8),
    ("1", 1.0), ("0", 0.0), ("0.30", 0.3),
])
def test_judge_scores_read_as_the_official_code_reads_them(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", ["garbage", " 0.6", "0.6,", "1.5", "-0.1", "inf", "", "Score: 0.6", "0.6/1",
                                   "0.6\nThe prediction"])  # split on " " only: "0.6\nThe" is no number
def test_unreadable_judge_scores(reply):
    with pytest.raises(ParseError):
        parse_score(reply)


def test_a_nan_reply_is_a_nan_score_and_makes_its_totals_nan(tmp_path):
    """Official `mm-vet_evaluator.py` (yuweihao/MM-Vet@acde843), its parse and `export_result` run
    on these three graded questions: rec nan, ocr 75.0, total nan; integration rec nan,
    ocr_rec 100.0, ocr 50.0 (NaN passes its `score > 1.0 or score < 0.0` check)."""
    assert math.isnan(parse_score("nan"))
    task = MMVetTask(judge=graded_by({"p1": "nan", "p2": "1.0", "p3": "0.5"}), cache_dir=tmp_path)
    samples = [sample("s1", ["rec"]), sample("s2", ["rec", "ocr"]), sample("s3", ["ocr"])]
    records = dict(zip(["s1", "s2", "s3"], task.score_many([(s, answered(f"p{s.id[1]}")) for s in samples])))
    assert math.isnan(records["s1"]["score"]) and records["s1"]["judge_failed"] is False
    metrics = task.aggregate(samples, records)
    assert math.isnan(metrics["overall"]) and math.isnan(metrics["capability/rec"])
    assert math.isnan(metrics["integration/rec"])
    assert (metrics["capability/ocr"], metrics["integration/ocr_rec"], metrics["integration/ocr"]) == (75.0, 100.0, 50.0)


def test_a_question_without_a_prediction_is_an_error_naming_it(tmp_path):
    """The official evaluator stops with a KeyError on a question missing from the results."""
    task = MMVetTask(judge=graded_by({"right": "1.0"}), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="question q7 has no prediction"):
        task.score(sample("q7", ["rec"]), [Output(k=0, seed=0, text=None)])
    samples = [sample("q1", ["rec"]), sample("q7", ["rec"])]
    with pytest.raises(ValueError, match="question q7 has no prediction"):
        task.aggregate(samples, {"q1": task.score(samples[0], answered("right"))})


def test_rounding_is_numpy_half_to_even():
    assert official_round(1.25) == 1.2  # exact half: to even (half-up would give 1.3)
    assert official_round(31.25) == 31.2
    assert official_round(43.75) == 43.8
    assert official_round(0.15) == 0.2 and round(0.15, 1) == 0.1  # numpy, not Python's round


# --- retries and failures -----------------------------------------------------------------


def test_official_retries_then_zero_counted_as_a_failure(tmp_path):
    judge = StandInJudge(lambda prompt, n: "Correct!")
    task = MMVetTask(judge=judge, cache_dir=tmp_path)
    record = task.score(sample("v1_0", ["rec"]), answered("red"))
    # The official loop (yuweihao/MM-Vet@acde843): 0, then retries at 0, 0.5, 1.0, 1.5, and a
    # sixth call (at 2.0) whose reply is never read before the score is forced to 0.0.
    assert [(temperature, max_tokens) for _, max_tokens, temperature in judge.calls] == [
        (0.0, 3), (0.0, 3), (0.5, 3), (1.0, 3), (1.5, 3), (2.0, 3)]
    assert [prompts[0].endswith(RETRY_SUFFIX) for prompts, _, _ in judge.calls] == [False] + [True] * 5
    assert record["judge_failed"] is True and record["judge_score"] is None and record["score"] == 0.0
    assert record["judge_replies"] == ["Correct!"] * 6 and record["judge_reply"] == "Correct!"
    metrics = task.aggregate([sample("v1_0", ["rec"])], {"v1_0": record})
    assert metrics == {"overall": 0.0, "capability/rec": 0.0, "integration/rec": 0.0, "judge_failures": 1.0}


def test_without_official_retries_a_failure_is_left_out_of_every_average(tmp_path):
    judge = graded_by({"right": "1.0", "unsure": "I think it is right"})
    task = MMVetTask(judge=judge, official_retries=False, cache_dir=tmp_path)
    samples = [sample("a", ["rec"]), sample("b", ["rec", "ocr"])]
    records = {"a": task.score(samples[0], answered("right")), "b": task.score(samples[1], answered("unsure"))}
    assert records["b"]["score"] is None and records["b"]["judge_failed"] is True
    assert [call[2] for call in judge.calls] == [0.0, 0.0, 0.0]  # a's one call, b's call and one retry
    assert task.aggregate(samples, records) == {"overall": 100.0, "capability/rec": 100.0,
                                                "integration/rec": 100.0, "judge_failures": 1.0}


def test_a_retry_that_reads_is_the_score(tmp_path):
    judge = StandInJudge(lambda prompt, n: "The answer" if not prompt.endswith(RETRY_SUFFIX) else "0.7")
    record = MMVetTask(judge=judge, cache_dir=tmp_path).score(sample("v1_0", ["rec"]), answered("red"))
    assert (record["score"], record["judge_failed"], record["judge_replies"]) == (0.7, False, ["The answer", "0.7"])


# --- totals -------------------------------------------------------------------------------


def test_scores_per_capability_and_integration_by_hand(tmp_path):
    # id: capabilities, the judge's score
    plan = {"s1": (["rec"], "1.0"), "s2": (["rec"], "0.5"), "s3": (["rec", "ocr"], "1.0"), "s4": (["ocr"], "0.0"),
            "s5": (["ocr", "math"], "0.0"), "s6": (["rec", "know", "gen"], "0.0"), "s7": (["rec"], "0.0"),
            "s8": (["spat", "ocr"], "0.0")}
    task = MMVetTask(judge=graded_by({f"pred {id}": score for id, (_, score) in plan.items()}), cache_dir=tmp_path)
    samples = [sample(id, caps) for id, (caps, _) in plan.items()]
    records = dict(zip(plan, task.score_many([(s, answered(f"pred {s.id}")) for s in samples])))
    assert [records[id]["score"] for id in plan] == [1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert task.aggregate(samples, records) == {
        "overall": 31.2,  # 2.5 / 8 × 100 = 31.25 → 31.2 (half to even)
        "capability/rec": 50.0,  # s1 s2 s3 s6 s7: 2.5 / 5
        "capability/ocr": 25.0,  # s3 s4 s5 s8: 1.0 / 4
        "capability/math": 0.0, "capability/know": 0.0, "capability/gen": 0.0, "capability/spat": 0.0,
        "integration/rec": 50.0,  # s1 s2 s7: 1.5 / 3
        "integration/ocr_rec": 100.0, "integration/ocr": 0.0, "integration/math_ocr": 0.0,
        "integration/gen_know_rec": 0.0, "integration/ocr_spat": 0.0,
        "judge_failures": 0.0,
    }
    records["s1"] = {**records["s1"], "score": 0.0}
    assert task.aggregate(samples, records)["overall"] == 18.8  # 1.5 / 8 × 100 = 18.75 → 18.8


def test_rescoring_is_served_from_the_cache(tmp_path):
    samples = [sample("a", ["rec"]), sample("b", ["ocr"])]
    items = [(samples[0], answered("right")), (samples[1], answered("wrong"))]
    first_judge = graded_by({"right": "1.0", "wrong": "0.0"})
    first = MMVetTask(judge=first_judge, cache_dir=tmp_path).score_many(items)
    assert len(first_judge.calls) == 1 and len(first_judge.calls[0][0]) == 2  # one batched call
    second_judge = graded_by({"right": "1.0", "wrong": "0.0"})
    task = MMVetTask(judge=second_judge, cache_dir=tmp_path)
    assert [task.score(s, outputs) for s, outputs in items] == first
    assert second_judge.calls == [] and task.judge.backend_calls == 0 and task.judge.hits == 2


# --- end to end through the served tiny judge ---------------------------------------------


@pytest.fixture(scope="module")
def served_tiny_judge(tmp_path_factory):
    folder = build_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0)
    with running(folder, tmp_path_factory.mktemp("server") / "server.log", name="tiny-judge", api_key=SECRET) as url:
        yield url


def test_end_to_end_through_the_served_tiny_judge(served_tiny_judge, monkeypatch, tmp_path):
    write_mmvet(tmp_path / "data")
    monkeypatch.setenv("UMM_JUDGE_API_KEY", SECRET)
    config = JudgeConfig(backend="openai", base_url=served_tiny_judge, cache_dir=tmp_path / "cache")
    task = MMVetTask(tmp_path / "data", judge=config)
    samples = [s for s in task.samples() if s.error is None]
    answers = {"v1_0": "x = -1 or x = -5", "v1_1": "It is red.", "v1_2": "The sign says STOP."}
    records = dict(zip(answers, task.score_many([(s, answered(answers[s.id])) for s in samples])))
    metrics = task.aggregate(samples, records)

    def readable(reply: str) -> bool:
        try:
            parse_score(reply)
        except ParseError:
            return False
        return True

    for id, record in records.items():
        assert record["judge"] == "openai:tiny-judge" and record["reply"] == answers[id]
        assert record["judge_failed"] == (not any(readable(reply) for reply in record["judge_replies"]))
        if record["judge_failed"]:  # the official loop: five unreadable replies, a sixth unread, then 0.0
            assert len(record["judge_replies"]) == 6 and record["score"] == 0.0 and record["judge_score"] is None
        else:
            assert record["score"] == parse_score(record["judge_reply"])
    failures = sum(record["judge_failed"] for record in records.values())
    assert failures >= 1  # a random judge writes garbage
    assert metrics["judge_failures"] == failures and set(metrics) >= {"overall", "capability/rec", "capability/ocr"}
    assert SECRET not in json.dumps(records) + json.dumps(metrics) + task.options.model_dump_json()

    again = MMVetTask(tmp_path / "data", judge=config)  # a re-score: every reply from the cache
    assert again.score_many([(s, answered(answers[s.id])) for s in samples]) == list(records.values())
    assert again.judge.backend_calls == 0
