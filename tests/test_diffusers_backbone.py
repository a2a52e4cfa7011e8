"""The diffusers baselines on tiny random pipelines: text-to-image (SD-style) and InstructPix2Pix."""

import inspect

import numpy as np
import pytest
from PIL import Image

from model_flavors.diffusers_backbone import (
    DiffusersBackbone,
    HUB_PRESETS,
    build_tiny,
    build_tiny_editing,
    pipeline_capabilities,
)
from tests.conftest import tiny_dir_fixture
from tests.generation_checks import assert_seeded_per_sample_not_per_batch
from umm_harness.core.backbone import ModelInfo, UnsupportedTask
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest


tiny_sd_dir = tiny_dir_fixture("diffusers-sd", build_tiny)
tiny_ip2p_dir = tiny_dir_fixture("diffusers-ip2p", build_tiny_editing)


@pytest.fixture(scope="session")
def sd(tiny_sd_dir) -> DiffusersBackbone:
    return DiffusersBackbone.load(str(tiny_sd_dir))


@pytest.fixture(scope="session")
def ip2p(tiny_ip2p_dir) -> DiffusersBackbone:
    return DiffusersBackbone.load(str(tiny_ip2p_dir))


def _generation(prompt: str, seed: int, **params) -> InferenceRequest:
    return InferenceRequest(task="generation", prompt=prompt, params={"seed": seed, "steps": 3, **params})


def _editing(prompt: str, seed: int, color: str = "red", size: int = 64, **params) -> InferenceRequest:
    return InferenceRequest(task="editing", prompt=prompt, images=[Image.new("RGB", (size, size), color)],
                            params={"seed": seed, "steps": 3, **params})


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def test_capabilities_follow_the_pipeline(sd, ip2p):
    assert sd.capabilities == frozenset({"generation"}) and ip2p.capabilities == frozenset({"editing"})
    assert DiffusersBackbone.capabilities == frozenset({"generation", "editing"})  # the family, for `models list`


def test_generation_is_seeded_per_sample_not_per_batch(sd):
    batched = assert_seeded_per_sample_not_per_batch(sd, [_generation("a red circle", 1),
                                                          _generation("two blue squares", 2)])
    other = sd.generate([_generation("a red circle", 99)])
    assert np.abs(_pixels(other[0].images[0]) - _pixels(batched[0].images[0])).max() > 20
    params = batched[0].params
    assert (params.seed, params.steps, params.guidance_scale, params.image_size) == (1, 3, 7.5, 64)
    assert params.temperature is None and params.max_new_tokens is None and params.image_guidance_scale is None


def test_a_batch_is_split_by_settings_and_answers_in_order(sd, monkeypatch):
    calls = []
    original = sd._call_pipeline

    def spy(task, requests, params):
        calls.append([r.prompt for r in requests])
        return original(task, requests, params)

    monkeypatch.setattr(sd, "_call_pipeline", spy)
    requests = [_generation("a", 1), _generation("b", 2, steps=2), _generation("c", 3),
                _generation("d", 4, image_size=32)]
    results = sd.generate(requests)
    assert sorted(calls) == [["a", "c"], ["b"], ["d"]]
    assert [r.params.seed for r in results] == [1, 2, 3, 4] and results[3].images[0].size == (32, 32)
    alone = sd.generate([requests[2]])[0]
    assert np.abs(_pixels(alone.images[0]) - _pixels(results[2].images[0])).max() <= 2


def test_editing_keeps_the_input_size_and_seeds_per_sample(ip2p):
    requests = [_editing("make it blue", 1), _editing("make it green", 2, color="yellow")]
    batched = ip2p.edit(requests)
    alone = ip2p.edit([requests[1]])
    assert batched[0].images[0].size == (64, 64)
    assert np.abs(_pixels(batched[1].images[0]) - _pixels(alone[0].images[0])).max() <= 2
    params = batched[0].params
    assert (params.guidance_scale, params.image_guidance_scale, params.image_size) == (7.5, 1.5, 64)
    bigger = ip2p.edit([_editing("make it blue", 1, size=96)])[0]
    assert bigger.images[0].size == (96, 96)


@pytest.mark.parametrize(("backbone", "request_"), [
    ("sd", InferenceRequest(task="editing", prompt="x", images=[Image.new("RGB", (8, 8))])),
    ("sd", InferenceRequest(task="understanding", prompt="what is it?")),
    ("ip2p", InferenceRequest(task="generation", prompt="a cat")),
    ("ip2p", InferenceRequest(task="understanding", prompt="what is it?")),
])
def test_unsupported_tasks_raise_before_any_work(backbone, request_, request, monkeypatch):
    model = request.getfixturevalue(backbone)
    monkeypatch.setattr(model, "_call_pipeline", lambda *a: pytest.fail("the pipeline ran"))
    with pytest.raises(UnsupportedTask, match=f"'diffusers' cannot do '{request_.task}'"):
        model.run([request_])
    method = {"editing": model.edit, "generation": model.generate, "understanding": model.understand}[request_.task]
    with pytest.raises(UnsupportedTask):
        method([request_])


def test_bad_params_are_refused_with_the_reason(sd, ip2p):
    with pytest.raises(ValueError, match="multiple of 4"):
        sd.generate([_generation("a cat", 0, image_size=42)])
    two_images = InferenceRequest(task="editing", prompt="merge", images=[Image.new("RGB", (64, 64))] * 2)
    with pytest.raises(ValueError, match="one image per request"):
        ip2p.edit([two_images])


class _FakePipeline:
    """Records the call; stands in for pipelines too large to build here (OmniGen, FLUX, Qwen-Image-Edit)."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt=None, input_images=None, height=None, width=None, num_inference_steps=50,
                 guidance_scale=2.5, img_guidance_scale=1.6, generator=None, output_type="pil"):
        self.calls.append(dict(prompt=prompt, input_images=input_images, height=height, width=width,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               img_guidance_scale=img_guidance_scale, generator=generator))
        size = height or 16
        return type("Out", (), {"images": [Image.new("RGB", (size, size)) for _ in prompt]})()


def _fake(class_name: str, call, source: str = "fake/model") -> DiffusersBackbone:
    cls = type(class_name, (_FakePipeline,), {"__call__": call})
    return DiffusersBackbone(cls(), ModelInfo(backbone="diffusers", source=source))


def test_omnigen_style_editing_puts_image_placeholders_in_the_prompt():
    omnigen = _fake("OmniGenPipeline", _FakePipeline.__call__, source="Shitao/OmniGen-v1-diffusers")
    assert omnigen.capabilities == frozenset({"generation", "editing"})
    request = InferenceRequest(task="editing", prompt="put the cat on the sofa",
                               images=[Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "red")], params={"seed": 4})
    result = omnigen.edit([request])[0]
    call = omnigen.pipeline.calls[-1]
    assert call["prompt"] == ["<img><|image_1|></img> <img><|image_2|></img> put the cat on the sofa"]
    assert len(call["input_images"][0]) == 2
    # Model card settings for editing with OmniGen v1: guidance 2.0, image guidance 1.6, 50 steps.
    assert (call["guidance_scale"], call["img_guidance_scale"], call["num_inference_steps"]) == (2.0, 1.6, 50)
    assert call["generator"][0].initial_seed() == 4
    assert (result.params.guidance_scale, result.params.image_guidance_scale) == (2.0, 1.6)
    omnigen.generate([InferenceRequest(task="generation", prompt="a cat")])
    assert omnigen.pipeline.calls[-1]["guidance_scale"] == 2.5 and omnigen.pipeline.calls[-1]["input_images"] is None


def test_presets_and_argument_names_per_pipeline():
    def flux_call(self, prompt=None, height=None, width=None, num_inference_steps=28, guidance_scale=3.5,
                  generator=None, output_type="pil"):
        return _FakePipeline.__call__(self, prompt=prompt, height=height, width=width,
                                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                      generator=generator)

    schnell = _fake("FluxPipeline", flux_call, source="black-forest-labs/FLUX.1-schnell")
    card = schnell.default_params("generation")
    assert (card.steps, card.guidance_scale) == (4, 0.0)
    other = _fake("FluxPipeline", flux_call)
    assert (other.default_params("generation").steps, other.default_params("generation").guidance_scale) == (28, 3.5)
    assert schnell.capabilities == frozenset({"generation"})

    def qwen_edit_call(self, image=None, prompt=None, true_cfg_scale=4.0, num_inference_steps=50, generator=None,
                       output_type="pil"):
        self.calls.append({"image": image, "true_cfg_scale": true_cfg_scale})
        return type("Out", (), {"images": [Image.new("RGB", (8, 8)) for _ in prompt]})()

    qwen = _fake("QwenImageEditPipeline", qwen_edit_call)
    qwen.edit([InferenceRequest(task="editing", prompt="x", images=[Image.new("RGB", (8, 8))],
                                params={"guidance_scale": 6.0})])
    assert qwen.pipeline.calls[-1]["true_cfg_scale"] == 6.0
    with pytest.raises(ValueError, match="no image guidance"):
        qwen.edit([InferenceRequest(task="editing", prompt="x", images=[Image.new("RGB", (8, 8))],
                                    params={"image_guidance_scale": 1.5})])
    for hub_id, presets in HUB_PRESETS.items():
        assert presets and all(isinstance(p, InferenceParams) for p in presets.values()), hub_id


def test_pipelines_that_are_not_baselines_are_refused():
    class StableDiffusionImg2ImgPipeline:
        def __call__(self, prompt=None, image=None):
            pass

    with pytest.raises(ConfigError, match="neither text-to-image nor instruction editing"):
        pipeline_capabilities(StableDiffusionImg2ImgPipeline)


def test_tiny_pipelines_are_deterministic_from_their_seed(tmp_path, tiny_sd_dir, tiny_ip2p_dir):
    build_tiny(tmp_path / "sd", seed=0)
    for part in ("unet", "vae", "text_encoder"):
        (original,) = (tiny_sd_dir / part).glob("*.safetensors")
        assert (tmp_path / "sd" / part / original.name).read_bytes() == original.read_bytes(), part
    assert (tiny_ip2p_dir / "model_index.json").is_file()
    assert "StableDiffusionInstructPix2PixPipeline" in (tiny_ip2p_dir / "model_index.json").read_text()


def test_describe_tells_the_cli_what_it_is():
    info = DiffusersBackbone.describe()
    assert info["route"] == "diffusers" and info["capabilities"] == ["editing", "generation"]
    assert any("diffusers" in r for r in info["requires"])
    assert "black-forest-labs/FLUX.1-dev" in info["hub_ids"]
    assert inspect.isfunction(build_tiny_editing)
