"""BLIP3o-NEXT (native parts, own glue), MMaDA and Show-o (their authors' code from a checkout) as tiny
random-weight models of their real classes, through the same path as Janus-Pro: request
translation and errors, per-sample seeds, save → reload in a fresh process with the same
outputs, log → register → `umm eval` on `shapes`, and (slow) `mlflow models serve`.

MMaDA's and Show-o's code are the pinned snapshots in ../shared/upstream/{mmada,show-o}, imported
from there at run time as a user's checkout would be."""

import json
from functools import partial

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from model_flavors import flavor, registry
from model_flavors.blip3o_next import Blip3oNext, _filter_top_k_top_p
from model_flavors.blip3o_next import build_tiny as build_tiny_blip3o
from model_flavors.mmada import UPSTREAM, Mmada, to_vq_pixels
from model_flavors.mmada import build_tiny as build_tiny_mmada
from model_flavors.show_o import ShowO
from model_flavors.show_o import build_tiny as build_tiny_show_o
from tests.conftest import REPO
from tests.serving import invoke, served
from tests.reload import assert_reloads_the_same
from tests.test_backbones_flavor import tiny_dir
from umm_harness.config import EvalRecipe
from umm_harness.core.backbone import UnsupportedTask
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image, encode_png
from umm_harness.evaluate import evaluate

MMADA_REPO = REPO.parent / "shared" / "upstream" / "mmada"
SHOW_O_REPO = REPO.parent / "shared" / "upstream" / "show-o"
CHECKOUTS = {"mmada": MMADA_REPO, "show-o": SHOW_O_REPO}
needs_mmada = pytest.mark.skipif(not MMADA_REPO.is_dir(), reason=f"no MMaDA checkout at {MMADA_REPO}")
needs_show_o = pytest.mark.skipif(not SHOW_O_REPO.is_dir(), reason=f"no Show-o checkout at {SHOW_O_REPO}")
SCENE = encode_png(Image.new("RGB", (64, 64), "red"))
# Few diffusion steps and short answers keep the tiny models fast; the adapters' defaults are the model cards'.
PARAMS = {"seed": 5, "steps": 2, "max_new_tokens": 8}
CASES = {
    "blip3o-next": ("blip3o_next", build_tiny_blip3o, Blip3oNext, [
        {"task": "generation", "prompt": "a photo of a red circle", "images": []},
        {"task": "generation", "prompt": "two blue squares", "images": []},
    ]),
    "mmada": ("mmada", partial(build_tiny_mmada, repo_path=MMADA_REPO), Mmada, [
        {"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]},
        {"task": "generation", "prompt": "a photo of a red circle", "images": []},
    ]),
    "show-o": ("show_o", partial(build_tiny_show_o, repo_path=SHOW_O_REPO), ShowO, [
        {"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]},
        {"task": "generation", "prompt": "a photo of a red circle", "images": []},
    ]),
}


def _generation(prompt="a red circle", **params):
    return InferenceRequest(task="generation", prompt=prompt, params=params)


@pytest.fixture(scope="module")
def blip3o(tmp_path_factory):
    return Blip3oNext.load(str(tiny_dir(tmp_path_factory, "blip3o-next", build_tiny_blip3o)))


@pytest.fixture(scope="module")
def mmada(tmp_path_factory):
    if not MMADA_REPO.is_dir():
        pytest.skip(f"no MMaDA checkout at {MMADA_REPO}")
    return Mmada.load(str(tiny_dir(tmp_path_factory, "mmada", CASES["mmada"][1])))


# -- BLIP3o-NEXT --------------------------------------------------------------------------------

def test_blip3o_next_defaults_are_the_repositorys_and_sizes_are_checked(blip3o):
    card = blip3o.default_params("generation")
    assert (card.guidance_scale, card.steps, card.temperature) == (2.0, 30, 1.0)
    assert (blip3o.sampling.top_k, blip3o.sampling.top_p) == (1200, 0.95)
    assert card.image_size == blip3o.native_image_size == 64
    assert blip3o.prompt_text("a cat").endswith(
        "user\nPlease generate image based on the following caption: a cat<|im_end|>\n<|im_start|>assistant\n"
        "<im_start><S0>")
    with pytest.raises(ValueError, match="64px images only; got image_size=128"):
        blip3o.generate([_generation(image_size=128)])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        blip3o.generate([_generation(temperature=0)])
    with pytest.raises(UnsupportedTask, match="cannot do 'understanding'"):
        blip3o.run([InferenceRequest(task="understanding", prompt="what is it?")])


def test_top_k_then_top_p_keep_the_likeliest_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(_filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    # top-p keeps the token that crosses 0.7 and nothing after it
    assert torch.isfinite(_filter_top_k_top_p(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(_filter_top_k_top_p(logits, 0, 0.4)).tolist() == [[True, False, False, False]]


def test_blip3o_next_image_depends_on_its_seed_not_its_batch(blip3o):
    alone = blip3o.generate([_generation("two blue squares", seed=7, steps=2)])[0].images[0]
    batch = blip3o.generate([_generation("a red circle", seed=1, steps=2),
                             _generation("two blue squares", seed=7, steps=2),
                             _generation("two blue squares", seed=8, steps=3)])
    assert np.abs(np.asarray(alone, int) - np.asarray(batch[1].images[0], int)).max() <= 1
    assert not np.array_equal(np.asarray(batch[1].images[0]), np.asarray(batch[2].images[0]))
    assert [r.params.steps for r in batch] == [2, 2, 3]


def test_blip3o_next_refuses_a_folder_that_is_not_its_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ConfigError, match="not a BLIP3o-NEXT config .*image_start_tag_id"):
        Blip3oNext.load(str(tmp_path))


# -- MMaDA --------------------------------------------------------------------------------------

def test_mmada_checkout_is_found_checked_and_explained(tmp_path, monkeypatch):
    monkeypatch.delenv(UPSTREAM.env, raising=False)
    with pytest.raises(ConfigError, match="no checkout is set: clone https://github.com/Gen-Verse/MMaDA"):
        UPSTREAM.resolve(None)
    with pytest.raises(ConfigError, match="does not exist"):
        UPSTREAM.resolve(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"not a checkout .*no models/modeling_mmada.py"):
        UPSTREAM.resolve(tmp_path)
    fake = tmp_path / "other"
    for marker in UPSTREAM.markers:
        (fake / marker).parent.mkdir(parents=True, exist_ok=True)
        (fake / marker).write_text("")
    (fake / ".upstream-commit").write_text("0" * 40 + "\n")
    with pytest.raises(ConfigError, match=f"at commit 000000000000, but the adapter was written against "
                                          f"{UPSTREAM.commit[:12]}.*{UPSTREAM.env}_ANY_COMMIT=1"):
        UPSTREAM.resolve(fake)
    monkeypatch.setenv(UPSTREAM.any_commit_env, "1")
    assert UPSTREAM.resolve(fake) == fake.resolve()


def test_mmada_understanding_schedule_follows_the_repository():
    assert Mmada.block_schedule(512, None) == (256, 128)  # steps = tokens/2, block = tokens/4
    assert Mmada.block_schedule(8, 2) == (4, 2)  # steps rounded up to a multiple of the 4 blocks
    steps, block = Mmada.block_schedule(7, None)
    assert 7 % block == 0 and steps % (7 // block) == 0


def test_vq_pixels_are_a_centre_crop_in_minus_one_to_one():
    image = Image.new("RGB", (96, 64), "white")
    image.paste((0, 0, 0), (0, 0, 8, 64))  # a black band the centre crop cuts away
    pixels = to_vq_pixels(image, 32)
    assert pixels.shape == (3, 32, 32) and torch.allclose(pixels, torch.ones_like(pixels))


@needs_mmada
def test_mmada_defaults_errors_and_per_sample_seeds(mmada):
    card = mmada.default_params("generation")
    assert (card.guidance_scale, card.steps, card.temperature, card.image_size) == (3.5, 15, 1.0, 64)
    assert mmada.default_params("understanding").max_new_tokens == 512
    with pytest.raises(ValueError, match="64px images only"):
        mmada.generate([_generation(image_size=512)])
    with pytest.raises(ValueError, match="one image per question"):
        mmada.understand([InferenceRequest(task="understanding", prompt="same?", images=[SCENE, SCENE])])
    with pytest.raises(UnsupportedTask, match="cannot do 'editing'"):
        mmada.run([InferenceRequest(task="editing", prompt="make it blue", images=[SCENE])])
    first, second = mmada.generate([_generation(seed=3, steps=2), _generation(seed=4, steps=2)])
    again = mmada.generate([_generation(seed=4, steps=2)])[0]
    assert np.array_equal(np.asarray(second.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))


# -- Show-o --------------------------------------------------------------------------------------

@needs_show_o
def test_show_o_defaults_errors_and_per_sample_seeds(tmp_path_factory):
    show_o = ShowO.load(str(tiny_dir(tmp_path_factory, "show-o", CASES["show-o"][1])))
    card = show_o.default_params("generation")
    assert (card.guidance_scale, card.steps, card.temperature, card.image_size) == (5.0, 50, 1.0, 64)
    assert show_o.default_params("understanding").max_new_tokens == 100
    with pytest.raises(ValueError, match="exactly one image; got 0"):
        show_o.understand([InferenceRequest(task="understanding", prompt="what is it?")])
    with pytest.raises(ValueError, match="greedy"):
        show_o.understand([InferenceRequest(task="understanding", prompt="what?", images=[SCENE],
                                            params={"temperature": 0.7})])
    first, second = show_o.generate([_generation(seed=3, steps=2), _generation(seed=4, steps=2)])
    again = show_o.generate([_generation(seed=4, steps=2)])[0]
    assert np.array_equal(np.asarray(second.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))


# -- through the flavor and the eval loop ---------------------------------------------------------

def _cases():
    return {name: case for name, case in CASES.items() if name not in CHECKOUTS or CHECKOUTS[name].is_dir()}


@pytest.mark.slow
def test_round_trip_in_a_fresh_process_gives_the_same_outputs(tmp_path, tmp_path_factory):
    # A diffusion pipeline's float maths may round differently between processes (thread count).
    assert_reloads_the_same({name: (cls.load(str(tiny_dir(tmp_path_factory, name, builder))), rows)
                             for name, (_, builder, cls, rows) in _cases().items()}, PARAMS, tmp_path, pixel_tolerance=2)


@pytest.mark.slow
def test_log_register_load_by_uri_and_eval_on_shapes(workspace, tmp_path_factory):
    mlflow.set_experiment("wave2-backbones")
    for name, (key, builder, cls, rows) in _cases().items():
        folder = tiny_dir(tmp_path_factory, name, builder)
        backbone = cls.load(str(folder))
        with mlflow.start_run():
            info = flavor.log_model(backbone, registered_model_name=f"{name}-tiny")
        assert info.registered_model_version == 1
        assert registry.infer_backbone(str(folder)) == key
        got = mlflow.pyfunc.load_model(f"models:/{name}-tiny/1").predict(pd.DataFrame(rows[-1:]), params=PARAMS)
        want = flavor.UmmPyfuncModel(backbone).predict(pd.DataFrame(rows[-1:]), params=PARAMS)
        assert got["images"].iloc[0] == want["images"].iloc[0], name

        summary = evaluate(EvalRecipe(model=f"models:/{name}-tiny/1", limit=4, seed=1, batch_size=4,
                                      params=InferenceParams(steps=2, max_new_tokens=8), experiment=f"eval-{name}"))
        parent = mlflow.MlflowClient().get_run(summary.run_id)
        assert parent.data.tags["umm.backbone"] == key and parent.data.tags["umm.suite"] == "shapes"
        assert summary.metrics["shapes/failed_samples"] == 0
        assert 0.0 <= summary.metrics["shapes/generation_overall"] <= 1.0
        if key != "blip3o_next":
            assert 0.0 <= summary.metrics["shapes/understanding_acc"] <= 1.0


@pytest.mark.slow
def test_served_by_mlflow_models_serve(tmp_path, tmp_path_factory):
    for name, (key, builder, cls, rows) in _cases().items():
        model_dir = tmp_path / name
        flavor.save_model(cls.load(str(tiny_dir(tmp_path_factory, name, builder))), model_dir)
        with served(str(model_dir), cwd=tmp_path, timeout_s=300) as url:
            answer = invoke(url, rows, params=PARAMS)
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            generated = predictions[-1]["images"][0]
            assert decode_image(generated).size == (64, 64)
            assert invoke(url, rows[-1:], params={**PARAMS, "seed": PARAMS["seed"] + len(rows) - 1}).json()[
                "predictions"][0]["images"][0] == generated  # row i runs with seed + i
            refused = invoke(url, [{"task": "editing", "prompt": "make it blue", "images": [SCENE]}])
            assert refused.status_code == 400 and "cannot do 'editing'" in refused.json()["message"], name
