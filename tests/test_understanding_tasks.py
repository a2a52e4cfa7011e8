"""MME, MMMU, MMBench and MathVista end to end on parquet written in each hub's own schema.

The loaders read the fixture shards (tests/fixtures_hub.py) into samples with decoded images
and the official prompts; a corrupt image fails its sample, not the load; stored replies are
scored and aggregated as the runner does it (failed samples never reach `aggregate`).
"""

from __future__ import annotations

import pytest
from PIL import Image

from tasks.base import Output, Sample, Task
from tasks.mathvista import MathVistaTask
from tasks.mmbench import MMBenchTask
from tasks.mme import MMETask
from tasks.mmmu import MMMUTask
from tasks.mmstar import MMStarTask, split_question
from tasks.scorers.mmmu_rules import SUBJECTS
from tests.fixtures_hub import write_mathvista, write_mmbench, write_mme, write_mmmu, write_mmstar
from umm_harness.core.errors import ConfigError


def run(task: Task, samples: list[Sample], replies: dict[str, str]) -> tuple[dict, dict[str, float]]:
    """Score the runnable samples' replies and aggregate them, in sample order, as the runner does."""
    runnable = [s for s in samples if s.error is None]
    records = {s.id: task.score(s, [Output(k=0, seed=0, text=replies[s.id])]) for s in runnable}
    return records, task.aggregate(runnable, records)


def assert_decoded(sample: Sample, count: int = 1) -> None:
    assert sample.error is None and sample.request is not None
    assert sample.request.task == "understanding"
    assert len(sample.request.images) == count
    assert all(isinstance(im, Image.Image) and im.size == (16, 12) for im in sample.request.images)


def assert_failed_on_image(sample: Sample) -> None:
    assert sample.request is None
    assert "images[0]" in sample.error and "not a readable image" in sample.error


def test_mme_loads_scores_and_aggregates(tmp_path):
    write_mme(tmp_path)
    task = MMETask(data_dir=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == ["existence/000.png:0", "existence/000.png:1", "code_reasoning/001.png:0",
                                       "code_reasoning/001.png:1", "OCR/002.png:0"]
    for sample in samples[:4]:
        assert_decoded(sample)
        assert sample.request.prompt.endswith("Please answer yes or no.")
    assert samples[2].request.prompt == "Does this code print 3? Please answer yes or no."
    assert samples[1].references == {"answer": "no", "image": "existence/000.png"}
    assert_failed_on_image(samples[4])

    replies = {"existence/000.png:0": "Yes", "existence/000.png:1": "No.",
               "code_reasoning/001.png:0": "Yes, it does.", "code_reasoning/001.png:1": "Maybe"}
    records, metrics = run(task, samples, replies)
    assert records["code_reasoning/001.png:1"]["extracted"] == "other"
    assert metrics == {
        "existence": 200.0, "existence/acc": 1.0, "existence/acc_plus": 1.0,
        "code_reasoning": 50.0, "code_reasoning/acc": 0.5, "code_reasoning/acc_plus": 0.0,
        "perception": 200.0, "cognition": 50.0,
    }


def test_mmmu_loads_every_subject_config_in_official_order(tmp_path):
    write_mmmu(tmp_path, SUBJECTS)
    task = MMMUTask(data_dir=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == ["validation_Accounting_1", "validation_Accounting_2", "validation_Math_1",
                                       "validation_Physics_1"]
    first, second, open_question, corrupt = samples
    assert first.request.prompt == (
        "Which colour is <image 1>?\n(A) red\n(B) green\n(C) blue\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert_decoded(first)
    assert_decoded(second, count=2)
    assert open_question.request.prompt == (
        "What is 24/7 to three decimals? <image 1>\nAnswer the question using a single word or phrase.")
    assert open_question.references["answer"] == ["24/7", "3.429"]
    assert_failed_on_image(corrupt)

    replies = {first.id: "(A) red", second.id: "Hard to say.", open_question.id: "It is about 3.43"}
    records, metrics = run(task, samples, replies)
    assert records[second.id]["extracted"] == "A"  # first draw of Random(42) over two options
    assert records[open_question.id]["correct"] is True
    assert metrics == {"subject/Accounting": 0.5, "subject/Math": 1.0, "discipline/business": 0.5,
                       "discipline/science": 1.0, "overall": pytest.approx(2 / 3)}


def test_mmmu_missing_subject_is_a_clear_error(tmp_path):
    write_mmmu(tmp_path, SUBJECTS[:3])  # Accounting, Agriculture, Architecture_and_Engineering
    with pytest.raises(ConfigError, match=r"MMMU/MMMU/Art/validation-00000-of-0000N\.parquet"):
        MMMUTask(data_dir=tmp_path).samples()


def rotations(samples: list[Sample]) -> list[tuple[str, dict, str]]:
    return [(s.id, s.references["choices"], s.references["answer"]) for s in samples]


def test_mmbench_reads_the_hub_rotations_as_one_sample_each(tmp_path):
    write_mmbench(tmp_path, pre_rotated=True)
    task = MMBenchTask(data_dir=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == ["1-r0", "1-r1", "2-r0", "2-r1", "2-r2", "3-r0", "3-r1"]
    assert samples[0].request.prompt == (
        "Look at the trees.\nWhat is shown?\nA. a forest\nB. a beach\n"
        "Answer with the option's letter from the given choices directly.")
    assert samples[1].references["choices"] == {"A": "a beach", "B": "a forest"}
    assert samples[1].references["answer"] == "B"
    for sample in samples[:5]:
        assert_decoded(sample)
    assert_failed_on_image(samples[5])

    replies = {"1-r0": "A", "1-r1": "B. a forest", "2-r0": "C", "2-r1": "B", "2-r2": "C"}  # 2-r2 is wrong
    records, metrics = run(task, samples, replies)
    assert [records[i]["correct"] for i in replies] == [True, True, True, True, False]
    assert metrics == {"skipped_groups": 0.0, "overall": 0.5, "l2/CP": 0.5, "category/image_scene": 0.5}


def test_mmbench_rotates_base_questions_like_the_hub_does(tmp_path):
    hub, base = tmp_path / "hub", tmp_path / "base"
    write_mmbench(hub, pre_rotated=True)
    write_mmbench(base, pre_rotated=False)
    assert rotations(MMBenchTask(data_dir=base).samples()) == rotations(MMBenchTask(data_dir=hub).samples())


def test_mathvista_loads_queries_and_types(tmp_path):
    write_mathvista(tmp_path)
    task = MathVistaTask(data_dir=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == ["1", "2", "3", "4", "5"]
    for sample in samples[:4]:
        assert_decoded(sample)
        assert sample.request.prompt.startswith("Hint: answer as ")
        assert sample.category == "figure question answering"
    assert samples[0].references["choices"] == ["3/11", "8/11", "6/11", "3/5"]
    assert samples[2].references["precision"] == 2.0
    assert samples[1].references["skills"] == ["arithmetic reasoning", "numeric commonsense"]
    assert_failed_on_image(samples[4])

    replies = {"1": "8/11", "2": "3", "3": "1.45", "4": "[2007, 2008]"}  # a list literal goes to the extractor
    records, metrics = run(task, samples, replies)
    assert all(records[i]["correct"] and records[i]["extracted_by"] == "rule" for i in "123")
    assert records["4"]["extracted_by"] == "unavailable"
    assert metrics["overall"] == 0.75 and metrics["extraction_unavailable"] == 1.0


def test_mmstar_splits_inline_options_and_scores_like_vlmevalkit(tmp_path):
    write_mmstar(tmp_path)
    task = MMStarTask(data_dir=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == ["0", "1", "2", "3"]
    first, pair, no_options, corrupt = samples
    assert first.request.prompt == (
        "Question: What colour is the square?\nOptions:\nA. red\nB. green\nC. blue\nD. black\n"
        "Please select the correct answer from the options above. \n")
    assert_decoded(first)
    # A comma inside an option stays in it; "None" is no option, as VLMEvalKit's pandas table reads it.
    assert pair.references["choices"] == {"A": "a cat, a dog", "B": "two birds", "D": "a fish"}
    assert no_options.request is None and "Options" in no_options.error
    assert_failed_on_image(corrupt)

    replies = {"0": "The answer is A.", "1": "two birds"}
    records, metrics = run(task, samples, replies)
    assert [records[i]["extracted"] for i in replies] == ["A", "B"]
    assert metrics == {"overall": 0.5, "category/coarse perception": 1.0, "l2/image scene and topic": 1.0,
                       "category/fine-grained perception": 0.0, "l2/object counting": 0.0}
    assert task.score(first, [Output(k=0, seed=0, text="I cannot say.")])["extracted"] == "Z"


def test_mmstar_option_split_keeps_letters_in_order():
    assert split_question("Q?\nOptions: A: 1, B: 2") == ("Q?", {"A": "1", "B": "2"})
    assert split_question("Q?\nOptions: A: x, C: y") is None  # B is missing
    assert split_question("Q? Options: A: ratio 1:2, B: 3:4") == ("Q?", {"A": "ratio 1:2", "B": "3:4"})


def test_without_data_dir_an_offline_hub_names_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached copy either
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match="--data-dir"):
        MMETask().samples()


def test_data_dir_without_the_dataset_names_the_expected_layout(tmp_path):
    with pytest.raises(ConfigError, match=r"lmms-lab/MME/data/test-00000-of-0000N\.parquet"):
        MMETask(data_dir=tmp_path).samples()
