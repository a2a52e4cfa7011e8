"""GEdit-Bench and ImgEdit-Bench scoring, rule by rule, on hand-worked inputs.

The expected values of the parser tables were checked by running the official code on the same
inputs: `mllm_output_to_dict` (GEdit-Bench/viescore/utils.py) and `calculate_dimensions`
(GEdit-Bench/generate_image_example.py) of stepfun-ai/Step1X-Edit @ 570eba6ebda0c45c013983a483afbf2fd12bfcbc;
`step1_get_avgscore.py` and `step2_typescore.py` (Benchmark/Basic/) of PKU-YuanGroup/ImgEdit @
547185d12c08267a862b94248576e1746e479937. Judges here are scripted stand-ins (a real VLM judge
cannot run in a unit test); the real judge path runs in test_editing_e2e.py.
"""

from __future__ import annotations

import math

import pytest
from PIL import Image

from tasks.base import Output
from tasks.gedit import GEditTask
from tasks.imgedit import ImgEditTask, uge_prompt
from tasks.judges.parsing import ParseError
from tasks.judges.vision import CachedVisionJudge
from tasks.scorers import gedit_rules, imgedit_rules
from tests.fixtures_editing import GEDIT_ROWS, gedit_row, use_imgedit_stand_ins, write_gedit, write_imgedit
from tests.tiny_scorers import ScriptedVisionJudge
from umm_harness.core.errors import ConfigError

# --- GEdit-Bench: the reply parser -------------------------------------------------------------------


@pytest.mark.parametrize("reply, scores", [
    ('{"score": [7, 8], "reasoning": "ok"}', [7, 8]),
    ('blah ||V^=^V|| {"score": [3, 9], "reasoning": "x"} ||V^=^V|| tail', [3, 9]),  # between the delimiters
    ('Sure!\n{\n"score" : [6, 2],\n"reasoning" : "multi\nline"\n}\nThanks', [6, 2]),  # newlines removed
    ('{"score": 5, "reasoning": "single"}', [5]),  # a lone score becomes a list
    ('{"score": [8.5, 9]}', [8.5, 9]),
    ("{score: 7}", [7]),  # the regex repair: key quoted, number wrapped in a list
    ("[6, 0]", [6, 0]),  # no JSON object: a two-number list
    ("scores [6,0] here", [6, 0]),
    (" 7 ", [7]),  # or the whole reply as one number 0-10
])
def test_gedit_parser_reads_what_the_official_parser_reads(reply, scores):
    assert gedit_rules.parse_scores(reply) == scores


@pytest.mark.parametrize("reply", [
    "11",  # a bare number outside 0-10
    "[6, 0, 1]",  # a bare list of three
    "{score: [4, 5], reasoning: fine}",  # the repair makes it worse
    "{'score': [4, 5]}",
    '{"result": [1, 2]}',
    "} oops {",
    "no json here",
    "||V^=^V|| not json ||V^=^V||",
    '{"score": [2, 3]} and {"other": 1}',  # first { to last }: not one object
    '{"score": ["7", "8"]}',  # the official code reads these, then fails on min/sqrt
    '{"score": []}',
])
def test_gedit_parser_refuses_what_the_official_parser_cannot_use(reply):
    with pytest.raises(ParseError):
        gedit_rules.parse_scores(reply)


def test_gedit_prompts_are_the_official_ones_assembled_as_viescore_does():
    sc = gedit_rules.sc_prompt("Make the square blue.")
    pq = gedit_rules.pq_prompt()
    assert sc.startswith("You are a professional digital artist.") and pq.startswith(
        "You are a professional digital artist.")
    assert "Editing instruction: Make the square blue.\n" in sc and "<instruction>" not in sc
    assert "Two images will be provided" in sc and "editing success" in sc
    assert "naturalness, artifacts" in pq and "Editing instruction" not in pq
    assert sc.count("\n\nRULES:") == 0 and "}\nRULES:" in sc  # pieces joined by one newline


# --- GEdit-Bench: images -----------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [((1024, 768), (608, 448)), ((512, 512), (512, 512)),
                                            ((768, 1024), (480, 576)), ((1000, 300), (896, 288))])
def test_gedit_model_input_size_is_the_official_examples(size, expected):
    assert gedit_rules.official_input_size(*size) == expected


def test_gedit_edit_is_resized_to_the_source_before_judging():
    edit = Image.new("RGB", (64, 48), "blue")
    assert gedit_rules.edit_for_judging(edit, Image.new("RGB", (40, 30))).size == (40, 30)


# --- GEdit-Bench: one sample through a scripted judge ----------------------------------------------


def _gedit_task(tmp_path, replies, **options):
    """The task on the fixture rows, judged by a stand-in whose reply depends on the prompt kind."""
    def reply(request):
        kind = "sc" if "Editing instruction" in request.text else "pq"
        script = replies[kind]
        return script.pop(0) if isinstance(script, list) else script

    judge = ScriptedVisionJudge(reply)
    task = GEditTask(write_gedit(tmp_path / "data"), judge=CachedVisionJudge(judge, tmp_path / "cache"), **options)
    return task, judge


def _edit(size=(64, 48), color="blue"):
    return [Output(k=0, seed=1, images=[Image.new("RGB", size, color)])]


def test_gedit_sample_is_min_of_each_part_and_sqrt_of_their_product(tmp_path):
    task, judge = _gedit_task(tmp_path, {"sc": '{"score": [7, 3], "reasoning": "r"}', "pq": "[8, 6]"},
                              judge_image_format="png", input_area=64 * 64)
    sample = task.samples()[0]
    assert sample.request.task == "editing" and sample.request.images[0].size == (64, 64)  # 80x60 → ~64² (area 4096)
    record = task.score(sample, _edit())
    assert (record["sc"], record["pq"]) == (3, 6) and record["o"] == pytest.approx(math.sqrt(18))
    sc_request, pq_request = judge.requests
    assert [im.size for im in sc_request.images] == [(40, 30), (40, 30)]  # source, edit resized to the source
    assert sc_request.images[0].getpixel((0, 0)) == (255, 0, 0) and sc_request.images[1].getpixel((0, 0)) == (0, 0, 255)
    assert len(pq_request.images) == 1 and pq_request.images[0].size == (40, 30)
    assert not record["sc_unparsable"] and not record["pq_unparsable"]


def test_gedit_default_input_area_is_512_squared_and_images_reach_the_judge_as_jpeg(tmp_path):
    task, judge = _gedit_task(tmp_path, {"sc": "[5, 5]", "pq": "[5, 5]"})
    sample = task.samples()[0]
    assert sample.request.images[0].size == (608, 448)  # 80x60 raw, at the official example's size
    edit = Image.effect_noise((64, 48), 60).convert("RGB")
    task.score(sample, [Output(k=0, seed=1, images=[edit])])
    seen, exact = judge.requests[0].images[1].tobytes(), edit.resize((40, 30)).tobytes()
    errors = [abs(a - b) for a, b in zip(seen, exact)]
    assert 0 < sum(errors) / len(errors) < 20  # JPEG-compressed: close to the resized edit, not equal


def test_gedit_unparsable_reply_is_retried_once_then_a_seeded_guess_and_counted(tmp_path):
    task, judge = _gedit_task(tmp_path, {"sc": ["no idea", "still no idea"], "pq": ["garbage", "[9, 8]"]})
    sample = task.samples()[0]
    record = task.score(sample, _edit())
    guess = gedit_rules.guessed_score(sample.id, "sc")
    assert record["sc"] == guess and record["sc_replies"] == ["no idea", "still no idea"] and record["sc_unparsable"]
    assert record["pq"] == 8 and not record["pq_unparsable"]  # the retry parsed: not counted
    assert len(judge.requests) == 4  # SC and PQ, then each again
    metrics = task.aggregate([sample], {sample.id: record})
    assert metrics["judge_unparsable_sc"] == 1 and metrics["judge_unparsable_pq"] == 0


def test_gedit_guess_is_deterministic_and_in_range():
    assert gedit_rules.guessed_score("color_alter/en/c1", "sc") == gedit_rules.guessed_score("color_alter/en/c1", "sc")
    assert gedit_rules.guessed_score("color_alter/en/c1", "sc") == 3  # pinned: a re-score gives the same number
    assert {gedit_rules.guessed_score(f"g/en/{k}", "pq") for k in range(200)} == set(range(11))


@pytest.mark.parametrize("mode, sc", [("zero", 0.0), ("drop", None)])
def test_gedit_unparsable_can_score_zero_or_be_dropped(tmp_path, mode, sc):
    task, _ = _gedit_task(tmp_path, {"sc": "no idea", "pq": "[9, 8]"}, unparsable=mode)
    sample = task.samples()[0]
    record = task.score(sample, _edit())
    assert record["sc"] == sc and record["sc_unparsable"]
    assert (record["o"] is None) == (mode == "drop")
    metrics = task.aggregate([sample], {sample.id: record})
    assert ("en/full/color_alter/o" in metrics) == (mode != "drop")


def test_gedit_missing_edit_is_left_out_and_counted(tmp_path):
    task, judge = _gedit_task(tmp_path, {"sc": "[5, 5]", "pq": "[5, 5]"})
    sample = task.samples()[0]
    record = task.score(sample, [Output(k=0, seed=1, images=[])])
    assert record["missing_edit"] and record["o"] is None and not judge.requests
    assert task.aggregate([sample], {sample.id: record}) == {"judge_unparsable_sc": 0.0, "judge_unparsable_pq": 0.0,
                                                            "missing_edits": 1.0, "unreadable_sources": 0.0}


# --- GEdit-Bench: aggregation ------------------------------------------------------------------------


def _row(group, o, language="en", intersection=True):
    return {"group": group, "language": language, "intersection": intersection, "sc": o, "pq": o, "o": o}


def test_gedit_headline_is_the_unweighted_mean_of_the_eleven_group_means():
    rows = [_row(g, 5.0) for g in gedit_rules.GROUPS[1:]]
    rows += [_row("background_change", 10.0), _row("background_change", 10.0), _row("background_change", 1.0, intersection=False)]
    metrics = gedit_rules.summarize(rows)
    assert metrics["en/full/background_change/o"] == pytest.approx(7.0)
    assert metrics["en/o"] == pytest.approx((7.0 + 10 * 5.0) / 11)  # macro, not (21+50)/13
    assert metrics["en/intersection/background_change/o"] == 10.0
    assert metrics["en/intersection/o"] == pytest.approx((10.0 + 50.0) / 11)
    assert metrics["en/full/groups"] == 11


def test_gedit_headline_needs_every_group_and_languages_stay_apart():
    rows = [_row(g, 6.0) for g in gedit_rules.GROUPS] + [_row("color_alter", 2.0, language="cn")]
    metrics = gedit_rules.summarize(rows)
    assert metrics["en/sc"] == 6.0 and metrics["cn/full/color_alter/sc"] == 2.0
    assert "cn/sc" not in metrics and metrics["cn/full/groups"] == 1  # the official mean would be NaN


def test_gedit_intersection_flag_is_a_boolean_not_a_truthy_string(tmp_path):
    rows = [gedit_row("color_alter", "c1", "en", "x", "red"), gedit_row("tone_transfer", "t2", "en", "y", "red",
                                                                       intersection=False)]
    write_gedit(tmp_path / "d", rows)
    assert [s.references["intersection"] for s in GEditTask(tmp_path / "d").samples()] == [True, False]
    from tasks.gedit import _flag

    assert _flag("False", "k") is False and _flag(0, "k") is False
    with pytest.raises(ConfigError, match="Intersection_exist"):
        _flag("maybe", "k")


def test_gedit_samples_follow_the_hub_rows(tmp_path):
    samples = GEditTask(write_gedit(tmp_path / "data"), input_area=None).samples()
    assert [s.id for s in samples] == ["color_alter/en/c1", "color_alter/cn/c1", "subject-remove/en/r1",
                                       "text_change/en/t1"]
    assert samples[1].request.prompt == GEDIT_ROWS[1]["instruction"] and samples[1].request.images[0].size == (80, 60)
    assert [s.id for s in GEditTask(tmp_path / "data", languages=["cn"]).samples()] == ["color_alter/cn/c1"]


def test_gedit_reads_an_arrow_copy_as_the_hub_stores_it(tmp_path):
    from_arrow = GEditTask(write_gedit(tmp_path / "arrow", arrow=True), input_area=None).samples()
    from_parquet = GEditTask(write_gedit(tmp_path / "parquet"), input_area=None).samples()
    assert [(s.id, s.references) for s in from_arrow] == [(s.id, s.references) for s in from_parquet]


# --- ImgEdit-Bench ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, scores", [
    ("Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3", [4, 3, 3]),
    ("Brief reasoning: x\nPrompt Compliance: 4.5\nVisual Naturalness: **4**\nPhysical: 4/5\nOther: 2", [2]),
    ("  Style Fidelity: 5  \nContent Preservation: 05\nA: b: 3\nRendering Quality:4", [5, 5]),
    ("Brief reasoning: 3\nScore: 2.", [3]),  # any '<name>: <digits>' line counts, '2.' does not
])
def test_imgedit_parser_counts_only_name_colon_digits_lines(reply, scores):
    assert imgedit_rules.parse_reply(reply) == scores


@pytest.mark.parametrize("reply", ["Score: 3 (Acceptable)", "Brief reasoning: good edit.", "", "Score:4"])
def test_imgedit_reply_without_a_score_line_is_unparsable(reply):
    with pytest.raises(ParseError):
        imgedit_rules.parse_reply(reply)


def test_imgedit_rounds_per_image_then_per_type():
    assert [imgedit_rules.image_score(s) for s in ([4, 3, 3], [1, 2, 2], [2])] == [3.33, 1.67, 2.0]
    metrics = imgedit_rules.summarize([("add", 3.33), ("add", 2.0), ("add", 1.67), ("add", 1.67), ("style", 5.0)])
    assert metrics["add"] == 2.17  # mean 2.1675 of the rounded image scores, rounded again
    assert "overall" not in metrics and metrics["types"] == 2


def test_imgedit_overall_is_the_unweighted_mean_of_nine_types_and_the_weighted_one_sits_beside_it():
    rows = [("add", 5.0)] * 3 + [(t, 1.0) for t in imgedit_rules.EDIT_TYPES if t != "add"] + [("uge", 4.0), ("uge", 3.33)]
    metrics = imgedit_rules.summarize(rows)
    assert metrics["overall"] == round((5.0 + 8 * 1.0) / 9, 2) == 1.44
    assert metrics["overall_weighted"] == round((15.0 + 8.0) / 11, 2) == 2.09
    assert metrics["uge"] == 3.67 and metrics["types"] == 9


def test_imgedit_uge_prompt_is_read_from_the_script_without_running_it(tmp_path):
    script = tmp_path / "UGE_bench.py"
    script.write_text('import os\nos.exit(1)\nprompt = """\nRate <edit_prompt>.\n"""\n')
    assert uge_prompt(script) == "\nRate <edit_prompt>.\n"
    script.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no `prompt`"):
        uge_prompt(script)


def test_imgedit_task_judges_source_then_edit_drops_unreadable_replies_and_counts_missing_edits(tmp_path, monkeypatch):
    data = write_imgedit(tmp_path / "data")
    use_imgedit_stand_ins(monkeypatch, data)
    replies = {"Rate this add edit": "Brief reasoning: ok\nFirst: 4\nSecond: 3", "Rate this style edit": "Score: 3 (Good)",
               "Rate the edit 1-5": "Brief reasoning: fine\nScore: 2"}
    judge = ScriptedVisionJudge(lambda r: next(v for k, v in replies.items() if k in r.text))
    task = ImgEditTask(data, judge=CachedVisionJudge(judge, tmp_path / "cache"))
    samples = task.samples()
    assert [(s.id, s.category) for s in samples] == [("basic/11", "add"), ("basic/12", "style"), ("basic/13", "remove"),
                                                    ("uge/1", "uge")]
    outputs = [_edit((24, 16)), _edit((24, 16)), [Output(k=0, seed=1)], _edit((24, 16))]
    records = {s.id: r for s, r in zip(samples, task.score_many(list(zip(samples, outputs))))}
    first = judge.requests[0]
    assert first.text == "Rate this add edit.\nFirst: 1-5\nSecond: 1-5\nInstruction: Add a hat to the cat.."
    assert first.images[0].size == (24, 16) and first.images[1].getpixel((0, 0)) == (0, 0, 255)
    assert records["basic/11"]["image_score"] == 3.5 and records["basic/12"]["judge_unparsable"]
    assert records["basic/13"]["missing_edit"] and records["uge/1"]["image_score"] == 2.0
    metrics = task.aggregate(samples, records)
    assert metrics == {"add": 3.5, "types": 1.0, "overall_weighted": 3.5, "uge": 2.0, "judge_unparsable": 1.0,
                       "missing_edits": 1.0}


def test_imgedit_missing_source_image_fails_its_sample_only(tmp_path, monkeypatch):
    data = write_imgedit(tmp_path / "data")
    use_imgedit_stand_ins(monkeypatch, data)
    (data / "Benchmark/singleturn/style/000000012.jpg").unlink()
    samples = ImgEditTask(data, subsets=["basic"]).samples()
    assert [s.error is not None for s in samples] == [False, True, False] and "missing" in samples[1].error


def test_imgedit_bad_data_dir_and_options_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no singleturn and hard image folder"):
        ImgEditTask(tmp_path).samples()
    with pytest.raises(ConfigError, match="unknown subset 'multiturn'"):
        ImgEditTask(tmp_path, subsets=["multiturn"])


def test_gedit_bad_data_dir_and_options_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no 'train' parquet or arrow shards of stepfun-ai/GEdit-Bench"):
        GEditTask(tmp_path).samples()
    with pytest.raises(ConfigError, match="unparsable must be guess, zero or drop"):
        GEditTask(tmp_path, unparsable="random")
