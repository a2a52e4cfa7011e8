"""The generation benchmarks as tasks: loaders on the real published files, the question table's hash
check, and samples → score → aggregate end to end with stand-in scorers (hand-worked metrics), a
tiny random Mask2Former + CLIP, the OpenAI-compatible vision judge over HTTP, hub-schema UEval
rows and a synthesized Uni-MMMU folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from tasks import dpg_bench as dpg_module
from tasks import wise as wise_module
from tasks.base import Output, Sample
from tasks.benchmark_files import git_blob_sha1
from tasks.dpg_bench import DPGBenchTask
from tasks.geneval import GenEvalTask, fetch_object_names, load_metadata, tag_counts
from tasks.judges.tiny import build_tiny_vision_judge
from tasks.judges.vision import (
    OpenAIVisionJudge,
    TransformersVisionJudge,
    VisionFixedReplyLength,
    VisionRequest,
    as_vision_judge,
)
from tasks.scorers import uni_mmmu_rules as rules
from tasks.scorers.geneval_detector import COLORS, GenEvalDetector
from tasks.scorers.geneval_rules import Verdict
from tasks.scorers.vqa import BlipVQA, ChatVQA
from tasks.scorers.wise_rules import SYSTEM as WISE_SYSTEM
from tasks.scorers.wise_rules import VERIFIED_SYSTEM as WISE_VERIFIED_SYSTEM
from tasks.ueval import UEvalTask
from tasks.uni_mmmu import UniMMMUTask
from tasks.wise import WISETask, load_prompts
from tests.conftest import SHARED_DATA
from tests.fixtures_hub import IMAGE, _write
from tests.fixtures_hub import image as image_cell
from tests.stand_ins import JsonStandIn, serving
from tests.test_generation_scoring import B_ANSWERS, C_ANSWERS, ROWS
from tests.tiny_scorers import (
    ScriptedVisionJudge,
    ScriptedVQA,
    build_tiny_blip,
    build_tiny_clip,
    build_tiny_mask2former,
    paint,
)
from umm_harness.core.errors import ConfigError
from umm_harness.runner import limit_samples

GENEVAL = SHARED_DATA / "geneval"
DPG = SHARED_DATA / "dpg_bench"
WISE = SHARED_DATA / "wise"


def solid(color: str, size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), paint(color))


def outputs(images: list[Image.Image | None], text: str | None = None) -> list[Output]:
    return [Output(k=k, seed=k, text=text, images=[image] if image is not None else []) for k, image in enumerate(images)]


# --- loaders on the published files ----------------------------------------------------------------


def test_geneval_loads_553_prompts_with_metadata():
    task = GenEvalTask(GENEVAL)
    samples = task.samples()
    assert len(samples) == 553 and all(s.n == 4 for s in samples)
    assert tag_counts([s.references for s in samples]) == {
        "position": 100, "color_attr": 100, "two_object": 99, "colors": 94, "single_object": 80, "counting": 80}
    prompts = (GENEVAL / "prompts" / "generation_prompts.txt").read_text().splitlines()
    assert [s.request.prompt for s in samples] == prompts
    assert samples[0].id == "00000" and samples[-1].id == "00552"
    assert sum("exclude" in s.references for s in samples) == 80
    assert len(fetch_object_names(SHARED_DATA)) == 80  # a suite-wide --data-dir works too
    assert len(load_metadata(SHARED_DATA)) == 553


def test_dpg_loads_1065_prompt_files_without_the_question_table():
    samples = DPGBenchTask(DPG).samples()
    assert len(samples) == 1065 and all(s.n == 4 for s in samples)
    ids = {s.id for s in samples}
    assert "0" in ids and "159" not in ids and "299" in ids
    assert sum(i.startswith("partiprompts") for i in ids) == 324
    assert all(s.request.prompt and "\n" not in s.request.prompt for s in samples)


def test_wise_loads_1000_prompts_in_three_files():
    prompts = load_prompts(WISE)
    assert len(prompts) == 1000 and sorted(p["prompt_id"] for p in prompts) == list(range(1, 1001))
    per_file = {name: sum(p["file"] == name for p in prompts)
                for name in ("cultural_common_sense", "spatio-temporal_reasoning", "natural_science")}
    assert per_file == {"cultural_common_sense": 400, "spatio-temporal_reasoning": 300, "natural_science": 300}
    samples = WISETask(WISE).samples()
    counts = {c: sum(s.category == c for s in samples) for c in ("cultural", "time", "space", "biology", "physics",
                                                                   "chemistry")}
    assert counts == {"cultural": 400, "time": 167, "space": 133, "biology": 100, "physics": 100, "chemistry": 100}
    assert all(s.references["explanation"] and s.n == 1 for s in samples)


def test_dpg_question_table_with_the_wrong_hash_is_refused(tmp_path):
    _write_table(tmp_path / "dpg_bench.csv", ROWS)
    task = DPGBenchTask(tmp_path)
    with pytest.raises(ConfigError, match="98457fc9901943f51ff9a30367250fc292533bed"):
        task.items


def test_dpg_missing_question_table_names_data_dir(tmp_path):
    task = DPGBenchTask(DPG)
    assert len(task.samples()) == 1065  # generating needs only the prompt files
    with pytest.raises(ConfigError, match="--data-dir .*has no dpg_bench.csv"):
        task.items


# --- GenEval ----------------------------------------------------------------------------------------


class ColourKeyedDetectorStandIn:
    """A GenEval detector stand-in: an image is judged correct when it is painted green."""

    scorer_id = "colour-keyed-stand-in"

    def judge(self, image, metadata, settings=None):
        correct = image.getpixel((0, 0)) == paint("green")
        return Verdict(correct, "" if correct else "not green"), {"detections": {}, "colors": {}}


def test_geneval_task_scores_and_aggregates_by_tag():
    task = GenEvalTask(GENEVAL, detector=ColourKeyedDetectorStandIn())
    samples = task.samples()
    single = next(s for s in samples if s.category == "single_object")
    counting = next(s for s in samples if s.category == "counting")
    records = {
        single.id: task.score(single, outputs([solid("green"), solid("green"), solid("red"), None])),
        counting.id: task.score(counting, outputs([solid("green"), solid("red"), solid("red"), solid("red")])),
    }
    assert records[single.id]["score"] == 0.5 and records[single.id]["images"][3]["missing"]
    metrics = task.aggregate([single, counting], records)
    assert metrics == pytest.approx({"single_object": 0.5, "counting": 0.25, "overall": 0.375,
                                     "images_correct": 3 / 8, "prompts_correct": 1.0, "missing_images": 1.0})
    other = GenEvalTask(GENEVAL)  # the default Mask2Former + CLIP scorer: records of another scorer refused
    with pytest.raises(ValueError, match="re-score"):
        other.aggregate([single], records)


def test_geneval_prompts_correct_groups_images_by_their_metadata_record():
    """`summary_scores.py` (djghosh13/geneval@af4902f) groups by the metadata JSON: two prompt
    folders with the same metadata are one prompt (run on such results it prints "Total
    prompts: 1" and "% correct prompts: 100.00%")."""
    task = GenEvalTask(GENEVAL, detector=ColourKeyedDetectorStandIn(), max_objects=3, position_threshold=0.2)
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    twins = [Sample(id=i, category="single_object", references=dict(meta), n=1) for i in ("00001", "00002")]
    records = {"00001": task.score(twins[0], outputs([solid("green")])),
               "00002": task.score(twins[1], outputs([solid("red")]))}
    assert task.aggregate(twins, records)["prompts_correct"] == 1.0
    assert task.scorer_id.endswith(";max_objects=3;position_threshold=0.2")


def test_tiny_random_mask2former_and_clip_end_to_end():
    segmenter = build_tiny_mask2former(favour_label=0)  # every query says "person"
    clip, tokenizer = build_tiny_clip()
    detector = GenEvalDetector(segmenter, clip, tokenizer, fetch_object_names(GENEVAL), scorer_id="tiny-random",
                               scale=(64, 64))
    task = GenEvalTask(GENEVAL, detector=detector)
    image = Image.new("RGB", (64, 64), (200, 120, 40))
    ImageDraw.Draw(image).ellipse((10, 10, 50, 50), fill=(30, 30, 220))
    single = Sample.build(id="p", category="single_object", n=2, task="generation", prompt="a photo of a person",
                          references={"tag": "single_object", "include": [{"class": "person", "count": 1}]})
    colors = Sample.build(id="c", category="colors", n=1, task="generation", prompt="a photo of a red person",
                          references={"tag": "colors", "include": [{"class": "person", "count": 1, "color": "red"}]})
    record = task.score(single, outputs([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]))
    assert record["scorer"] == "tiny-random" and record["score"] == 1.0
    assert all(0.3 < d[4] <= 1.0 for d in record["images"][0]["detections"]["person"])
    record = task.score(colors, outputs([image]))
    assert record["images"][0]["colors"]["person"][0] in COLORS
    assert set(task.aggregate([single, colors], {"p": task.score(single, outputs([image])), "c": record})) >= {
        "overall", "single_object", "colors"}


# --- DPG-Bench --------------------------------------------------------------------------------------


def _write_table(path: Path, rows: list[dict]) -> bytes:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path.read_bytes()


def test_dpg_task_tiles_asks_and_aggregates(tmp_path, monkeypatch):
    data = _write_table(tmp_path / "dpg_bench.csv", ROWS)
    monkeypatch.setattr(dpg_module, "QUESTIONS", dpg_module.QUESTIONS.model_copy(update={"blob_sha1": git_blob_sha1(data)}))
    colours = ["red", "green", "blue", "white"]
    table = {}
    for question_rows, tiles in ((ROWS[2:7], B_ANSWERS), (ROWS[7:9], C_ANSWERS)):
        for colour, answers_ in zip(colours, tiles):
            for row, answer in zip(question_rows, answers_):
                table[(colour, row["question_natural_language"])] = answer
    vqa = ScriptedVQA(table, {paint(c): c for c in colours})
    task = DPGBenchTask(tmp_path, vqa=vqa)
    samples = task.samples()  # prompts from the table's text column
    assert [(s.id, s.request.prompt) for s in samples] == [("A", "prompt A"), ("B", "prompt B"), ("C", "prompt C")]
    images = [solid(c, 24) for c in colours]
    records = dict(zip([s.id for s in samples], task.score_many([(s, outputs(images)) for s in samples])))
    assert records["A"]["dropped"] and records["B"]["tile_scores"] == pytest.approx([1.0, 0.2, 0.4, 0.4])
    assert [c for c, _ in vqa.calls[:4]] == colours  # A's one question on TL, TR, BL, BR
    assert [c for c, _ in vqa.calls[4:9]] == ["red"] * 5  # then B's five questions on the top-left tile
    metrics = task.aggregate(samples, records)
    assert metrics == pytest.approx({"overall": 56.25, "entity": 100.0, "attribute": 50.0, "relation": 100.0,
                                     "global": 0.0, "entity/whole": 100.0, "entity/state": 100.0,
                                     "attribute/color": 50.0, "relation/spatial": 100.0, "dropped_items": 1.0,
                                     "missing_images": 0.0})
    # A prompt with no image at all scores 0 on every question; one missing tile is black.
    empty = task.score(samples[2], outputs([None] * 4))
    assert empty["score"] == 0.0 and empty["missing_images"] == 4
    assert task.scorer_id == "scripted-vqa;tiles=4" and records["B"]["scorer"] == task.scorer_id


def test_dpg_with_a_tiny_random_blip_vqa(tmp_path, monkeypatch):
    data = _write_table(tmp_path / "dpg_bench.csv", ROWS)
    monkeypatch.setattr(dpg_module, "QUESTIONS", dpg_module.QUESTIONS.model_copy(update={"blob_sha1": git_blob_sha1(data)}))
    model, processor = build_tiny_blip()
    task = DPGBenchTask(tmp_path, vqa=BlipVQA(model, processor=processor, name="tiny-blip", max_new_tokens=3))
    samples = task.samples()
    records = task.score_many([(s, outputs([solid(c, 40) for c in ("red", "green", "blue", "white")])) for s in samples])
    answers = records[1]["answers"]
    assert len(answers) == 4 and all(isinstance(a, str) for tile in answers for a in tile.values())
    assert records[1]["scorer"] == "blip-vqa:tiny-blip;tiles=4"
    assert set(task.aggregate(samples, dict(zip([s.id for s in samples], records)))) >= {"overall", "entity"}


# --- WISE -----------------------------------------------------------------------------------------------

WISE_REPLIES = {1: "Consistency: 2\nRealism: 2\nAesthetic Quality: 2", 401: "Consistency: 1\nRealism: 1\nAesthetic Quality: 1",
                568: "**Consistency**: 0\n**Realism**: 0\n**Aesthetic Quality**: 0", 701: "Consistency: 2\nRealism: 1\nAesthetic Quality: 0",
                801: "Consistency: 1\nRealism: 0\nAesthetic Quality: 0", 901: "0\n0\n1",
                2: "I would rather not say."}


def test_wise_task_judges_and_weights(tmp_path):
    task = WISETask(WISE, judge=None, cache_dir=tmp_path / "cache")
    samples = {int(s.id): s for s in task.samples()}
    by_prompt = {samples[i].request.prompt: reply for i, reply in WISE_REPLIES.items()}
    judge = ScriptedVisionJudge(lambda r: next(v for k, v in by_prompt.items() if f'PROMPT: "{k}"' in r.text))
    task = WISETask(WISE, judge=judge, cache_dir=tmp_path / "cache")
    chosen = [samples[i] for i in (1, 401, 568, 701, 801, 901, 2, 3)]
    items = [(s, outputs([solid("blue")] if s.id != "3" else [None])) for s in chosen]
    records = dict(zip([s.id for s in chosen], task.score_many(items)))
    assert records["701"]["score"] == pytest.approx(0.8) and records["901"]["score"] == pytest.approx(0.05)
    # Asked 3 times, as the official judge script; no image: not judged, as officially.
    assert records["2"]["judge_failed"] and records["2"]["score"] is None and len(records["2"]["judge_replies"]) == 3
    assert records["3"]["missing_image"] and records["3"]["score"] is None
    # Prompts 2 and 3 have no judged score: the official calculator reports nothing but why.
    assert task.aggregate(chosen, records) == {"judge_failures": 1.0, "missing_images": 1.0, "unscored_prompts": 2.0}
    metrics = task.aggregate(chosen[:6], records)
    assert metrics["cultural"] == pytest.approx(1.0) and metrics["unscored_prompts"] == 0
    assert metrics["wiscore"] == pytest.approx(0.4 * 1.0 + 0.167 * 0.5 + 0.1 * 0.8 + 0.1 * 0.35 + 0.1 * 0.05)
    first = judge.requests[0]
    assert first.system == WISE_SYSTEM and len(first.images) == 1 and samples[1].references["explanation"] in first.text
    asked = len(judge.requests)
    again = WISETask(WISE, judge=judge, cache_dir=tmp_path / "cache").score_many(items)
    assert len(judge.requests) == asked and again[3]["score"] == records["701"]["score"]  # all from the cache


def test_wise_verified_protocol_reads_its_own_prompts_and_binary_verdicts(tmp_path):
    """WISE_Verified (PKU-YuanGroup/WISE@eb51174): its own prompt files (checked by blob hash),
    one "Score: 0|1" per image, its metrics under `verified/` and its protocol tagged."""
    folder = tmp_path / "data_verified"
    folder.mkdir()
    entries = {"cultural_common_sense": [(1, "a mooncake")], "spatio-temporal_reasoning": [(521, "noon in Cairo")],
               "natural_science": [(641, "a sunflower at dusk")]}
    for stem, prompts in entries.items():
        data = json.dumps([{"prompt_id": i, "Prompt": p, "Category": "c", "Subcategory": "s", "Explanation": f"x{i}"}
                           for i, p in prompts]).encode()
        (folder / f"{stem}_verified.json").write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wise_module, "VERIFIED_PROMPT_FILES", tuple(
            f.model_copy(update={"blob_sha1": git_blob_sha1((tmp_path / f.path).read_bytes())})
            for f in wise_module.VERIFIED_PROMPT_FILES))
        judge = ScriptedVisionJudge(lambda r: "Score: 1" if "mooncake" in r.text else "Score: 0")
        task = WISETask(tmp_path, judge=judge, cache_dir=tmp_path / "cache", protocol="verified")
        samples = task.samples()
    assert [(s.id, s.category) for s in samples] == [("1", "cultural"), ("521", "space"), ("641", "biology")]
    assert "Score: 1" in judge_text_of(task, samples[0]) and task.system == WISE_VERIFIED_SYSTEM
    records = dict(zip(["1", "521", "641"], task.score_many([(s, outputs([solid("blue")])) for s in samples])))
    assert [r["score"] for r in records.values()] == [1.0, 0.0, 0.0]
    assert task.aggregate(samples, records) == {"cultural": 1.0, "space": 0.0, "biology": 0.0, "judge_failures": 0.0,
                                                "missing_images": 0.0, "unscored_prompts": 0.0}
    assert task.metric_prefix == "verified/"
    assert task.run_tags() == {"umm.scoring_mode": "official", "umm.protocol": "verified"}
    assert WISETask(WISE).metric_prefix == "" and "umm.protocol" not in WISETask(WISE).run_tags()
    with pytest.raises(ConfigError, match="protocol"):
        WISETask(WISE, protocol="v2")


def judge_text_of(task: WISETask, sample) -> str:
    from tasks.scorers.wise_rules import judge_text

    return judge_text(sample.request.prompt, sample.references["explanation"], task.instructions)


def test_a_tiny_random_chat_vlm_as_dpg_vqa_and_wise_judge(tmp_path, monkeypatch):
    vlm = TransformersVisionJudge(str(build_tiny_vision_judge(tmp_path / "tiny-llava")), device="cpu")
    data = _write_table(tmp_path / "dpg_bench.csv", ROWS)
    monkeypatch.setattr(dpg_module, "QUESTIONS", dpg_module.QUESTIONS.model_copy(update={"blob_sha1": git_blob_sha1(data)}))
    dpg = DPGBenchTask(tmp_path, vqa=ChatVQA(as_vision_judge(vlm, tmp_path / "cache")))
    sample = dpg.samples()[2]
    record = dpg.score(sample, outputs([solid("red", 40)] * 4))
    assert dpg.scorer_id == f"chat-vqa:{vlm.id};tiles=4" and "@local-" in vlm.id and len(record["answers"]) == 4
    # Random replies are not scores: each is retried once, then counted as a failure, never guessed.
    wise = WISETask(WISE, judge=VisionFixedReplyLength(vlm, 4), cache_dir=tmp_path / "cache")
    chosen = [s for s in wise.samples() if s.id in ("1", "701")]
    records = dict(zip(["1", "701"], wise.score_many([(s, outputs([solid("blue", 40)])) for s in chosen])))
    assert all(r["judge_failed"] and len(r["judge_replies"]) == 3 for r in records.values())
    assert wise.aggregate(chosen, records) == {"judge_failures": 2.0, "missing_images": 0.0, "unscored_prompts": 2.0}
    assert records["1"]["judge"] == f"{vlm.id}#max_tokens=4"


def test_judged_tasks_name_their_scorer_without_building_a_judge(tmp_path, monkeypatch):
    for name in ("UMM_JUDGE_BACKEND", "UMM_JUDGE_BASE_URL", "UMM_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert WISETask(WISE).scorer_id is None  # generate-only: no judge needed
    config = {"backend": "openai", "base_url": "http://127.0.0.1:9", "model": "Qwen/Qwen2.5-VL-72B-Instruct"}
    assert WISETask(WISE, judge=config).scorer_id == "openai:Qwen/Qwen2.5-VL-72B-Instruct"
    assert UEvalTask(tmp_path, judge=config).scorer_id == "openai:Qwen/Qwen2.5-VL-72B-Instruct;question_type=official"
    assert UniMMMUTask(tmp_path, judge=config).scorer_id == (
        "vision=openai:Qwen/Qwen2.5-VL-72B-Instruct;text=openai:Qwen/Qwen2.5-VL-72B-Instruct;jigsaw_distance=none")
    with pytest.raises(ConfigError, match="--data-dir .* holds no extracted Uni-MMMU data"):
        UniMMMUTask(tmp_path).samples()


class _ChatHandler(JsonStandIn):
    """A stand-in for an OpenAI-compatible vision judge server."""

    payloads: list[dict] = []

    def do_GET(self):  # /v1/models
        self.reply({"data": [{"id": "tiny-vlm"}]})

    def do_POST(self):
        type(self).payloads.append(self.request_json())
        self.reply({"choices": [{"message": {"content": "Consistency: 2\nRealism: 1\nAesthetic Quality: 1"}}]})


def test_openai_vision_judge_sends_system_text_then_images(tmp_path):
    with serving(_ChatHandler) as url:
        judge = as_vision_judge({"backend": "openai", "base_url": url.removeprefix("http://")}, tmp_path)
        replies = judge.chat([VisionRequest("score this", (solid("red"),), "be strict")], max_tokens=50)
        assert replies == ["Consistency: 2\nRealism: 1\nAesthetic Quality: 1"]
        assert judge.id == "openai:tiny-vlm"
        body = _ChatHandler.payloads[-1]
        assert body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "be strict"}]}
        content = body["messages"][1]["content"]
        assert content[0] == {"type": "text", "text": "score this"}
        assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
        assert body["max_tokens"] == 50 and body["temperature"] == 0.0
        judge.chat([VisionRequest("score this", (solid("red"),), "be strict")], max_tokens=50)
        assert len(_ChatHandler.payloads) == 1 and judge.hits == 1  # cached: same text, system and image bytes
    assert isinstance(judge.inner, OpenAIVisionJudge)


# --- UEval ----------------------------------------------------------------------------------------------

RUBRIC = pa.struct([("criterion", pa.string()), ("tags", pa.list_(pa.string()))])
IMAGE_RUBRIC = pa.struct([("criterion", pa.string()), ("tags", pa.list_(pa.string())), ("type", pa.string())])
UEVAL_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("text_ref", pa.string()),
                          ("image_ref", pa.list_(IMAGE)), ("task_type", pa.string()), ("question_type", pa.string()),
                          ("text_rubrics", pa.list_(RUBRIC)), ("image_rubrics", pa.list_(IMAGE_RUBRIC))])


def _rubrics(*criteria, image=False):
    return [{"criterion": c, "tags": ["t"], **({"type": "image"} if image else {})} for c in criteria]


def write_ueval(data_dir: Path) -> None:
    rows = [
        {"id": "1", "prompt": "Draw the solar system.", "text_ref": "ref", "image_ref": [image_cell("black", "r.png")],
         "task_type": "space", "question_type": "closed", "text_rubrics": _rubrics("T-yes", "T-no"),
         "image_rubrics": _rubrics("I-yes", "I-yes-2", image=True)},
        {"id": "2", "prompt": "Paint a cat.", "text_ref": "ref", "image_ref": [], "task_type": "art",
         "question_type": "open", "text_rubrics": _rubrics("T-yes"), "image_rubrics": _rubrics("I-garbage", image=True)},
        {"id": "3", "prompt": "How to boil an egg?", "text_ref": "ref", "image_ref": [], "task_type": "life",
         "question_type": "open", "text_rubrics": _rubrics("T-no"), "image_rubrics": []},
    ]
    _write(data_dir / "zlab-princeton/UEval/data/test-00000-of-00001.parquet", rows, UEVAL_SCHEMA)


def _ueval_reply(request: VisionRequest) -> str:
    criterion = request.text.rsplit("# Rubric Item\n", 1)[1]
    return {"T-yes": '{"criteria_met": true}', "T-no": '```json\n{"criteria_met": false}\n```',
            "I-yes": '{"explanation": "ok", "criteria_met": "yes"}', "I-yes-2": '{"criteria_met": "True"}',
            "I-garbage": "cannot tell"}[criterion]


def test_ueval_task_pairs_text_and_image_and_aggregates(tmp_path):
    write_ueval(tmp_path)
    judge = ScriptedVisionJudge(_ueval_reply)
    task = UEvalTask(tmp_path, judge=judge, cache_dir=tmp_path / "cache")
    samples = task.samples()
    assert [(s.id, s.request.task) for s in samples[:2]] == [("1/text", "understanding"), ("1/image", "generation")]
    items = [(s, outputs([solid("red")]) if s.references["part"] == "image" else outputs([None], text=f"answer {s.id}"))
             for s in samples]
    records = dict(zip([s.id for s in samples], task.score_many(items)))
    image_request = next(r for r in judge.requests if r.images)
    assert "Text Answer: answer 1/text" in image_request.text  # official quirk: "space" is judged as open
    assert records["1/text"]["rate"] == 0.5 and records["1/image"]["rate"] == 1.0
    assert records["2/image"]["rate"] is None and records["2/image"]["judge_failures"] == 1
    metrics = task.aggregate(samples, records)
    assert metrics == pytest.approx({"space": 75.0, "art": 100.0, "life": 0.0, "overall": 175 / 3,
                                     "text": 50.0, "image": 100.0, "judge_failures": 1.0, "text_answer_missing": 0.0})
    closed = UEvalTask(tmp_path, judge=ScriptedVisionJudge(_ueval_reply), question_type="dataset",
                       cache_dir=tmp_path / "cache2")
    first = closed.samples()[:2]
    closed.score_many([(first[0], items[0][1]), (first[1], items[1][1])])
    assert "Text Answer" not in next(r for r in closed.judge.inner.requests if r.images).text


def test_a_limit_counts_items_and_never_keeps_half_of_one(tmp_path):
    write_ueval(tmp_path)
    samples = UEvalTask(tmp_path, judge=None).samples()
    kept = limit_samples(samples, 2)  # two questions, one per category first, each with both halves
    assert [s.id for s in kept] == ["1/text", "1/image", "2/text", "2/image"]
    assert limit_samples(samples, 3) == samples


# --- Uni-MMMU ------------------------------------------------------------------------------------------

MAZE_WALLS = ["######", "#  # #", "# ## #", "#    #", "## # #", "######"]


def render_maze(agent: tuple[int, int], goal: tuple[int, int], cell: int = 20) -> Image.Image:
    """A 6×6 maze in the official palette, filling the image: walls, floor, a green goal cell, a blue agent."""
    image = Image.new("RGB", (6 * cell, 6 * cell), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(MAZE_WALLS):
        for c, ch in enumerate(row):
            colour = "#1f2937" if ch == "#" else "#f4efe6"
            if (r, c) == goal:
                colour = "#22c55e"
            draw.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=colour)
    r, c = agent
    pad = cell // 5
    draw.rectangle((c * cell + pad, r * cell + pad, (c + 1) * cell - pad - 1, (r + 1) * cell - pad - 1), fill="#2563eb")
    return image


def test_maze_rules_parse_images_and_simulate_moves():
    parsed = rules.parse_maze_image(render_maze((1, 1), (3, 4)))
    assert parsed["start"] == (1, 1) and parsed["goal"] == (3, 4)
    walls = [[ch == "#" for ch in row] for row in MAZE_WALLS]
    assert [["#" if w else " " for w in row] for row in walls] == [
        ["#" if cell == "#" else " " for cell in row] for row in parsed["grid"]]
    moves = ["down", "down", "left", "right", "right", "right"]  # "left" hits a wall: stays
    assert rules.simulate_positions((1, 1), walls, moves)[-1] == (3, 4)
    expected = rules.expected_maze_grids((1, 1), (3, 4), walls, moves)
    assert expected[-1][3][4] == "SG"
    assert rules.parse_maze_image(render_maze((3, 4), (3, 4)))["grid"] == expected[-1]
    assert rules.text_moves_score(["down", "down", "up"], moves) == {"text_exact": 0.0, "text_frame_acc": 2 / 6}
    assert rules.parse_moves('<ANSWER_JSON>["up"]</ANSWER_JSON> then <answer_json>["Down", "LEFT "]</answer_json>') == [
        "down", "left"]
    assert rules.parse_jigsaw_choice('<FINAL_ANSWER_JSON>{"choice": true}</FINAL_ANSWER_JSON>') == (1, "ok")
    assert rules.parse_jigsaw_choice('<FINAL_ANSWER_JSON>{"choice": 2}</FINAL_ANSWER_JSON>')[1] == "invalid_choice_value"


def _uni_data(root: Path) -> Path:
    data = root / "data"
    maze = data / "maze" / "maze_6x6_00001_steps"
    maze.mkdir(parents=True)
    render_maze((1, 1), (3, 4)).save(maze / "maze_step_0000.png")
    moves = ["down", "down", "right", "right", "right"]
    (data / "maze" / "maze_6x6_steps_00001.json").write_text(json.dumps({"steps_long": moves}))
    jig = data / "jigsaw_dataset_2x2ref"
    jig.mkdir(parents=True)
    for name in ("ref", "c0", "c1", "ok", "bad"):
        solid("white").save(jig / f"{name}.png")
    (jig / "metadata.json").write_text(json.dumps({"items": [
        {"id": "j1", "label": 1, "ref_panel": {"ref_image_path": "ref.png"}, "candidate_paths": ["c0.png", "c1.png"],
         "gt_completed_2x2_path": "ok.png", "gt_wrong_2x2_path": "bad.png"}]}))
    math = data / "math_data"
    math.mkdir(parents=True)
    solid("white").save(math / "base.png")
    solid("black").save(math / "aux.png")
    (math / "filtered.json").write_text(json.dumps({"g1": {"p1": {
        "type": "calculation", "problem_text_en": "Find x.", "solution_en": "x = 2", "auxiliary_text_en": "Join AC.",
        "original_image": "base.png", "auxiliary_image": "aux.png"}}}))
    return data


def test_uni_mmmu_task_rules_and_judges(tmp_path):
    data = _uni_data(tmp_path)
    replies = {"overlay": '{"overlay_ok": 1, "overlay_reason": "all lines"}',
               "text": 'Thinking... {"reasoning_rigorous": 1, "conclusion_correct": 0, "text_ok": 0, "text_reason": "x"}'}
    judge = ScriptedVisionJudge(lambda r: replies["overlay" if r.images else "text"])
    task = UniMMMUTask(tmp_path, judge=judge, cache_dir=tmp_path / "cache", subtasks=["maze", "jigsaw", "geometry"])
    samples = task.samples()
    assert [s.id for s in samples] == ["maze/00001/text", "maze/00001/image", "jigsaw/j1/text", "jigsaw/j1/image",
                                       "geometry/g1__p1/text", "geometry/g1__p1/image"]
    assert samples[1].request.task == "editing" and samples[1].request.metadata == {"num_images": 5}
    steps = [(2, 1), (3, 1), (3, 2), (3, 3), (3, 4)]
    answers = {
        "maze/00001/text": outputs([None], text='<ANSWER_JSON>["down","down","right","right","left"]</ANSWER_JSON>'),
        "maze/00001/image": [Output(k=0, seed=0, images=[render_maze(p, (3, 4)) for p in steps[:3]])],
        "jigsaw/j1/text": outputs([None], text='<FINAL_ANSWER_JSON>{"choice": 1}</FINAL_ANSWER_JSON>'),
        "jigsaw/j1/image": [Output(k=0, seed=0, images=[solid("white"), solid("white")])],
        "geometry/g1__p1/text": outputs([None], text="x = 2"),
        "geometry/g1__p1/image": outputs([solid("black")]),
    }
    records = dict(zip([s.id for s in samples], task.score_many([(s, answers[s.id]) for s in samples])))
    metrics = task.aggregate(samples, records)
    assert metrics == pytest.approx({
        "maze/text": 4 / 5, "maze/text_exact": 0.0,  # last move wrong
        "maze/image": 3 / 5, "maze/image_exact": 0.0,  # 3 correct step images of 5
        "jigsaw/text": 1.0,  # jigsaw/image needs a DreamSim function: not reported
        "geometry/image": 1.0, "geometry/text": 0.0, "judge_failures": 0.0})
    overlay = next(r for r in judge.requests if r.images)
    assert len(overlay.images) == 3 and "Join AC." in overlay.text
    assert str(data) in samples[0].references["start_image"]
