"""GenEval's clause rules, on hand-made detections whose verdicts are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.scorers.geneval_rules import (
    Detection,
    Settings,
    box_iou,
    evaluate,
    judge,
    relative_position,
    select_detections,
    summarize,
)


def det(label: str, box: tuple[float, float, float, float] = (0, 0, 20, 20), score: float = 1.0,
        color: str | None = None) -> Detection:
    return Detection(label=label, box=box, score=score, color=color)


def at(x: float, y: float, side: float = 20) -> tuple[float, float, float, float]:
    """A square box of `side` centred on (x, y)."""
    return (x - side / 2, y - side / 2, x + side / 2, y + side / 2)


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
TWO = {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
       "prompt": "a photo of a circle and a square"}
COUNTING = {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
            "exclude": [{"class": "triangle", "count": 4}], "prompt": "a photo of three triangles"}
COLORS = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}],
          "prompt": "a photo of a blue square"}
POSITION = {"tag": "position",
            "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}],
            "prompt": "a photo of a square left of a circle"}
COLOR_ATTR = {"tag": "color_attr",
              "include": [{"class": "circle", "count": 1, "color": "red"},
                          {"class": "square", "count": 1, "color": "blue"}],
              "prompt": "a photo of a red circle and a blue square"}


# --- one case per tag --------------------------------------------------------------------------

def test_single_object_needs_one_detection_of_the_class():
    assert judge(SINGLE, [det("circle")]).correct
    verdict = judge(SINGLE, [det("square")])
    assert not verdict.correct
    assert verdict.reason == "include[0] circle: expected 1, found 0"


def test_single_object_ignores_extra_objects_of_other_classes():
    assert judge(SINGLE, [det("circle"), det("square"), det("triangle")]).correct


def test_two_object_needs_both_classes():
    assert judge(TWO, [det("square", at(10, 10)), det("circle", at(60, 10))]).correct
    verdict = judge(TWO, [det("circle")])
    assert verdict.reason == "include[1] square: expected 1, found 0"


def test_counting_is_exact_through_the_exclude_clause():
    three = [det("triangle", at(30 * i, 10), 0.95) for i in range(3)]
    assert judge(COUNTING, three).correct
    too_few = judge(COUNTING, three[:2])
    assert too_few.reason == "include[0] triangle: expected 3, found 2"
    too_many = judge(COUNTING, [*three, det("triangle", at(100, 10), 0.95)])
    assert too_many.reason == "exclude[0] triangle: expected fewer than 4, found 4"


def test_colors_judges_the_colour_of_the_detected_object():
    assert judge(COLORS, [det("square", color="blue")]).correct
    verdict = judge(COLORS, [det("square", color="red")])
    assert verdict.reason == "include[0] square: expected 1 blue, found 1 red"


def test_colour_is_checked_only_on_the_best_count_detections():
    # The blue square scores lower than the red one, so the single judged square is red.
    verdict = judge(COLORS, [det("square", score=0.6, color="blue"), det("square", score=0.8, color="red")])
    assert not verdict.correct
    assert judge(COLORS, [det("square", score=0.8, color="blue"), det("square", score=0.6, color="red")]).correct


def test_position_left_of():
    # square centre (10, 10), circle centre (70, 10): offset (-60, 0), margin 0.1 × (20 + 20) = 4,
    # reduced (-56, 0) / 60 → dx = -0.93 < -0.5: left of.
    assert judge(POSITION, [det("circle", at(70, 10)), det("square", at(10, 10))]).correct
    verdict = judge(POSITION, [det("circle", at(10, 10)), det("square", at(70, 10))])
    assert verdict.reason == "include[1] square: expected left of include[0], found right of"


def test_position_fails_without_its_target():
    verdict = judge(POSITION, [det("square", at(10, 10))])
    assert verdict.reason == (
        "include[0] circle: expected 1, found 0; include[1] square: no left of target, include[0] failed"
    )


def test_color_attr_binds_each_colour_to_its_object():
    assert judge(COLOR_ATTR, [det("circle", at(10, 10), color="red"), det("square", at(60, 10), color="blue")]).correct
    swapped = judge(COLOR_ATTR, [det("circle", at(10, 10), color="blue"), det("square", at(60, 10), color="red")])
    assert swapped.reason == (
        "include[0] circle: expected 1 red, found 1 blue; include[1] square: expected 1 blue, found 1 red"
    )


def test_a_custom_colour_classifier_replaces_detection_colours():
    seen = []

    def all_blue(classname, found):
        seen.append((classname, len(found)))
        return ["blue"] * len(found)

    assert judge(COLORS, [det("square", color="red")], color_of=all_blue).correct
    assert seen == [("square", 1)]


# --- score thresholds --------------------------------------------------------------------------

def test_threshold_is_0_3_and_strict():
    assert not judge(SINGLE, [det("circle", score=0.3)]).correct
    assert judge(SINGLE, [det("circle", score=0.31)]).correct


def test_threshold_is_compared_in_float32():
    # 0.30000001 > 0.3 in float64, but both round to the same float32, so GenEval drops it.
    assert 0.30000001 > 0.3
    assert not judge(SINGLE, [det("circle", score=0.30000001)]).correct
    assert not judge(SINGLE, [det("circle", score=float(np.float32(0.3)))]).correct
    assert judge(SINGLE, [det("circle", score=0.3000001)]).correct  # the next float32 up


def test_counting_uses_threshold_0_9():
    three = [det("triangle", at(30 * i, 10), 0.95) for i in range(3)]
    weak = [*three[:2], det("triangle", at(60, 10), 0.85)]
    assert judge(COUNTING, weak).reason == "include[0] triangle: expected 3, found 2"
    assert not judge(COUNTING, [*three[:2], det("triangle", at(60, 10), 0.9)]).correct
    # A fourth triangle below 0.9 is not seen, so it does not trip the exclude clause...
    assert judge(COUNTING, [*three, det("triangle", at(100, 10), 0.85)]).correct
    # ...while the same 0.85 detection counts under every other tag's 0.3.
    assert judge(SINGLE | {"include": [{"class": "triangle", "count": 1}]}, [det("triangle", score=0.85)]).correct


def test_selection_sorts_by_score_caps_at_16_and_keeps_duplicates():
    dets = [det("circle", at(10, 10), score=0.4 + 0.01 * i) for i in range(20)]
    kept = select_detections(dets, "single_object")["circle"]
    assert [d.score for d in kept] == sorted((d.score for d in dets), reverse=True)[:16]
    assert len(select_detections([det("circle"), det("circle")], "single_object")["circle"]) == 2


def test_max_overlap_suppresses_duplicates_when_asked():
    dets = [det("circle", (0, 0, 20, 20), 0.9), det("circle", (1, 0, 21, 20), 0.8), det("circle", (50, 0, 70, 20), 0.7)]
    kept = select_detections(dets, "single_object", Settings(max_overlap=0.5))["circle"]
    assert [d.score for d in kept] == [0.9, 0.7]


def test_overlap_is_the_official_iou_with_inclusive_pixel_areas():
    """Official `compute_iou` (djghosh13/geneval@af4902f), run on these boxes: 0.33333334
    (10×10-pixel boxes sharing 5×10 pixels), so at max_overlap 0.3 the second is suppressed;
    without the "+1" the IoU would be 36/126 = 0.29 and both kept."""
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    dets = [det("circle", (0, 0, 9, 9), 0.9), det("circle", (5, 0, 14, 9), 0.8)]
    assert len(select_detections(dets, "single_object", Settings(max_overlap=0.3))["circle"]) == 1


def test_max_objects_is_an_option():
    dets = [det("circle", at(10, 10), score=0.5 + 0.01 * i) for i in range(5)]
    assert len(select_detections(dets, "single_object", Settings(max_objects=2))["circle"]) == 2
    assert Settings(max_objects=2).changed() == ";max_objects=2" and Settings().changed() == ""


def test_classes_without_kept_detections_are_absent():
    assert select_detections([det("circle", score=0.1)], "single_object") == {}


# --- relative position -------------------------------------------------------------------------

def test_relative_position_margin_just_outside_and_just_inside():
    # Two 20 px boxes side by side: margin = 0.1 × (20 + 20) = 4 px. With a horizontal offset d,
    # dx = (d - 4) / d, which must be beyond 0.5: d must exceed 8.
    assert relative_position(at(0, 0), at(8.1, 0)) == {"left of"}  # 4.1 / 8.1 = 0.506
    assert relative_position(at(0, 0), at(8.0, 0)) == set()  # 4 / 8 = 0.5 exactly: no relation
    # Without the margin the same pair would already be "left of".
    assert relative_position(at(0, 0), at(8.0, 0), margin=0) == {"left of"}


def test_relative_position_is_computed_in_float32():
    """These float32 boxes sit a hair beyond the margin in float32 arithmetic; the official
    `relative_position` (commit as above), given them as float32 detector rows, answers
    {"left of"}; the same sums in float64 would find no relation."""
    a = (0.0, 0.0, 172.19383239746094, 172.19383239746094)
    b = (68.87753295898438, 0.0, 241.0713653564453, 172.19383239746094)
    assert relative_position(a, b) == {"left of"}


def test_position_threshold_is_an_option():
    pair = [det("circle", at(10, 10)), det("square", at(0, 10))]  # the square 10 px left of the circle
    assert judge(POSITION, pair).correct  # (10 - 0.1 × 40) / 10 = 0.6 > 0.5
    assert not judge(POSITION, pair, settings=Settings(position_threshold=0.2)).correct  # (10 - 8) / 10 = 0.2


def test_relative_position_within_the_margin_has_no_relation():
    # Offset (3.9, 3.9) is inside the 4 px margin on both axes: reduced offset is 0.
    assert relative_position(at(0, 0), at(3.9, 3.9)) == set()


def test_relative_position_diagonal_gives_two_relations():
    # Offset (-30, -30): reduced (-26, -26) / 42.43 = -0.61 on both axes.
    assert relative_position(at(0, 0), at(30, 30)) == {"left of", "above"}
    assert relative_position(at(30, 30), at(0, 0)) == {"right of", "below"}


def test_position_reason_names_a_missing_relation():
    verdict = judge(POSITION, [det("circle", at(10, 10)), det("square", at(12, 10))])
    assert verdict.reason == "include[1] square: expected left of include[0], found no relation"


def test_evaluate_takes_preselected_objects():
    objects = {"circle": [det("circle", at(70, 10))], "square": [det("square", at(10, 10))]}
    verdict = evaluate(POSITION, objects)
    assert verdict.correct and verdict.reason == ""


# --- summary -----------------------------------------------------------------------------------

def test_overall_is_the_unweighted_mean_of_tag_accuracies():
    results = [("single_object", True), ("single_object", True),
               ("counting", True), ("counting", False), ("counting", False), ("counting", False)]
    summary = summarize(results)
    assert summary == {"counting": 0.25, "single_object": 1.0, "overall": pytest.approx(0.625)}
    assert summarize([]) == {}


def test_overall_averages_tags_in_order_of_first_appearance():
    """`summary_scores.py` (commit as above) groups with `sort=False`; its `np.mean` over these
    tag accuracies, in this order, is 0.43749999999999994 (sorted order would give 0.4375)."""
    flags = {"counting": [True, False, False, False], "single_object": [True, False],
             "colors": [True, True, False], "position": [True, False, False]}
    results = [(tag, flag) for tag, values in flags.items() for flag in values]
    assert summarize(results)["overall"] == 0.43749999999999994
