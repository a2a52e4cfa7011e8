"""Emu3 and the diffusers baselines through the unchanged `umm` flavor and the eval loop:
save → reload in a fresh process with the same outputs, log → register → load by `models:/`,
`umm eval` on `shapes`, and (slow) `mlflow models serve`."""

from contextlib import ExitStack

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image

from model_flavors import flavor, registry
from model_flavors.diffusers_backbone import DiffusersBackbone, build_tiny, build_tiny_editing
from model_flavors.emu3 import Emu3
from model_flavors.emu3 import build_tiny as build_tiny_emu3
from tests.conftest import tiny_dir
from tests.reload import assert_reloads_the_same
from tests.serving import invoke, served
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate
from umm_harness.core.requests import InferenceParams, decode_image, encode_png

SCENE = encode_png(Image.new("RGB", (64, 64), "red"))

CASES = {
    "emu3": ("emu3", build_tiny_emu3, Emu3, [
        {"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]},
        {"task": "generation", "prompt": "a photo of a red circle", "images": []},
    ]),
    "diffusers-sd": ("diffusers", build_tiny, DiffusersBackbone, [
        {"task": "generation", "prompt": "a photo of a red circle", "images": []},
        {"task": "generation", "prompt": "two blue squares", "images": []},
    ]),
    "diffusers-ip2p": ("diffusers", build_tiny_editing, DiffusersBackbone, [
        {"task": "editing", "prompt": "make it blue", "images": [SCENE]},
    ]),
}
UNSUPPORTED = {
    "emu3": {"task": "editing", "prompt": "make it blue", "images": [SCENE]},
    "diffusers-sd": {"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]},
    "diffusers-ip2p": {"task": "generation", "prompt": "a red circle", "images": []},
}
PARAMS = {"seed": 5, "steps": 3}


def _pixels(encoded: str) -> np.ndarray:
    return np.asarray(decode_image(encoded), dtype=int)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    name = request.param
    key, builder, cls, rows = CASES[name]
    folder = tiny_dir(tmp_path_factory, name, builder)
    return name, key, cls.load(str(folder)), rows


def test_saved_model_records_the_backbone(case, tmp_path):
    name, key, backbone, _ = case
    flavor.save_model(backbone, tmp_path / "m")
    umm = Model.load(tmp_path / "m" / "MLmodel").flavors["umm"]
    assert umm["backbone"] == key and umm["capabilities"] == sorted(backbone.capabilities)
    assert umm["weights"] == "weights" and len(umm["weights_digest"]) == 64
    if name == "emu3":
        assert (tmp_path / "m" / "weights" / "chat" / "model.safetensors").is_file()  # the pair, bundled
    else:
        assert (tmp_path / "m" / "weights" / "model_index.json").is_file()


def test_unsupported_rows_are_refused_before_any_work(case):
    name, _, backbone, _ = case
    with pytest.raises(MlflowException, match="cannot do") as caught:
        flavor.UmmPyfuncModel(backbone).predict(pd.DataFrame([UNSUPPORTED[name]]))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_round_trip_in_a_fresh_process_gives_the_same_outputs(tmp_path, tmp_path_factory):
    # A diffusion pipeline's float maths may round differently between processes (thread count).
    assert_reloads_the_same({name: (cls.load(str(tiny_dir(tmp_path_factory, name, builder))), rows)
                             for name, (_, builder, cls, rows) in CASES.items()}, PARAMS, tmp_path, pixel_tolerance=2)


def test_log_register_load_by_uri_and_eval_on_shapes(workspace, tmp_path_factory):
    mlflow.set_experiment("backbones-flavor")
    for name, (key, builder, cls, rows) in CASES.items():
        backbone = cls.load(str(tiny_dir(tmp_path_factory, name, builder)))
        with mlflow.start_run():
            info = flavor.log_model(backbone, registered_model_name=f"{name}-tiny")
        assert info.registered_model_version == 1
        loaded = flavor.load_model(f"models:/{name}-tiny/1")
        assert loaded.key == key and loaded.capabilities == backbone.capabilities
        expected = flavor.UmmPyfuncModel(backbone).predict(pd.DataFrame(rows[:1]), params=PARAMS)
        got = mlflow.pyfunc.load_model(f"models:/{name}-tiny/1").predict(pd.DataFrame(rows[:1]), params=PARAMS)
        assert got["text"].iloc[0] == expected["text"].iloc[0] or got["text"].isna().all()
        for a, b in zip(got["images"].iloc[0], expected["images"].iloc[0]):
            assert np.abs(_pixels(a) - _pixels(b)).max() <= 2, name

    # `umm eval` on the built-in shapes suite, as the Janus-Pro path runs it.
    for name, key in (("emu3", "emu3"), ("diffusers-sd", "diffusers")):
        folder = tiny_dir(tmp_path_factory, name, CASES[name][1])
        summary = evaluate(EvalRecipe(model=str(folder), backbone=key, limit=9, seed=1, batch_size=8,
                                      params=InferenceParams(steps=3), experiment=f"eval-{name}"))
        parent = mlflow.MlflowClient().get_run(summary.run_id)
        assert parent.data.tags["umm.backbone"] == key and parent.data.tags["umm.suite"] == "shapes"
        metrics = summary.metrics
        assert 0.0 <= metrics["shapes/generation_overall"] <= 1.0 and metrics["shapes/failed_samples"] == 0
        if key == "diffusers":  # it cannot understand: those samples are skipped with a recorded reason
            assert metrics["shapes/skipped_samples"] > 0
        else:
            assert metrics["shapes/skipped_samples"] == 0 and 0.0 <= metrics["shapes/understanding_acc"] <= 1.0


# -- `mlflow models serve` -----------------------------------------------------------------------

@pytest.fixture
def serve():
    """Start `mlflow models serve` on saved model folders; every server is stopped after the test."""
    with ExitStack() as servers:
        yield lambda model_dir: servers.enter_context(served(str(model_dir), cwd=model_dir.parent))


@pytest.mark.slow
def test_serves_emu3_understanding_and_generation(serve, tmp_path_factory, tmp_path):
    backbone = Emu3.load(str(tiny_dir(tmp_path_factory, "emu3", build_tiny_emu3)))
    flavor.save_model(backbone, tmp_path / "emu3")
    url = serve(tmp_path / "emu3")
    answer = invoke(url, [{"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]}])
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["predictions"][0]["text"], str)
    picture = invoke(url, [{"task": "generation", "prompt": "a red circle", "images": []}], params={"seed": 3})
    assert picture.status_code == 200, picture.text
    assert decode_image(picture.json()["predictions"][0]["images"][0]).size == (64, 64)
    again = invoke(url, [{"task": "generation", "prompt": "a red circle", "images": []}], params={"seed": 3})
    assert again.json()["predictions"][0]["images"] == picture.json()["predictions"][0]["images"]
    refused = invoke(url, [{"task": "editing", "prompt": "make it blue", "images": [SCENE]}])
    assert refused.status_code == 400 and "cannot do 'editing'" in refused.json()["message"]


@pytest.mark.slow
def test_serves_a_diffusers_pipeline(serve, tmp_path_factory, tmp_path):
    backbone = DiffusersBackbone.load(str(tiny_dir(tmp_path_factory, "diffusers-sd", build_tiny)))
    flavor.save_model(backbone, tmp_path / "sd")
    url = serve(tmp_path / "sd")
    picture = invoke(url, [{"task": "generation", "prompt": "a red circle", "images": []}],
                      params={"seed": 3, "steps": 3, "guidance_scale": 4.0})
    assert picture.status_code == 200, picture.text
    assert decode_image(picture.json()["predictions"][0]["images"][0]).size == (64, 64)
    refused = invoke(url, [{"task": "understanding", "prompt": "what is it?", "images": []}])
    assert refused.status_code == 400 and "cannot do 'understanding'" in refused.json()["message"]


def test_the_registry_knows_every_adapters_key_and_hub_ids():
    """registry.HUB_IDS is written out (to import no model library); it must not drift from the adapters."""
    for key in registry.BACKBONES:
        cls = registry.backbone_class(key)
        assert cls.key == key
        assert {hub_id: registry.HUB_IDS.get(hub_id) for hub_id in cls.hub_ids} == {h: key for h in cls.hub_ids}


def test_janus_presets_wire_into_the_registry(tiny_janus):
    from model_flavors import janus_presets
    from model_flavors.janus import JanusPro

    entries = janus_presets.hub_ids()
    assert set(entries) == {"deepseek-community/Janus-1.3B", "deepseek-community/Janus-Pro-1B",
                            "deepseek-community/Janus-Pro-7B"}
    assert all(registry.backbone_class(key) is JanusPro for key in entries.values())
    seven = janus_presets.preset("deepseek-ai/Janus-Pro-7B")
    assert seven is janus_presets.preset("janus-pro-7b") is janus_presets.preset("deepseek-community/Janus-Pro-7B")
    card = seven.generation
    assert (card.guidance_scale, card.temperature, card.image_size, seven.samples_per_prompt) == (5.0, 1.0, 384, 16)
    assert seven.image_tokens == (384 // 16) ** 2
    adapter = tiny_janus.default_params("generation")  # the adapter's defaults are the card's (at native size)
    assert (adapter.guidance_scale, adapter.temperature) == (card.guidance_scale, card.temperature)
    assert "deepseek-community/Janus-Pro-7B" in janus_presets.upstream_hint("deepseek-ai/Janus-Pro-7B")
    assert janus_presets.upstream_hint("deepseek-community/Janus-Pro-7B") is None


def test_describe_fields_for_models_list():
    from model_flavors.bagel import Bagel

    for cls in (Emu3, DiffusersBackbone, Bagel):
        info = cls.describe()
        assert set(info) == {"key", "capabilities", "route", "requires", "hub_ids", "notes", "attn_implementations",
                             "env_manager"}, cls
        assert info["env_manager"] == "local", cls
        assert info["key"] == cls.key and info["capabilities"] == sorted(cls.capabilities)
