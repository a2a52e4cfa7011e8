"""Score records kept beside the outputs: reused only for the same scorer and the very same outputs."""

import numpy as np
import pytest
from PIL import Image

from tasks.shapes import ShapesTask
from umm_harness.cache import ResultCache, scorer_identity
from umm_harness.tracking import official


def _cache_with_one_image(folder) -> ResultCache:
    cache = ResultCache(folder)
    cache.add_batch([("s1", 0, 7, None, [Image.new("RGB", (8, 8), "red")], 0.1)])
    return cache


def test_a_record_is_reused_for_the_same_scorer_and_outputs_only(tmp_path):
    cache = _cache_with_one_image(tmp_path)
    record = {"score": 1.0, "detections": [{"box": [1.0, 2.0], "score": np.float32(0.9725)}]}
    cache.add_scores("detector-a", [("s1", 1, record)])

    reread = ResultCache(tmp_path).score_record("detector-a", "s1", 1)
    assert reread == record and type(reread["detections"][0]["score"]) is np.float32  # exactly as computed
    assert ResultCache(tmp_path).score_record("detector-b", "s1", 1) is None  # another scorer
    assert ResultCache(tmp_path).score_record("detector-a", "s1", 2) is None  # other outputs (n differs)

    regenerated = ResultCache(tmp_path)
    regenerated.add_batch([("s1", 0, 8, None, [Image.new("RGB", (8, 8), "blue")], 0.1)])  # a new seed, a new image
    assert regenerated.score_record("detector-a", "s1", 1) is None


def test_a_record_that_json_would_change_is_not_kept(tmp_path):
    cache = _cache_with_one_image(tmp_path)
    cache.add_scores("scorer", [("s1", 1, {"box": (1, 2)}), ("s2", 1, {"pixels": np.zeros(2)})])
    assert ResultCache(tmp_path).score_record("scorer", "s1", 1) is None
    assert ResultCache(tmp_path).score_record("scorer", "s2", 1) is None


def test_a_score_line_torn_by_a_kill_costs_that_record_only(tmp_path):
    cache = _cache_with_one_image(tmp_path)
    cache.add_scores("scorer", [("s1", 1, {"score": 1.0})])
    with (tmp_path / "scores.jsonl").open("a") as handle:
        handle.write('{"scorer": "scorer", "sample_id": "s2", "outp')  # killed mid-write
    again = ResultCache(tmp_path)
    again.add_scores("scorer", [("s1", 1, {"score": 0.5})])
    assert ResultCache(tmp_path).score_record("scorer", "s1", 1) == {"score": 0.5}


def test_the_scorer_identity_names_the_task_its_scorer_and_the_judge(monkeypatch):
    shapes = ShapesTask()
    assert scorer_identity(shapes) == scorer_identity(ShapesTask())
    assert scorer_identity(shapes) != scorer_identity(shapes, judge={"backend": "openai", "model": "x"})
    before = scorer_identity(shapes)
    monkeypatch.setenv("UMM_JUDGE_MODEL", "another-judge")  # the judge a recipe without `judge:` gets
    with_env_judge = scorer_identity(shapes)
    assert with_env_judge != before
    monkeypatch.setenv("UMM_JUDGE_API_KEY", "secret")  # credentials are no part of it
    assert scorer_identity(shapes) == with_env_judge


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_an_empty_truncated_or_missing_cached_image_is_computed_again(tmp_path, damage):
    _cache_with_one_image(tmp_path)
    (image,) = (tmp_path / "images").glob("*.png")
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(b"" if damage == "empty" else image.read_bytes()[:-20])
    assert ("s1", 0) not in ResultCache(tmp_path)


def test_an_evaluation_recomputes_a_damaged_cached_image_and_logs_a_whole_one(workspace):
    from umm_harness.config import EvalRecipe
    from umm_harness.evaluate import evaluate

    first = evaluate(EvalRecipe(limit=6, threads=1))
    generated = [p for p in (workspace / "umm_home" / "cache").rglob("images/*.png")]
    generated[0].write_bytes(generated[0].read_bytes()[: generated[0].stat().st_size // 2])
    second = evaluate(EvalRecipe(limit=6, threads=1))
    assert second.results["shapes"].computed == 1
    assert official(second.metrics) == official(first.metrics)
    with Image.open(generated[0]) as again:
        again.load()  # whole again
