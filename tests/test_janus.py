"""The Janus-Pro adapter on a tiny random-weight JanusForConditionalGeneration."""

import numpy as np
import pytest

from model_flavors.janus import JanusPro, build_tiny
from model_flavors.registry import backbone_class, infer_backbone
from tests.understanding_checks import (
    assert_batching_changes_no_reply,
    assert_each_request_keeps_its_token_budget,
    circle_scene,
)
from umm_harness.core.backbone import UnsupportedTask
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceRequest

QUESTIONS = [
    InferenceRequest(task="understanding", prompt="Is there a red circle?", images=[circle_scene("red")]),
    InferenceRequest(task="understanding", prompt="How many squares are there? Answer with one word.",
                     images=[circle_scene("blue", 128)]),
    InferenceRequest(task="understanding", prompt="Describe the sky.", params={"max_new_tokens": 5}),
]


def test_batched_understanding_equals_one_at_a_time(tiny_janus):
    assert_batching_changes_no_reply(tiny_janus, QUESTIONS)


def test_understanding_respects_each_requests_max_new_tokens(tiny_janus):
    assert_each_request_keeps_its_token_budget(tiny_janus, QUESTIONS[0])
    assert tiny_janus.understand([QUESTIONS[0]])[0].params.max_new_tokens == 32  # the model's default


def _generation(prompt: str, seed: int) -> InferenceRequest:
    return InferenceRequest(task="generation", prompt=prompt, params={"seed": seed})


def test_generation_is_seeded_per_sample_not_per_batch(tiny_janus):
    requests = [_generation("a photo of a red circle", 1), _generation("a photo of two blue squares", 2)]
    batched = tiny_janus.generate(requests)
    alone = tiny_janus.generate([requests[1]])
    again = tiny_janus.generate(requests)
    size = tiny_janus.native_image_size
    assert batched[0].images[0].size == (size, size)
    a, b = np.asarray(batched[1].images[0], dtype=int), np.asarray(alone[0].images[0], dtype=int)
    assert np.abs(a - b).max() <= 2  # same tokens; the VQ decoder may differ by rounding in a batch
    assert all(x.images[0].tobytes() == y.images[0].tobytes() for x, y in zip(batched, again))
    other_seed = tiny_janus.generate([_generation("a photo of a red circle", 99)])
    assert other_seed[0].images[0].tobytes() != batched[0].images[0].tobytes()
    assert batched[0].params.guidance_scale == 5.0 and batched[0].params.seed == 1


def test_unsupported_tasks_raise_before_any_work(tiny_janus):
    editing = InferenceRequest(task="editing", prompt="make it blue", images=[circle_scene("red")])
    with pytest.raises(UnsupportedTask, match="janus_pro' cannot do 'editing'"):
        tiny_janus.run([editing])
    with pytest.raises(ValueError, match="one task kind"):
        tiny_janus.run([QUESTIONS[0], _generation("a cat", 0)])


def test_generation_refuses_a_size_it_cannot_make(tiny_janus):
    with pytest.raises(ValueError, match="generates 64px images only"):
        tiny_janus.generate([InferenceRequest(task="generation", prompt="a cat", params={"image_size": 512})])


def test_tiny_model_is_deterministic_from_its_seed(tmp_path, tiny_janus_dir):
    rebuilt = build_tiny(tmp_path / "again", seed=0)
    original = JanusPro.load(str(tiny_janus_dir))
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tiny_janus_dir / "model.safetensors").read_bytes()
    assert rebuilt.understand(QUESTIONS[:1])[0].text == original.understand(QUESTIONS[:1])[0].text


def test_backbone_keys_and_checkpoint_folders_resolve(tiny_janus_dir):
    assert backbone_class("janus-pro") is JanusPro
    assert infer_backbone(str(tiny_janus_dir)) == "janus_pro"
    assert infer_backbone("deepseek-community/Janus-Pro-7B") == "janus_pro"
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        backbone_class("nope")
    with pytest.raises(ConfigError, match="cannot tell which backbone"):
        infer_backbone("someone/some-model")
