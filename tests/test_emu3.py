"""The Emu3 adapter on a tiny random-weight Emu3ForConditionalGeneration pair (Gen + Chat)."""

import pytest
import torch

from model_flavors.emu3 import CHAT_SUBFOLDER, EOL_TOKEN, Emu3, Emu3ImageGridLogitsProcessor, build_tiny
from tests.conftest import tiny_dir_fixture
from tests.generation_checks import assert_seeded_per_sample_not_per_batch
from tests.understanding_checks import (
    assert_batching_changes_no_reply,
    assert_each_request_keeps_its_token_budget,
    circle_scene,
)
from umm_harness.core.backbone import UnsupportedTask
from umm_harness.core.requests import InferenceRequest


tiny_emu3_dir = tiny_dir_fixture("emu3", build_tiny)


@pytest.fixture
def emu3(tiny_emu3_dir) -> Emu3:
    return Emu3.load(str(tiny_emu3_dir))


QUESTIONS = [
    InferenceRequest(task="understanding", prompt="Is there a red circle?", images=[circle_scene("red")]),
    InferenceRequest(task="understanding", prompt="How many squares are there?", images=[circle_scene("blue", 128)]),
    InferenceRequest(task="understanding", prompt="Describe the sky.", params={"max_new_tokens": 5}),
    InferenceRequest(task="understanding", prompt="Compare them.", images=[circle_scene("green", 40), circle_scene("red", 200)]),
]


def _generation(prompt: str, seed: int, **params) -> InferenceRequest:
    return InferenceRequest(task="generation", prompt=prompt, params={"seed": seed, **params})


def test_batched_understanding_equals_one_at_a_time(emu3):
    assert_batching_changes_no_reply(emu3, QUESTIONS)


def test_understanding_respects_each_requests_max_new_tokens(emu3):
    assert_each_request_keeps_its_token_budget(emu3, QUESTIONS[0])
    assert emu3.understand([QUESTIONS[0]])[0].params.max_new_tokens == 32  # the tiny bundle's default
    hot = QUESTIONS[0].params.model_copy(update={"temperature": 0.7})
    with pytest.raises(ValueError, match="greedy"):
        emu3.understand([QUESTIONS[0].model_copy(update={"params": hot})])


def test_generation_is_seeded_per_sample_not_per_batch(emu3):
    # same tokens alone and in a batch; the VQ decoder may differ by rounding
    batched = assert_seeded_per_sample_not_per_batch(emu3, [_generation("a photo of a red circle", 1),
                                                            _generation("a photo of two blue squares", 2)])
    other = emu3.generate([_generation("a photo of a red circle", 99)])
    assert other[0].images[0].tobytes() != batched[0].images[0].tobytes()
    params = batched[0].params
    assert (params.seed, params.guidance_scale, params.temperature, params.image_size) == (1, 3.0, 1.0, 64)


def test_sampled_tokens_follow_the_image_grid(emu3):
    gen = emu3._role("gen")
    params = [p.merged_over(emu3.default_params("generation")) for p in (_generation("a cat", 5).params,)]
    grid = emu3._sample_image_tokens(gen, ["a cat"], params, size=48)
    assert grid.shape == (1, 6, 7)  # 48 px / 8 = 6 rows of 6 visual tokens + EOL
    eol = gen.processor.tokenizer.convert_tokens_to_ids(EOL_TOKEN)
    visual = set(gen.model.vocabulary_mapping.image_tokens)
    assert (grid[..., -1] == eol).all()
    assert set(grid[..., :-1].flatten().tolist()) <= visual
    assert emu3.generate([_generation("a cat", 5, image_size=48)])[0].images[0].size == (48, 48)


def test_grid_logits_processor_drives_transformers_generate(emu3):
    """The same processor constrains `model.generate()`: rows, EOL, then EOF, EOI, EOS."""
    gen = emu3._role("gen")
    tokenizer = gen.processor.tokenizer
    inputs = gen.processor(text=["a red circle"], return_for_image_generation=True, image_area=32 * 32,
                           return_tensors="pt")
    height, width = (int(v) for v in inputs.pop("image_sizes")[0])
    grid = emu3.grid_processor(gen, height, width, prompt_length=inputs["input_ids"].shape[1])
    out = gen.model.generate(**inputs, logits_processor=[grid], do_sample=True, max_new_tokens=grid.grid_length + 3,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    ids = tokenizer.convert_tokens_to_ids
    assert new[-3:] == [ids(tokenizer.eof_token), ids(tokenizer.eoi_token), tokenizer.eos_token_id]
    rows = torch.tensor(new[:-3]).view(height, width + 1)
    assert (rows[:, -1] == ids(EOL_TOKEN)).all()
    image = gen.model.decode_image_tokens(image_tokens=torch.tensor([new]), height=height, width=width)
    assert image.shape[-2:] == (32, 32)


def test_grid_processor_masks_everything_but_the_allowed_tokens():
    processor = Emu3ImageGridLogitsProcessor(2, 3, visual_token_ids=[10, 11, 12], eol_id=5, eof_id=6, eoi_id=7,
                                             eos_id=8, pad_id=0, prompt_length=4)
    scores = torch.zeros(2, 16)
    steps = {0: [10, 11, 12], 2: [10, 11, 12], 3: [5], 7: [5], 8: [6], 9: [7], 10: [8], 12: [0]}
    for step, allowed in steps.items():
        masked = processor(torch.zeros(2, 4 + step, dtype=torch.long), scores)
        assert torch.isfinite(masked[0]).nonzero().flatten().tolist() == allowed, step
    assert processor.grid_length == 8


def test_unsupported_tasks_raise_before_any_work(tiny_emu3_dir):
    emu3 = Emu3.load(str(tiny_emu3_dir))
    editing = InferenceRequest(task="editing", prompt="make it blue", images=[circle_scene("red")])
    with pytest.raises(UnsupportedTask, match="'emu3' cannot do 'editing'"):
        emu3.run([editing])
    with pytest.raises(UnsupportedTask):
        emu3.edit([editing])
    assert emu3._loaded == {}  # not even the weights were loaded


def test_generation_refuses_sizes_off_the_token_grid(emu3):
    with pytest.raises(ValueError, match="multiple of 8"):
        emu3.generate([_generation("a cat", 0, image_size=60)])


def test_roles_come_from_the_bundle_and_share_the_vq_tokenizer(tiny_emu3_dir):
    emu3 = Emu3.load(str(tiny_emu3_dir))
    assert emu3._sources["gen"].subfolder is None and emu3._sources["chat"].subfolder == CHAT_SUBFOLDER
    gen, chat = emu3._role("gen"), emu3._role("chat")
    assert gen.model is not chat.model
    assert chat.model.model.vqmodel is gen.model.model.vqmodel
    assert emu3.default_params("generation").image_size == 64


def test_either_published_id_resolves_to_the_pair_without_downloading():
    for hub_id in ("BAAI/Emu3-Gen-hf", "BAAI/Emu3-Chat-hf"):
        emu3 = Emu3.load(hub_id, revision="abc", dtype="bfloat16")
        assert emu3._sources["gen"].source == "BAAI/Emu3-Gen-hf"
        assert emu3._sources["chat"].source == "BAAI/Emu3-Chat-hf"
        assert emu3.info.source == hub_id and emu3._loaded == {}
        assert emu3.default_params("generation").image_size == 720  # model card: image area 720²
        assert emu3.default_params("understanding").max_new_tokens == 1024
    assert Emu3.load("BAAI/Emu3-Gen-hf", revision="abc")._sources["gen"].revision == "abc"


def test_a_single_checkpoint_folder_serves_both_roles(tmp_path, tiny_emu3_dir):
    emu3 = Emu3.load(str(tiny_emu3_dir))
    gen = emu3._role("gen")
    gen.model.save_pretrained(tmp_path / "one")
    gen.processor.save_pretrained(tmp_path / "one")
    single = Emu3.load(str(tmp_path / "one"))
    assert single._role("chat") is single._role("gen")
    assert single.understand(QUESTIONS[2:3])[0].text


def test_tiny_model_is_deterministic_from_its_seed(tmp_path, tiny_emu3_dir):
    build_tiny(tmp_path / "again", seed=0)
    for name in ("model.safetensors", f"{CHAT_SUBFOLDER}/model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_emu3_dir / name).read_bytes(), name


def test_describe_tells_the_cli_what_it_is():
    info = Emu3.describe()
    assert info["capabilities"] == ["generation", "understanding"] and info["route"] == "transformers"
    assert "BAAI/Emu3-Gen-hf" in info["hub_ids"] and info["requires"]
