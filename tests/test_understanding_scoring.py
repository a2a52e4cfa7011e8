"""The official scoring rules of MME, MMMU, MMBench and MathVista, on cases worked out by hand.

Each test reads as a line of the benchmark's scoring specification; the quirks of the official
code (BENCHMARKS.md) are pinned here with the input that shows them.
"""

from __future__ import annotations

import pytest

from tasks.base import Output, Sample
from tasks.mathvista import MathVistaTask
from tasks.mmbench import MMBenchTask
from tasks.mme import MMETask
from tasks.mmmu import MMMUTask
from tasks.scorers import mathvista_rules, mmbench_rules, mme_rules, mmmu_rules


def reply(text: str | None) -> list[Output]:
    return [Output(k=0, seed=0, text=text)]


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(("text", "read"), [
    ("Yes", "yes"), ("Yes, there is.", "yes"), ("no.", "no"), ("  No", "no"),
    ("eyes", "yes"),  # quirk: "yes" anywhere in the first 4 characters
    ("not sure", "no"), ("none", "no"), ("know", "no"),  # quirk: "no" anywhere in them
    ("I don't know", "other"), ("The answer is yes", "other"), ("", "other"),
    ("  yes", "other"), (" yes", "yes"), ("   no", "other"),  # never stripped: spaces use up the 4
    ("no", "no"),
])
def test_mme_reads_yes_no_from_the_first_four_characters(text, read):
    """Official `parse_pred_ans` on the line field `reply.lower() + "\n"` (eval_tool.zip of
    BradyFU/Awesome-Multimodal-Large-Language-Models@dd29509, branch Evaluation): run on
    answer-file lines holding these replies it reads exactly these labels."""
    assert mme_rules.read_yes_no(text) == read


@pytest.mark.parametrize(("text", "read"), [("Yes,", "yes"), ("no.", "no"), ("eyes", "other"), ("not sure", "other")])
def test_mme_corrected_reading_takes_the_first_word(text, read):
    assert mme_rules.read_yes_no(text, corrected=True) == read


def mme_samples(layout: dict[str, list[str]]) -> list[Sample]:
    """Samples of each subtask, one per listed image name, in order."""
    return [
        Sample(id=f"{subtask}/{i}", category=subtask, references={"answer": "yes", "image": image})
        for subtask, images in layout.items() for i, image in enumerate(images)
    ]


def test_mme_all_right_is_2000_perception_and_800_cognition():
    subtasks = mme_rules.PERCEPTION + mme_rules.COGNITION
    samples = mme_samples({s: ["a", "a", "b", "b"] for s in subtasks})
    records = {s.id: {"correct": True} for s in samples}
    metrics = MMETask().aggregate(samples, records)
    assert metrics["perception"] == 2000
    assert metrics["cognition"] == 800
    assert metrics["OCR"] == 200 and metrics["OCR/acc"] == 1 and metrics["OCR/acc_plus"] == 1


def test_mme_subtask_score_is_acc_plus_acc_plus_times_100():
    samples = mme_samples({"existence": ["a", "a", "b", "b"]})
    right = [True, True, False, True]  # image a both right, image b one right
    records = {s.id: {"correct": r} for s, r in zip(samples, right)}
    metrics = MMETask().aggregate(samples, records)
    assert metrics["existence/acc"] == 0.75
    assert metrics["existence/acc_plus"] == 0.5
    assert metrics["existence"] == 125
    assert metrics["perception"] == 125 and "cognition" not in metrics


def test_mme_subtask_score_adds_the_two_products():
    """3 images, 4 of 6 right, 1 image both right: the official `calculation.py` (commit as above)
    prints 99.99999999999999 for this subtask — `acc*100 + acc_plus*100` — where
    `(acc + acc_plus) * 100` would give 100.0."""
    samples = mme_samples({"existence": ["a", "a", "b", "b", "c", "c"],
                           "count": ["a", "a", "b", "b", "c", "c"]})
    right = [True, True, True, False, True, False] * 2
    metrics = MMETask().aggregate(samples, {s.id: {"correct": r} for s, r in zip(samples, right)})
    assert metrics["existence"] == 99.99999999999999
    assert metrics["perception"] == 99.99999999999999 + 99.99999999999999


def test_mme_acc_plus_pairs_consecutive_lines_not_images():
    samples = mme_samples({"count": ["a", "b", "a", "b"]})  # an image's questions are not adjacent
    records = {s.id: {"correct": r} for s, r in zip(samples, [True, False, True, False])}
    assert MMETask().aggregate(samples, records)["count/acc_plus"] == 0.0  # pairs (T,F), (T,F)
    assert MMETask(corrected=True).aggregate(samples, records)["count/acc_plus"] == 0.5  # image a: (T,T)


def test_mme_record_holds_reply_extraction_reference_and_score():
    sample = Sample(id="x", category="color", references={"answer": "no", "image": "x.png"})
    assert MMETask().score(sample, reply("No, it is not.")) == {
        "reply": "No, it is not.", "extracted": "no", "reference": "no", "correct": True, "score": 1.0}


# ---------------------------------------------------------------- MMMU

FOUR = ["a red fox", "a blue whale", "a green frog", "a grey wolf"]


@pytest.mark.parametrize(("text", "letter"), [
    ("(B)", "B"),
    ("The answer is C.", "C"),  # trailing "." stripped, then " C " is a word
    ("B", "B"),
    ("I believe the picture shows a blue whale swimming", "B"),  # > 5 words: option text
    ("(A) looks plausible but (C) is right", "C"),  # several hits: the last one wins
    ("A or maybe D", "D"),
    ("a blue whale", None),  # option text only counts in replies of more than 5 words
    ("no idea at all", None),
])
def test_mmmu_multiple_choice_extraction(text, letter):
    assert mmmu_rules.parse_multi_choice(text, FOUR) == letter


def test_mmmu_with_nine_options_the_word_i_is_option_i():
    nine = [f"option {n}" for n in range(9)]
    assert mmmu_rules.parse_multi_choice("I am not sure", nine) == "I"
    assert mmmu_rules.parse_multi_choice("I am not sure", FOUR) is None


def mmmu_mc(sample_id: str, answer: list[str] | None = None, options: list[str] = FOUR) -> Sample:
    return Sample(id=sample_id, category="Art", references={
        "question_type": "multiple-choice", "options": options, "answer": answer or ["B"]})


def test_mmmu_multiple_choice_gold_list_accepts_any_member():
    """Official `eval_multi_choice` (MMMU-Benchmark/MMMU@bb0b95a): a list gold is right when the
    prediction equals any member; run on these inputs it gives True, True, False."""
    task = MMMUTask()
    gold = ["A", "C"]
    assert task.score(mmmu_mc("q1", gold), reply("(A)"))["correct"]
    assert task.score(mmmu_mc("q2", gold), reply("(C)"))["correct"]
    assert not task.score(mmmu_mc("q3", gold), reply("(B)"))["correct"]


def test_mmmu_fallback_is_one_random_42_drawn_in_sample_order():
    task = MMMUTask()
    samples = [mmmu_mc(f"q{i}") for i in range(3)]
    # Scored in reverse order: the picks still follow sample order.
    records = {s.id: task.score(s, reply("I cannot tell.")) for s in reversed(samples)}
    assert all(r["fallback"] and r["extracted"] is None for r in records.values())
    task.aggregate(samples, records)
    # random.Random(42).choice("ABCD") three times gives A, A, C.
    assert [records[s.id]["extracted"] for s in samples] == ["A", "A", "C"]
    assert [records[s.id]["correct"] for s in samples] == [False, False, False]


def test_mmmu_a_fallback_pick_depends_on_the_fallbacks_before_it():
    task = MMMUTask()
    samples = [mmmu_mc(f"q{i}") for i in range(3)]
    replies = ["(B)", "I cannot tell.", "I cannot tell."]  # the first now parses
    records = {s.id: task.score(s, reply(t)) for s, t in zip(samples, replies)}
    metrics = task.aggregate(samples, records)
    assert [records[s.id]["extracted"] for s in samples] == ["B", "A", "A"]  # the third was C above
    assert metrics["overall"] == pytest.approx(1 / 3)


def test_mmmu_corrected_fallback_depends_on_the_sample_only():
    task = MMMUTask(corrected=True)
    alone = task.score(mmmu_mc("q9"), reply("I cannot tell."))
    task.score(mmmu_mc("q1"), reply("I cannot tell."))
    again = task.score(mmmu_mc("q9"), reply("I cannot tell."))
    assert alone["extracted"] in "ABCD" and alone == again


def test_mmmu_open_answers_normalise_numbers_and_strings():
    assert mmmu_rules.parse_open("The answer is 3.429") == [3.43]
    assert mmmu_rules.open_correct(["24/7", "3.429"], mmmu_rules.parse_open("So the result is 3.43"))
    assert mmmu_rules.open_correct(["1,000"], mmmu_rules.parse_open("It costs 1000 dollars"))
    assert mmmu_rules.open_correct(["Tampa"], mmmu_rules.parse_open("The city is Tampa, Florida"))
    assert not mmmu_rules.open_correct(["embryonic"], mmmu_rules.parse_open("fetal"))


def test_mmmu_open_sentence_split_never_splits():
    text = "The mass is 5 kg. So the answer is 7"
    # Lower-cased before looking for ". <Capital>": one sentence, whose shortest tail is "7".
    assert mmmu_rules.parse_open(text) == [7.0]
    assert not mmmu_rules.open_correct(["5"], mmmu_rules.parse_open(text))
    assert mmmu_rules.open_correct(["5"], mmmu_rules.parse_open(text, corrected=True))


def test_mmmu_inf_nan_and_underscores_are_numbers():
    assert mmmu_rules.normalize("1_000") == [1000.0]
    assert mmmu_rules.normalize("inf") == [float("inf")]
    assert mmmu_rules.open_correct(["inf"], mmmu_rules.parse_open("inf"))
    assert not mmmu_rules.open_correct(["nan"], mmmu_rules.parse_open("nan"))  # NaN equals nothing
    assert mmmu_rules.normalize("1_000", corrected=True) == ["1_000"]


def test_mmmu_metrics_per_subject_discipline_and_overall():
    layout = {"Art": [True, False], "Music": [True, True], "Math": [False, False, False, True]}
    samples, records = [], {}
    for subject, flags in layout.items():
        for i, flag in enumerate(flags):
            sample = Sample(id=f"{subject}{i}", category=subject, references={
                "question_type": "open", "options": [], "answer": ["1"]})
            samples.append(sample)
            records[sample.id] = {"correct": flag, "fallback": False}
    metrics = MMMUTask().aggregate(samples, records)
    assert metrics["subject/Art"] == 0.5 and metrics["subject/Music"] == 1.0
    assert metrics["discipline/art_and_design"] == 0.75  # micro: 3 of 4
    assert metrics["discipline/science"] == 0.25
    assert metrics["overall"] == 0.5  # 4 of 8
    assert "discipline/business" not in metrics


# ---------------------------------------------------------------- MMBench

PETS = {"A": "cat", "B": "dog", "C": "bird"}


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"),
    ("The answer is B.", "B"),
    ("(C) bird", "C"),
    ("A dog.", "A"),  # quirk: the article "A" is the only letter token, near the end
    ("B is right, because the picture clearly shows one", None),  # the letter is not among the last tokens
    ("A or B", None),  # two letter tokens: neither is read
    ("dog", "B"),  # option text
    ("concatenate", "A"),  # quirk: option text as a substring ("cat")
    ("a cat and a dog", None),  # two option texts
    ("Cannot determine the answer", "Z"),
])
def test_mmbench_reads_an_option_like_vlmevalkit(text, letter):
    assert mmbench_rules.read_option(text, dict(PETS)) == letter


FOUR_PETS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(("text", "letter"), [
    ("The answer is B, but it could be wrong or maybe not at all", "B"),  # the token is too early: "answer is"
    ("Not A; the answer is C.", "C"),  # two letter tokens: "answer is" decides
    ("The answer is Because of the dog", "B"),  # quirk: the B of "Because"
    ("the answer is d", "D"),  # any case
    ("Failed to obtain answer via API. Cannot determine the answer", None),  # API failure: no letter, no "Z"
])
def test_mmbench_current_vlmevalkit_rules(text, letter):
    """`can_infer` of open-compass/VLMEvalKit@e8e78f0, run on these replies with options
    cat/dog/bird/fish: B, C, B, D, and nothing (False)."""
    assert mmbench_rules.read_option(text, dict(FOUR_PETS)) == letter


def test_mmbench_cells_and_replies_take_the_pandas_round_trip():
    """VLMEvalKit@e8e78f0 reads the question TSV and the prediction table with pandas: options
    "None"/"NA" are missing and dropped; an empty or "NA" reply is "nan", which contains option
    A's text "na" — its `can_infer` reads A for both."""
    row = {"A": "na", "B": "kiwi", "C": "None", "D": "NA"}
    choices = {c: row[c] for c in "ABCD" if mmbench_rules.table_cell(row[c]) is not None}
    assert choices == {"A": "na", "B": "kiwi"}
    assert mmbench_rules.table_reply("") == mmbench_rules.table_reply("NA") == mmbench_rules.table_reply(None) == "nan"
    assert mmbench_rules.read_option("", choices) == mmbench_rules.read_option("NA", choices) == "A"
    sample = Sample(id="1-r0", category="ocr", references={"group": 1, "rotation": 0, "answer": "A", "choices": choices,
                                                           "l2_category": "coarse_perception"})
    assert MMBenchTask().score(sample, reply(None))["correct"]


def test_mmbench_rotation_moves_options_and_answer():
    assert mmbench_rules.rotate(["w", "x", "y", "z"], "C", 1) == (["x", "y", "z", "w"], "B")
    assert mmbench_rules.rotate(["w", "x", "y", "z"], "A", 3) == (["z", "w", "x", "y"], "B")


def mmbench_group(group: int, rotations: int, category: str = "image_scene") -> list[Sample]:
    return [Sample(id=f"{group}-r{k}", category=category, references={
        "group": group, "rotation": k, "answer": "A", "choices": {}, "l2_category": "coarse_perception"})
        for k in range(rotations)]


def test_mmbench_question_is_right_only_if_every_rotation_is():
    samples = mmbench_group(1, 4) + mmbench_group(2, 4)
    records = {s.id: {"correct": True} for s in samples}
    records["2-r2"]["correct"] = False
    metrics = MMBenchTask().aggregate(samples, records)
    assert metrics["overall"] == 0.5
    assert metrics["l2/CP"] == 0.5 and metrics["category/image_scene"] == 0.5


def test_mmbench_group_without_rotation_zero_is_skipped():
    samples = mmbench_group(1, 2) + mmbench_group(2, 2, category="ocr")
    records = {s.id: {"correct": True} for s in samples}
    records["2-r1"]["correct"] = False
    del records["2-r0"]  # rotation 0 of the wrong question has no record
    metrics = MMBenchTask().aggregate(samples, records)
    assert metrics["overall"] == 1.0 and metrics["skipped_groups"] == 1
    assert "category/ocr" not in metrics
    corrected = MMBenchTask(corrected=True).aggregate(samples, records)
    assert corrected["overall"] == 0.5 and corrected["skipped_groups"] == 0


def test_mmbench_missing_later_rotation_is_not_checked():
    samples = mmbench_group(1, 3)
    records = {"1-r0": {"correct": True}, "1-r1": {"correct": True}}
    assert MMBenchTask().aggregate(samples, records)["overall"] == 1.0
    assert MMBenchTask(corrected=True).aggregate(samples, records)["overall"] == 0.0


# ---------------------------------------------------------------- MathVista

FRACTIONS = ["3/11", "8/11", "6/11", "3/5"]


def prefetch(text: str, question_type: str = "free_form", answer_type: str = "integer", **options) -> str | None:
    choices = FRACTIONS if question_type == "multi_choice" else []
    return mathvista_rules.prefetch(text, question_type=question_type, answer_type=answer_type, choices=choices,
                                    **options)


def test_mathvista_rule_prefetch_is_the_official_one_on_the_raw_reply():
    """The official `extract_answer` (lupantech/MathVista@53d5258, run on these replies with an
    extractor that only records being asked) gives exactly these; None = it asked the extractor."""
    mc = ("multi_choice", "text")
    assert prefetch("") == ""
    assert prefetch(" ") is None  # not stripped: not empty
    assert prefetch("8/11", *mc) == "8/11"
    assert prefetch("8/11 ", *mc) is None  # not stripped: not an option's exact text
    assert prefetch("B", *mc) is None  # a bare letter goes to the extractor
    assert prefetch("(B)", *mc) is None
    assert prefetch("3") == "3"
    assert prefetch(" 3\n") == "3"  # Python's int() takes surrounding whitespace itself
    assert prefetch("1_000") == "1000"  # ... and underscores
    assert prefetch("3.7") is None  # not an integer literal: left to the extractor
    assert prefetch("1.456", answer_type="float") == "1.456"
    assert prefetch("[2007, 2008]", answer_type="list") is None  # a list literal goes to the extractor
    assert prefetch("1,000", answer_type="list") is None  # no tuple
    assert prefetch("1,000", answer_type="integer") is None
    assert prefetch("about twelve", answer_type="integer") is None


def test_mathvista_quick_extract_is_an_option_of_its_own():
    """The official `--quick_extract`: after the number rules, `The answer is "(.*)"\\.`."""
    said = 'I counted them. The answer is "12".'
    assert prefetch(said) is None
    assert prefetch(said, quick_extract=True) == "12"
    assert MathVistaTask(quick_extract=True).scoring_mode == "official"


def test_mathvista_corrected_prefetch_reads_letters_and_list_literals():
    mc = ("multi_choice", "text")
    assert prefetch(" (B) ", *mc, corrected=True) == "B"
    assert prefetch("E", *mc, corrected=True) is None  # not an option
    assert prefetch("[2007, 2008]", answer_type="list", corrected=True) == "[2007, 2008]"
    assert prefetch("1,000", answer_type="list", corrected=True) is None


def normalize(extraction: str, question_type: str = "free_form", answer_type: str = "integer",
              precision: float | None = None, **options) -> str | None:
    choices = FRACTIONS if question_type == "multi_choice" else []
    return mathvista_rules.normalize(extraction, question_type=question_type, answer_type=answer_type,
                                     choices=choices, precision=precision, **options)


def test_mathvista_integer_is_truncated():
    assert normalize("3.7") == "3"
    assert normalize("-2.9") == "-2"
    assert normalize("three") is None


def test_mathvista_float_is_rounded_to_the_precision():
    assert normalize("1.456", answer_type="float", precision=2.0) == "1.46"
    assert normalize("1.4", answer_type="float", precision=1.0) == "1.4"
    assert normalize("1.45", answer_type="float", precision=None) is None  # no precision, no answer


def test_mathvista_multi_choice_letters_and_edit_distance():
    mc = {"question_type": "multi_choice", "answer_type": "text"}
    assert normalize("B", **mc) == "8/11"
    assert normalize("(b) eight elevenths", **mc) == "8/11"  # "(x)" is read as a letter, any case
    assert normalize("8/12", **mc) == "8/11"  # one edit away
    assert normalize("b", **mc) == "3/5"  # quirk: a bare lower-case letter goes by edit distance
    assert normalize("", **mc) == "3/5"  # quirk: an empty extraction still maps (to the shortest option)
    assert normalize("b", **mc, corrected=True) == "8/11"
    assert normalize("", **mc, corrected=True) is None


def test_mathvista_ignore_empty_extractions_is_an_option_of_its_own():
    """The official `--ignore_empty_extractions`: an empty multi-choice extraction is no prediction."""
    mc = {"question_type": "multi_choice", "answer_type": "text"}
    assert normalize("  ", **mc, ignore_empty_extractions=True) is None
    assert normalize("b", **mc, ignore_empty_extractions=True) == "3/5"  # nothing else changes
    task = MathVistaTask(extractor=lambda reply, problem: "", ignore_empty_extractions=True)
    sample = mathvista_sample("7", "multi_choice", "text", "3/5", [], choices=FRACTIONS)
    assert task.score(sample, reply("I am not sure."))["correct"] is False
    assert MathVistaTask(extractor=lambda reply, problem: "").score(sample, reply("I am not sure."))["correct"]


def test_mathvista_lists_match_as_strings_unless_corrected():
    assert mathvista_rules.matches("[2007, 2008]", "[2007, 2008]", answer_type="list")
    assert not mathvista_rules.matches("[2007,2008]", "[2007, 2008]", answer_type="list")
    assert mathvista_rules.matches("[2007,2008]", "[2007, 2008]", answer_type="list", corrected=True)
    assert not mathvista_rules.matches("[2008, 2007]", "[2007, 2008]", answer_type="list", corrected=True)


def mathvista_sample(pid: str, question_type: str, answer_type: str, answer: str, skills: list[str],
                     choices: list[str] | None = None, precision: float | None = None) -> Sample:
    return Sample(id=pid, category="figure question answering", references={
        "pid": pid, "query": "q", "question": "q", "question_type": question_type, "answer_type": answer_type,
        "choices": choices or [], "unit": None, "precision": precision, "answer": answer, "skills": skills})


def test_mathvista_extractor_runs_only_when_the_rules_find_nothing():
    calls = []

    def extract(response: str, problem: dict) -> str:
        calls.append((response, problem["answer_type"]))
        return "3.7"

    task = MathVistaTask(extractor=extract)
    sample = mathvista_sample("2", "free_form", "integer", "3", ["arithmetic reasoning"])
    assert task.score(sample, reply("3"))["extracted_by"] == "rule"
    assert calls == []
    record = task.score(sample, reply("It looks like about 3.7 apples."))
    assert calls == [("It looks like about 3.7 apples.", "integer")]
    assert record == {"reply": "It looks like about 3.7 apples.", "reference": "3", "extracted": "3.7",
                      "extracted_by": "judge", "prediction": "3", "correct": True, "score": 1.0}
    assert task.options.extractor == "extract"


def test_mathvista_without_extractor_the_sample_is_neither_right_nor_wrong():
    sample = mathvista_sample("2", "free_form", "integer", "3", ["arithmetic reasoning"])
    record = MathVistaTask().score(sample, reply("Let me think step by step."))
    assert record["extracted_by"] == "unavailable"
    assert record["correct"] is None and record["score"] == 0.0


def test_mathvista_metrics_by_type_and_skill():
    samples = [
        mathvista_sample("1", "multi_choice", "text", "8/11", ["arithmetic reasoning"], choices=FRACTIONS),
        mathvista_sample("2", "free_form", "integer", "3", ["arithmetic reasoning", "numeric commonsense"]),
        mathvista_sample("3", "free_form", "float", "1.45", ["statistical reasoning"], precision=2.0),
        mathvista_sample("4", "free_form", "list", "[2007, 2008]", ["statistical reasoning"]),
    ]
    task = MathVistaTask()
    replies = ["8/11", "2", "1.45", "Step by step, the peak is between 2007 and 2008."]
    records = {s.id: task.score(s, reply(t)) for s, t in zip(samples, replies)}
    metrics = task.aggregate(samples, records)
    assert metrics == {
        "overall": 0.5,
        "question_type/multi_choice": 1.0, "question_type/free_form": pytest.approx(1 / 3),
        "answer_type/text": 1.0, "answer_type/integer": 0.0, "answer_type/float": 1.0, "answer_type/list": 0.0,
        "skill/arithmetic_reasoning": 0.5, "skill/numeric_commonsense": 0.0, "skill/statistical_reasoning": 0.5,
        "extraction_unavailable": 1.0,
    }


# ---------------------------------------------------------------- scoring modes


@pytest.mark.parametrize("task_class", [MMETask, MMMUTask, MMBenchTask, MathVistaTask])
def test_a_corrected_mode_is_opt_in_tagged_and_named_apart(task_class):
    official, corrected = task_class(), task_class(corrected=True)
    assert official.run_tags() == {"umm.scoring_mode": "official"} and official.metric_prefix == ""
    assert corrected.run_tags() == {"umm.scoring_mode": "corrected"} and corrected.metric_prefix == "corrected/"
