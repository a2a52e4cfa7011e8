"""Scoring rules of the generation benchmarks, on hand-made inputs whose official scores are worked
out by hand in the comments: GenEval through the detector glue, DPG-Bench's question graph and
tiles, WISE's WiScore, UEval's rubric replies, Uni-MMMU's rule checks, and the published-file
checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.benchmark_files import BenchmarkFile, fetch, git_blob_sha1
from tasks.geneval import fetch_object_names
from tasks.judges.parsing import ParseError
from tasks.scorers import dpg_rules, ueval_rules, wise_rules
from tasks.scorers.geneval_detector import (
    GenEvalDetector,
    clip_pixels,
    detector_inputs,
    instance_postprocess,
    masked_crop,
    masks_to_boxes,
    rescale_size,
)
from tests.conftest import SHARED_DATA
from tests.tiny_scorers import (
    ColorCLIPStandIn,
    ColorTokenizerStandIn,
    SceneSegmenterStandIn,
    paint,
    scene_image,
)
from umm_harness.core.errors import ConfigError

CLASSNAMES = fetch_object_names(SHARED_DATA / "geneval")
IDX = {name: i for i, name in enumerate(CLASSNAMES)}


def detector(objects) -> GenEvalDetector:
    """The real glue around a scripted segmenter and colour CLIP; 128 px images are not resized."""
    return GenEvalDetector(SceneSegmenterStandIn(objects), ColorCLIPStandIn(), ColorTokenizerStandIn(), CLASSNAMES,
                           scorer_id="stand-in", scale=(128, 128))


def meta(tag, include, exclude=None):
    m = {"tag": tag, "include": include, "prompt": "p"}
    if exclude:
        m["exclude"] = exclude
    return m


# --- GenEval: detector glue pieces --------------------------------------------------------------


def test_rescale_size_fits_1333_by_800_like_mmcv():
    assert rescale_size(512, 512) == (800, 800)
    assert rescale_size(1024, 768) == (1067, 800)  # factor 800/768: 1024·1.0417 = 1066.7 → 1067
    assert rescale_size(2000, 500) == (1333, 333)  # the long edge binds: 500·0.6665 = 333.25 → 333


def test_detector_inputs_normalise_then_zero_pad_to_32():
    image = Image.new("RGB", (100, 60), (255, 0, 0))
    pixels, resized = detector_inputs(image, scale=(100, 60))
    assert resized == (60, 100) and tuple(pixels.shape) == (1, 3, 64, 128)
    assert pixels[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)
    assert pixels[0, 2, 10, 10].item() == pytest.approx((0 - 103.53) / 57.375)
    assert pixels[0, :, 60:, :].abs().max().item() == 0.0 and pixels[0, :, :, 100:].abs().max().item() == 0.0


def test_masks_to_boxes_far_edges_exclusive_and_empty_mask_zero():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:5, 3:8] = True  # rows 2..4, cols 3..7
    assert masks_to_boxes(masks).tolist() == [[3, 2, 8, 5], [0, 0, 0, 0]]


def test_postprocess_boxes_scores_and_class_index():
    seg = SceneSegmenterStandIn([(IDX["dog"], 0.95, [(8, 8, 16, 12)])])
    out = seg(torch.zeros(1, 3, 128, 128))
    found = instance_postprocess(out.class_queries_logits[0], out.masks_queries_logits[0], (128, 128), (128, 128),
                                 (128, 128))
    top = found[0]
    assert CLASSNAMES[top.index] == "dog"
    assert top.box == (32.0, 32.0, 48.0, 64.0)  # grid cols 8..12, rows 8..16, 4 px per cell
    assert 0.949 < top.score < 0.95  # class prob × mean sigmoid inside the mask (edge pixels a little below 1)
    assert top.mask.sum() == 16 * 32 - 4  # bilinear upsampling leaves the 4 corner pixels just below 0
    assert len(found) == 100 and max(d.score for d in found[1:]) < 1e-6  # top 100 pairs, the rest empty


def test_masked_crop_greys_out_everything_outside_the_mask():
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:4] = True
    crop = masked_crop(image, (1.6, 1.6, 5.4, 4.4), mask)  # PIL rounds the box to (2, 2, 5, 4)
    assert crop.size == (3, 2)
    assert crop.getpixel((0, 0)) == (255, 0, 0) and crop.getpixel((2, 0)) == (153, 153, 153)


def test_clip_pixels_short_side_resize_and_centre_crop():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 5, 20))  # a white strip at the left: cropped away by the centre crop
    pixels = clip_pixels([image], 32)
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    assert pixels[0, 0].max().item() == pytest.approx((0 - 0.48145466) / 0.26862954, abs=1e-4)


def test_colour_is_read_inside_the_mask_not_the_box():
    # A car whose L-shaped mask is painted red; the rest of its box (36 of 64 cells) is blue. The
    # unmasked box would average to purple; through the mask the crop is red (+ grey).
    cells = [(8, 8, 16, 10), (14, 8, 16, 16)]
    image = scene_image(128, [("blue", (8, 8, 16, 16)), ("red", (8, 8, 16, 10)), ("red", (14, 8, 16, 16))])
    det = detector([(IDX["car"], 0.95, cells)])
    verdict, details = det.judge(image, meta("colors", [{"class": "car", "count": 1, "color": "red"}]))
    assert verdict.correct and details["colors"] == {"car": ["red"]}
    verdict, _ = det.judge(image, meta("colors", [{"class": "car", "count": 1, "color": "blue"}]))
    assert verdict.reason == "include[0] car: expected 1 blue, found 1 red"


# --- GenEval: the six tasks through the glue ------------------------------------------------------


def test_single_object_threshold_0_3():
    image = scene_image(128, [])
    m = meta("single_object", [{"class": "bench", "count": 1}])
    assert detector([(IDX["bench"], 0.95, [(0, 0, 8, 8)])]).judge(image, m)[0].correct
    verdict, _ = detector([(IDX["bench"], 0.25, [(0, 0, 8, 8)])]).judge(image, m)  # 0.25 ≤ 0.3: dropped
    assert not verdict.correct and verdict.reason == "include[0] bench: expected 1, found 0"


def test_two_object_needs_both_classes():
    image = scene_image(128, [])
    m = meta("two_object", [{"class": "bench", "count": 1}, {"class": "cow", "count": 1}])
    both = [(IDX["bench"], 0.9, [(0, 0, 8, 8)]), (IDX["cow"], 0.6, [(16, 16, 24, 24)])]
    assert detector(both).judge(image, m)[0].correct
    assert not detector(both[:1]).judge(image, m)[0].correct


def test_counting_uses_threshold_0_9_and_the_exclude_clause():
    image = scene_image(128, [])
    m = meta("counting", [{"class": "dog", "count": 3}], [{"class": "dog", "count": 4}])
    three = [(IDX["dog"], 0.95, [(0, 8 * i, 8, 8 * i + 6)]) for i in range(3)]
    weak_fourth = (IDX["dog"], 0.85, [(20, 0, 28, 8)])  # 0.85 < 0.9: not counted on a counting prompt
    strong_fourth = (IDX["dog"], 0.95, [(20, 0, 28, 8)])
    assert detector(three).judge(image, m)[0].correct
    assert detector([*three, weak_fourth]).judge(image, m)[0].correct
    verdict, _ = detector([*three, strong_fourth]).judge(image, m)
    assert verdict.reason == "exclude[0] dog: expected fewer than 4, found 4"
    verdict, _ = detector([*three[:2], weak_fourth]).judge(image, m)  # only 2 pass 0.9
    assert verdict.reason == "include[0] dog: expected 3, found 2"
    # The same weak dog would count at the ordinary 0.3 threshold:
    two = meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert detector([weak_fourth, (IDX["cat"], 0.95, [(0, 0, 4, 4)])]).judge(image, two)[0].correct


def test_colors_task():
    image = scene_image(128, [("green", (4, 4, 12, 12))])
    m = meta("colors", [{"class": "potted plant", "count": 1, "color": "green"}])
    assert detector([(IDX["potted plant"], 0.9, [(4, 4, 12, 12)])]).judge(image, m)[0].correct


def test_position_uses_box_centres_with_the_0_1_margin():
    image = scene_image(128, [])
    m = meta("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}])
    cat = (IDX["cat"], 0.9, [(0, 0, 8, 8)])  # pixels x 0..32
    far_dog = (IDX["dog"], 0.9, [(0, 10, 8, 18)])  # x 40..72: offset 40, margin 0.1·(32+32)=6.4 → dx 0.84
    near_dog = (IDX["dog"], 0.9, [(0, 2, 8, 10)])  # x 8..40: offset 8 → (8-6.4)/8 = 0.2 ≤ 0.5
    assert detector([cat, far_dog]).judge(image, m)[0].correct
    verdict, _ = detector([cat, near_dog]).judge(image, m)  # without the margin it would be "right of"
    assert verdict.reason == "include[1] dog: expected right of include[0], found no relation"


def test_color_attr_task():
    image = scene_image(128, [("red", (0, 0, 8, 8)), ("blue", (16, 16, 24, 24))])
    objects = [(IDX["car"], 0.9, [(0, 0, 8, 8)]), (IDX["bench"], 0.9, [(16, 16, 24, 24)])]
    good = meta("color_attr", [{"class": "car", "count": 1, "color": "red"},
                               {"class": "bench", "count": 1, "color": "blue"}])
    swapped = meta("color_attr", [{"class": "car", "count": 1, "color": "blue"},
                                  {"class": "bench", "count": 1, "color": "red"}])
    assert detector(objects).judge(image, good)[0].correct
    assert not detector(objects).judge(image, swapped)[0].correct


def test_detector_refuses_a_model_without_80_labels():
    with pytest.raises(ValueError, match="80"):
        GenEvalDetector(SceneSegmenterStandIn([], num_labels=3), ColorCLIPStandIn(), ColorTokenizerStandIn(),
                        CLASSNAMES, scorer_id="x")


# --- DPG-Bench ------------------------------------------------------------------------------------


def row(item, qid, dep, question, tup):
    return {"item_id": item, "text": f"prompt {item}", "keywords": "", "proposition_id": qid, "dependency": dep,
            "category_broad": "", "category_detailed": "", "tuple": tup, "question_natural_language": question}


ROWS = [
    row("A", 1, "0", "Is there a cat?", "entity - whole (cat)"),  # skipped: the first data row
    row("A", 2, "1", "Is the cat black?", "attribute - color (cat, black)"),  # parent 1 gone → A dropped
    row("B", 1, "0", "Is there a dog?", "entity - whole (dog)"),
    row("B", 2, "1", "Is the dog brown?", "attribute - color (dog, brown)"),
    row("B", 3, "1", "Is the dog running?", "entity - state (dog, run)"),
    row("B", 4, "2,3", "Is the brown dog running on grass?", "relation - spatial (dog, grass, on)"),
    row("B", 5, "0", "Is it sunny?", "global - (sunny)"),
    row("C", 1, "0", "Is there an apple?", "entity - whole (apple)"),
    row("C", 2, "1", "Is the apple red?", "attribute - color (apple, red)"),
]
# Per tile (TL, TR, BL, BR) the answers to B's questions 1..5 and C's 1..2.
B_ANSWERS = [
    ["yes", "yes", "yes", "yes", "yes"],  # all 1 → 1.0
    ["no", "yes", "yes", "yes", "yes"],  # q1 0 zeroes q2, q3 and (through q2) q4 → only q5: 0.2
    ["yes", "no", "yes", "yes", "no"],  # q4's parent q2 is 0 → 1, 0, 1, 0, 0: 0.4
    ["yes", "Yes", "yes", "yes", "yes."],  # only exact "yes": 1, 0, 1, 1→0 (parent q2), 0: 0.4
]
C_ANSWERS = [["yes", "yes"], ["yes", "no"], ["no", "yes"], ["yes", "yes"]]  # 1, 0.5, 0 (zeroed), 1


def answers(item, table):
    return [dict(zip(item.questions, tile)) for tile in table]


def test_dpg_first_row_skipped_and_missing_parent_drops_the_item():
    items = dpg_rules.build_questions(ROWS)
    assert list(items["A"].questions) == [2]
    with pytest.raises(dpg_rules.MissingParent):
        dpg_rules.score_item(items["A"], [{2: "yes"}])


def test_dpg_dependency_zeroing_and_tile_average():
    items = dpg_rules.build_questions(ROWS)
    b = dpg_rules.score_item(items["B"], answers(items["B"], B_ANSWERS))
    assert b.tile_scores == pytest.approx([1.0, 0.2, 0.4, 0.4])
    assert b.score == pytest.approx(0.5)
    c = dpg_rules.score_item(items["C"], answers(items["C"], C_ANSWERS))
    assert c.score == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_dpg_categories_use_the_last_tile_before_zeroing():
    items = dpg_rules.build_questions(ROWS)
    b = dpg_rules.score_item(items["B"], answers(items["B"], B_ANSWERS))
    # Last tile before zeroing: q4 is still 1 although its parent q2 ("Yes") is 0.
    assert b.category_scores == [("entity - whole", 1.0), ("attribute - color", 0.0), ("entity - state", 1.0),
                                 ("relation - spatial", 1.0), ("global -", 0.0)]


def test_dpg_summary_overall_and_categories_times_100():
    items = dpg_rules.build_questions(ROWS)
    scored = [dpg_rules.score_item(items["B"], answers(items["B"], B_ANSWERS)),
              dpg_rules.score_item(items["C"], answers(items["C"], C_ANSWERS))]
    metrics = dpg_rules.summarize(scored)
    assert metrics == pytest.approx({
        "overall": 56.25,  # mean(0.5, 0.625); item A dropped
        "entity": 100.0, "attribute": 50.0, "relation": 100.0, "global": 0.0,
        "entity/whole": 100.0, "entity/state": 100.0, "attribute/color": 50.0, "relation/spatial": 100.0,
    })


def test_dpg_averages_are_numpy_means_times_100():
    """Three items each scoring 1/3: the official report (`np.mean(scores) * 100`,
    TencentQQGYLab/ELLA@3c228f1 `compute_dpg_bench.py`, run on these scores) prints
    33.33333333333333, where `100 * sum / len` would give 33.333333333333336."""
    third = dpg_rules.ItemScore([1 / 3], 1 / 3, [], [("entity - whole", 1 / 3)])
    metrics = dpg_rules.summarize([third, third, third])
    assert metrics["overall"] == 33.33333333333333
    assert metrics["entity"] == 33.33333333333333 and metrics["entity/whole"] == 33.33333333333333


def test_dpg_no_scored_item_gives_a_nan_overall():
    """When every image fails the official script takes `np.mean([])`: NaN, not a missing metric."""
    assert math.isnan(dpg_rules.summarize([])["overall"])


def test_dpg_table_without_any_comma_in_dependency_is_refused(tmp_path):
    """pandas reads such a column as integers and the official `prepare_dpg_data` crashes
    (`'int' object has no attribute 'split'`); here it is a clear error, not a different score."""
    header = ",".join(dpg_rules.COLUMNS)
    table = tmp_path / "dpg_bench.csv"
    table.write_text(f"{header}\nA,t,k,1,0,b,d,entity - whole (a),Is there a?\n"
                     f"A,t,k,2,1,b,d,entity - whole (b),Is there b?\n")
    with pytest.raises(ConfigError, match="dependency"):
        dpg_rules.read_question_table(table)
    table.write_text(table.read_text() + "A,t,k,3,\"1,2\",b,d,relation - spatial (a),Is a on b?\n")
    assert [r["dependency"] for r in dpg_rules.read_question_table(table)] == ["0", "1", "1,2"]


def test_dpg_grouping_replaces_a_non_consecutive_repeat():
    rows = [row("X", 1, "0", "skip", "entity - whole (x)"), row("X", 1, "0", "first", "entity - whole (x)"),
            row("Y", 1, "0", "y", "entity - whole (y)"), row("X", 7, "0", "again", "entity - whole (x)")]
    items = dpg_rules.build_questions(rows)
    assert items["X"].questions == {7: "again"}


def test_dpg_tiles_round_trip_through_the_official_crops():
    colours = ["red", "green", "blue", "white"]
    grid, resolution = dpg_rules.tile_2x2([Image.new("RGB", (16, 16), paint(c)) for c in colours])
    assert grid.size == (32, 32) and resolution == 16
    tiles = dpg_rules.crop_tiles(grid, resolution)
    assert [t.getpixel((8, 8)) for t in tiles] == [paint(c) for c in colours]  # TL, TR, BL, BR
    grid, _ = dpg_rules.tile_2x2([Image.new("RGB", (16, 16), paint("red")), None, None, None])
    assert grid.getpixel((20, 20)) == (0, 0, 0)


# --- WISE -----------------------------------------------------------------------------------------


def test_wiscore_weights():
    assert wise_rules.wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wise_rules.wiscore(2, 1, 0) == pytest.approx((1.4 + 0.2) / 2)
    assert wise_rules.wiscore(0, 0, 1) == pytest.approx(0.05)


def test_wise_categories_by_prompt_id():
    assert [wise_rules.category_of(i) for i in (1, 400, 401, 567, 568, 700, 701, 801, 1000, 1001)] == [
        "cultural", "cultural", "time", "time", "space", "space", "biology", "physics", "chemistry", None]
    verified = wise_rules.VERIFIED
    assert [verified.category_of(i) for i in (400, 401, 520, 521, 640, 641, 760, 761, 880, 881, 1000)] == [
        "cultural", "time", "time", "space", "space", "biology", "biology", "physics", "physics", "chemistry",
        "chemistry"]


def test_wise_overall_is_category_weighted_and_duplicates_count_twice():
    scored = [(1, 1.0), (401, 0.5), (568, 0.0), (701, 0.8), (801, 0.35), (901, 0.05)]
    metrics = wise_rules.summarize(scored)
    # 0.4·1 + 0.167·0.5 + 0.133·0 + 0.1·0.8 + 0.1·0.35 + 0.1·0.05
    assert metrics["wiscore"] == pytest.approx(0.6035)
    metrics = wise_rules.summarize([*scored, (2, 0.0), (2, 0.0)])  # prompt 2 scored twice
    assert metrics["cultural"] == pytest.approx(1 / 3)
    assert "wiscore" not in wise_rules.summarize(scored[:5])  # chemistry missing: no overall


def full_wise_run(score_of) -> list[tuple[int, float]]:
    return [(i, score_of(i)) for i in range(1, 1001)]


def test_wise_both_protocols_match_the_official_calculators_on_a_full_run():
    """All 1000 ids; the official `WISE_legacy/Calculate.py` and `calculate_verified.py`
    (PKU-YuanGroup/WISE@eb51174), run on the same scores as JSONL, print Overall 0.70 for both
    and categories 1.00 / 0.50. Legacy: cultural scored (2, 2, 2) except prompt 1, whose
    consistency 5 is kept and averaged in; the rest (1, 1, 1). Verified: cultural 1, the rest
    1 on even ids only."""
    legacy = wise_rules.summarize(full_wise_run(
        lambda i: wiscore(5 if i == 1 else 2, 2, 2) if i <= 400 else wiscore(1, 1, 1)))
    assert legacy["cultural"] == pytest.approx((2.05 + 399) / 400) and legacy["time"] == 0.4999999999999999
    assert f"{legacy['wiscore']:.2f}" == "0.70" and f"{legacy['cultural']:.2f}" == "1.00"
    verified = wise_rules.summarize(full_wise_run(lambda i: 1.0 if i <= 400 or i % 2 == 0 else 0.0),
                                    wise_rules.VERIFIED)
    assert verified["cultural"] == 1.0 and verified["physics"] == 0.5
    assert verified["wiscore"] == 0.4 * 1.0 + 0.12 * 0.5 + 0.12 * 0.5 + 0.12 * 0.5 + 0.12 * 0.5 + 0.12 * 0.5
    assert f"{verified['wiscore']:.2f}" == "0.70"


def wiscore(c: float, r: float, a: float) -> float:
    return wise_rules.wiscore(c, r, a)


def test_wise_a_missing_prompt_id_refuses_every_score():
    """The official calculator aborts ("Missing IDs: [3, 702]") when judged results lack ids."""
    scored = [(i, None if i in (3, 702) else 1.0) for i in range(1, 1001)]
    with pytest.raises(wise_rules.IncompleteResults, match=r"prompt id\(s\) 3, 702;") as refused:
        wise_rules.summarize(scored)
    assert refused.value.missing == [3, 702]


@pytest.mark.parametrize("reply, expected", [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
    ("**Consistency**: 1\n**Realism**: 2\n**Aesthetic Quality**: 2", (1, 2, 2)),
    ("consistency 0 realism 1 aesthetic quality: 1", (0, 1, 1)),  # the colon is optional
    ("Consistency: 10\nRealism: 1\nAesthetic Quality: 1", (1, 1, 1)),  # one digit is read
    ("Consistency: 5\nRealism: 1\nAesthetic Quality: 1", (5, 1, 1)),  # out of range: kept
    ("Consistency: 0\nRealism: 0\nAesthetic Quality: 0\nOn reflection, Consistency: 2", (2, 0, 0)),
    ("2\n1\n0", (2, 1, 0)),  # bare lines, the fallback
])
def test_wise_parser_reads_single_digits(reply, expected):
    """Each reading is what the official `extract_scores` of `WISE_legacy/gpt_eval.py`
    (PKU-YuanGroup/WISE@eb51174) returns for the same reply."""
    scores = wise_rules.parse_scores(reply)
    assert (scores["consistency"], scores["realism"], scores["aesthetic_quality"]) == expected


@pytest.mark.parametrize("reply", [
    "Consistency: 2\nAesthetic Quality: 1", "I cannot see the image.", "2\n1",
    "Consistency：2\nRealism: 1\nAesthetic Quality: 0",  # a full-width colon is no score line
    "consistency：2\nrealism：1\naesthetic quality：0",
])
def test_wise_parser_is_strict(reply):
    with pytest.raises(ParseError):
        wise_rules.parse_scores(reply)


@pytest.mark.parametrize("reply, score", [
    ("Score: 1", 1.0), ("**Score**: 0", 0.0), ("score 1", 1.0), ("1", 1.0), ("Thinking done.\n 0 \n", 0.0),
    ("Score：1", None), ("0\n1", None), ("Score: 2", None), ("The score is 1", None),
])
def test_wise_verified_parser(reply, score):
    """As `extract_scores` of `vllm_eval.py` (PKU-YuanGroup/WISE@eb51174) reads the same replies."""
    if score is None:
        with pytest.raises(ParseError):
            wise_rules.parse_verdict(reply)
    else:
        assert wise_rules.parse_verdict(reply) == {"score": score}


# --- UEval ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, met", [
    ('{"criteria_met": true}', True),
    ('{"criteria_met": false, "explanation": "no"}', False),
    ('Here: ```json\n{"criteria_met": "not sure"}\n```', False),
    ('{"explanation": "fine", "criteria_met": "Yes"}', True),
    ('The verdict is {"criteria_met": "n"} as shown.', False),
])
def test_ueval_reads_criteria_met(reply, met):
    assert ueval_rules.parse_criteria_met(reply) is met


@pytest.mark.parametrize("reply", ["true", '{"explanation": "x"}', '{"criteria_met": "maybe"}', "{broken"])
def test_ueval_parser_is_strict(reply):
    with pytest.raises(ParseError):
        ueval_rules.parse_criteria_met(reply)


def test_ueval_question_type_quirk():
    assert ueval_rules.official_question_type({"task_type": "space", "question_type": "closed"}) == "open"
    assert ueval_rules.official_question_type({"task": "space"}) == "closed"
    assert ueval_rules.dataset_question_type({"task_type": "space", "question_type": "closed"}) == "closed"
    assert ueval_rules.dataset_question_type({"task_type": "paper"}) == "closed"
    assert ueval_rules.question_score(0.5, None) == 0.5 and ueval_rules.question_score(1.0, 0.0) == 0.5


# --- published files ------------------------------------------------------------------------------


def test_git_blob_hash_matches_git():
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_fetch_reads_both_data_dir_layouts_and_refuses_a_wrong_copy(tmp_path):
    data = b"a,b\n1,2\n"
    file = BenchmarkFile(benchmark="bench", path="sub/table.csv", url="https://example.invalid/table.csv",
                         blob_sha1=git_blob_sha1(data))
    (tmp_path / "one" / "sub").mkdir(parents=True)
    (tmp_path / "one" / "sub" / "table.csv").write_bytes(data)
    (tmp_path / "suite" / "bench" / "sub").mkdir(parents=True)
    (tmp_path / "suite" / "bench" / "sub" / "table.csv").write_bytes(data)
    assert fetch(file, tmp_path / "one").read_bytes() == data
    assert fetch(file, tmp_path / "suite").read_bytes() == data
    (tmp_path / "one" / "sub" / "table.csv").write_bytes(b"a,b\n1,3\n")
    with pytest.raises(ConfigError, match=f"expected {file.blob_sha1}"):
        fetch(file, tmp_path / "one")
    with pytest.raises(ConfigError, match="--data-dir .*has no sub/table.csv"):
        fetch(file, tmp_path / "empty")


def test_fetch_offline_names_data_dir(tmp_path, monkeypatch):
    import requests

    monkeypatch.setenv("UMM_HOME", str(tmp_path / "home"))

    def offline(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    file = BenchmarkFile(benchmark="bench", path="t.csv", url="https://example.invalid/t.csv", blob_sha1=None)
    with pytest.raises(ConfigError, match="pass --data-dir <folder> holding t.csv"):
        fetch(file)
    cached = tmp_path / "home" / "benchmarks" / "bench" / "t.csv"
    cached.parent.mkdir(parents=True)
    cached.write_text("x")
    assert fetch(file) == cached  # the cache answers without the network
