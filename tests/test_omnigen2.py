"""OmniGen2 on its real code: the upstream `OmniGen2Pipeline`, transformer and scheduler from the
pinned snapshot in ../shared/upstream/omnigen2, over a tiny native Qwen2.5-VL and AutoencoderKL."""

import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from model_flavors import flavor, registry
from model_flavors.omnigen2 import NEGATIVE_PROMPT, REPO_ENV, OmniGen2, TextImageProcessor, resolve_checkout
from model_flavors.omnigen2_tiny import build_tiny
from tests.conftest import REPO
from tests.reload import assert_reloads_the_same, task_rows
from tests.serving import invoke, served
from umm_harness.config import EvalRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image, encode_png
from umm_harness.evaluate import evaluate

CHECKOUT = REPO.parent / "shared" / "upstream" / "omnigen2"
FEW_STEPS = {"steps": 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread on this shared machine
    yield build_tiny(tmp_path_factory.mktemp("omnigen2") / "tiny-omnigen2", seed=0, repo_path=CHECKOUT)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def omnigen2(tiny_dir):
    return OmniGen2.load(str(tiny_dir), dtype="float32", device="cpu")


def _scene(color: str = "red", size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def _draw(model, task, seed=1, images=(), **params):
    request = InferenceRequest(task=task, prompt="a red circle", images=list(images),
                               params={**FEW_STEPS, "seed": seed, **params})
    return np.asarray(model.run([request])[0].images[0], dtype=int)


def test_the_pipeline_is_upstreams_over_native_parts(omnigen2, tiny_dir):
    pipeline = omnigen2.pipeline
    assert type(pipeline).__module__ == "omnigen2.pipelines.omnigen2.pipeline_omnigen2"
    assert type(pipeline.transformer).__module__.startswith("omnigen2.models")
    assert type(pipeline.mllm).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(pipeline.vae).__name__ == "AutoencoderKL"
    assert registry.infer_backbone(str(tiny_dir)) == "omnigen2"  # not "diffusers", despite model_index.json


def test_defaults_are_the_repositorys_inference_settings(omnigen2):
    generation, editing = omnigen2.default_params("generation"), omnigen2.default_params("editing")
    assert (generation.steps, generation.guidance_scale, generation.image_guidance_scale) == (50, 4.0, 1.0)
    assert (editing.steps, editing.guidance_scale, editing.image_guidance_scale) == (50, 5.0, 2.0)
    assert generation.image_size == 64 and OmniGen2.hub_ids == ("OmniGen2/OmniGen2",)
    assert NEGATIVE_PROMPT.startswith("(((deformed))), blurry")


def test_generation_is_seeded_and_text_cfg_reaches_the_image(omnigen2):
    first = _draw(omnigen2, "generation")
    assert first.shape == (64, 64, 3) and np.array_equal(first, _draw(omnigen2, "generation"))
    assert not np.array_equal(first, _draw(omnigen2, "generation", seed=2))
    assert not np.array_equal(first, _draw(omnigen2, "generation", guidance_scale=1.5))


def test_editing_keeps_the_input_size_and_image_cfg_reaches_the_image(omnigen2):
    edited = _draw(omnigen2, "editing", images=[_scene()])
    assert edited.shape == (48, 64, 3)
    assert not np.array_equal(edited, _draw(omnigen2, "editing", images=[_scene()], image_guidance_scale=1.0))


def test_understanding_reads_the_image_through_qwen2_5_vl(omnigen2):
    def ask(image):
        request = InferenceRequest(task="understanding", prompt="What colour is it?", images=[image],
                                   params={"max_new_tokens": 6})
        return omnigen2.understand([request])[0].text

    assert isinstance(ask(_scene()), str) and ask(_scene()) == ask(_scene())


def test_the_processor_expands_one_placeholder_per_merged_patch(omnigen2):
    processor: TextImageProcessor = omnigen2.processor
    inputs = processor("<|vision_start|><|image_pad|><|vision_end|>hi", [_scene()])
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merged = int(inputs["image_grid_thw"][0].prod()) // processor.image_processor.merge_size ** 2
    assert int((inputs["input_ids"] == pad).sum()) == merged > 0
    with pytest.raises(ValueError, match="1 image placeholders for 2 images"):
        processor("<|image_pad|>", [_scene(), _scene()])


def test_a_missing_or_foreign_checkout_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(REPO_ENV, raising=False)
    with pytest.raises(ConfigError, match="none is set: clone https://github.com/VectorSpaceLab/OmniGen2"):
        resolve_checkout(None)
    with pytest.raises(ConfigError, match="is not a checkout of"):
        resolve_checkout(tmp_path)
    fake = tmp_path / "og"
    (fake / "omnigen2" / "pipelines" / "omnigen2").mkdir(parents=True)
    (fake / ".upstream-commit").write_text("d" * 40)
    with pytest.raises(ConfigError, match="at commit dddddddddddd, but this adapter was written against 0f72fa92564d"):
        resolve_checkout(fake)


def test_a_folder_without_the_components_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not an OmniGen2 checkpoint .*mllm"):
        OmniGen2.load(str(tmp_path), repo_path=CHECKOUT, device="cpu")


ROWS = task_rows(encode_png(_scene()))
PARAMS = {"seed": 5, "steps": 3, "max_new_tokens": 4}


def test_saved_model_reloads_in_a_fresh_process_with_the_same_outputs(omnigen2, tmp_path):
    assert_reloads_the_same({"omnigen2": (omnigen2, ROWS)}, PARAMS, tmp_path)
    assert json.loads((tmp_path / "omnigen2" / "weights" / "umm_omnigen2.json").read_text())["checkpoint"] == "."


@pytest.mark.slow
def test_registers_evaluates_on_shapes_and_serves(omnigen2, workspace, monkeypatch):
    mlflow.set_experiment("omnigen2-upstream")
    with mlflow.start_run():
        info = flavor.log_model(omnigen2, registered_model_name="omnigen2-tiny")
    assert info.registered_model_version == 1
    summary = evaluate(EvalRecipe(model="models:/omnigen2-tiny/1", limit=4, seed=1, batch_size=4, threads=1,
                                  params=InferenceParams(steps=3, max_new_tokens=4), experiment="eval-omnigen2"))
    tags = mlflow.MlflowClient().get_run(summary.run_id).data.tags
    assert tags["umm.backbone"] == "omnigen2" and tags["umm.suite"] == "shapes"
    assert summary.metrics["shapes/failed_samples"] == 0 and summary.metrics["shapes/skipped_samples"] == 0

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with served("models:/omnigen2-tiny/1", cwd=workspace) as url:
        for row in ROWS:
            answer = invoke(url, [row], params=PARAMS)
            assert answer.status_code == 200, answer.text
            prediction = answer.json()["predictions"][0]
            if row["task"] == "understanding":
                assert isinstance(prediction["text"], str)
            else:
                size = (64, 64) if row["task"] == "generation" else (64, 48)
                assert decode_image(prediction["images"][0]).size == size
