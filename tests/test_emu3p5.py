"""Emu3.5 on its authors' code (../shared/upstream/emu3.5), which runs only on transformers 4.48:
the adapter declares that environment, the harness's own process explains why it cannot import
it, and (slow) a tiny random-weight Emu3.5 of the real upstream classes, built inside the
environment MLflow makes for it, goes the way of every backbone — served by `mlflow models serve
--env-manager uv` (understanding, generation, editing), the same outputs from a fresh process,
logged, registered and evaluated on `shapes` by `umm eval` through its own environment."""

import json
from types import SimpleNamespace

import pytest
from mlflow.models import Model
from PIL import Image

from model_flavors import environment, flavor
from model_flavors.emu3p5 import TEXT_VOCAB, UPSTREAM, Emu3p5, engine_request, engine_tokens, tiny_ranks
from tests.own_environment import (
    RED_SCENE,
    assert_a_fresh_process_answers_alike,
    assert_registers_and_evaluates_on_shapes,
    served_answers,
    shared_checkout,
    tiny_in_its_own_environment,
)
from tests.reload import task_rows
from tests.serving import invoke
from tests.stand_ins import JsonStandIn, serving
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image

CHECKOUT, pytestmark = shared_checkout("emu3.5")
SCENE = RED_SCENE
ROWS = task_rows(SCENE)  # understanding, generation, editing
PARAMS = {"seed": 5, "max_new_tokens": 8}


def _checkpoint(source: str) -> flavor.Checkpoint:
    return flavor.Checkpoint(backbone="emu3_5", source=source, repo_path=CHECKOUT)


def test_the_model_carries_its_own_environment_and_the_checkout(tmp_path):
    flavor.save_model(_checkpoint("BAAI/Emu3.5-Image"), tmp_path / "m")
    requirements = (tmp_path / "m" / "requirements.txt").read_text().split()
    assert "transformers==4.48.2" in requirements and "torch==2.13.0" in requirements
    assert not any(r.startswith("transformers>=") for r in requirements)  # its pin replaces the harness's
    assert requirements == environment.requirements_for(Emu3p5)
    umm = Model.load(tmp_path / "m" / "MLmodel").flavors["umm"]
    assert umm["env_manager"] == "uv" and umm["upstream"]["commit"] == UPSTREAM.commit
    assert umm["weights"] is None and umm["source"] == "BAAI/Emu3.5-Image"  # a hub checkpoint, by reference
    assert (tmp_path / "m" / "code" / "upstream" / "src" / "emu3p5" / "modeling_emu3.py").is_file()


def test_in_the_harness_environment_loading_says_which_environment_it_needs(tmp_path):
    with pytest.raises(ConfigError, match=r"importing Emu3\.5's code \(_umm_emu3p5\.emu3p5\) failed: .*"
                                          r"pip install 'transformers==4\.48\.2'"):
        Emu3p5.load(str(tmp_path), repo_path=CHECKOUT)


def test_the_tiny_tokenizer_keeps_emu3p5s_token_layout():
    ranks = tiny_ranks()
    # upstream's logits processor hard-codes these ids: '*' and the digits of "H*W", then the specials
    assert (ranks[b"!"], ranks[b"*"], ranks[b"0"], ranks[b"9"]) == (0, 9, 15, 24)
    assert len(ranks) == TEXT_VOCAB and sorted(ranks.values()) == list(range(TEXT_VOCAB))
    assert any(len(token) > 3 and token.isalpha() for token in list(ranks)[256:400])  # trained merges


@pytest.fixture(scope="module")
def emu3p5(tmp_path_factory):
    """(model folder, its environment's python, the tiny weights), built in the environment MLflow makes."""
    return tiny_in_its_own_environment(_checkpoint, "BAAI/Emu3.5-Image", "model_flavors.emu3p5", CHECKOUT,
                                       tmp_path_factory.mktemp("emu3p5"))


@pytest.mark.slow
def test_served_from_its_own_environment_and_reloaded_in_a_fresh_process(emu3p5, tmp_path):
    model_dir, python, _ = emu3p5
    with served_answers(model_dir, ROWS, PARAMS, tmp_path) as (url, predictions):
        assert isinstance(predictions[0]["text"], str)
        generated, edited = predictions[1]["images"][0], predictions[2]["images"][0]
        assert decode_image(generated).size == decode_image(edited).size == (64, 64)
        assert json.loads(predictions[1]["params"])["guidance_scale"] == 5.0  # t2i card
        assert json.loads(predictions[2]["params"])["guidance_scale"] == 3.0  # x2i card
        alone = invoke(url, ROWS[1:2], params={**PARAMS, "seed": PARAMS["seed"] + 1}).json()["predictions"][0]
        assert alone["images"][0] == generated  # row i runs with seed + i
        refused = invoke(url, [{"task": "editing", "prompt": "make it blue", "images": [SCENE] * 4}])
        assert refused.status_code == 400 and "1 to 3 reference images; got 4" in refused.json()["message"]
        greedy = invoke(url, ROWS[1:2], params={"temperature": 0.0})
        assert greedy.status_code == 400 and "temperature must be > 0" in greedy.json()["message"]
    assert_a_fresh_process_answers_alike(model_dir, python, ROWS, PARAMS, predictions, tmp_path)


@pytest.mark.slow
def test_registered_and_evaluated_on_shapes_in_its_own_environment(emu3p5, workspace):
    _, _, tiny = emu3p5
    assert_registers_and_evaluates_on_shapes(_checkpoint(str(tiny)), InferenceParams(max_new_tokens=8))


# -- the engine route: upstream's patched vLLM behind a server -----------------------------------

IMG, BOI, EOI, EOL, EOS, BOV = 151851, 151852, 151853, 151846, 151850, 151854  # upstream's fixed ids


def test_engine_requests_carry_what_upstreams_vllm_route_gives_its_engine():
    run = SimpleNamespace(classifier_free_guidance=5.0, target_height=4, target_width=4, sampling_params={
        "max_new_tokens": 24, "top_k": 131072, "top_p": 1.0, "temperature": 1.0, "do_sample": True,
        "text_top_k": 1024, "text_top_p": 0.9, "text_temperature": 1.0,
        "image_top_k": 5120, "image_top_p": 1.0, "image_temperature": 1.0})
    body = engine_request("BAAI/Emu3.5-Image", [1, 2, BOI], [1, BOI], run, seed=7, stop_token_ids=[EOI],
                          image_area=4096)
    assert (body["prompt"], body["uncond_prompt_token_ids"], body["stop_token_ids"]) == ([1, 2, BOI], [1, BOI], [EOI])
    assert body["return_token_ids"] and body["max_tokens"] == 24 and body["seed"] == 7
    assert body["vllm_xargs"] == {"guidance_scale": 5.0, "text_top_k": 1024, "text_top_p": 0.9, "text_temperature": 1.0,
                                  "visual_top_k": 5120, "visual_top_p": 1.0, "visual_temperature": 1.0,
                                  "width": 4, "height": 4, "area": 4096}
    assert engine_tokens({"choices": [{"token_ids": [5, 6]}]}) == [5, 6]
    with pytest.raises(RuntimeError, match=r"no choices\[0\]\.token_ids .*vLLM >= 0\.10\.2"):
        engine_tokens({"choices": [{"text": "hi"}]})


class _PatchedVllmStandIn(JsonStandIn):
    """A local stand-in for upstream's patched vLLM server (which needs CUDA): it lists one model and
    answers `/v1/completions` with fixed token ids — a 4×4 image when asked to stop at the image end,
    "yes" otherwise — recording every request body."""

    bodies: list = []

    def do_GET(self):  # noqa: N802
        self.reply({"data": [{"id": "BAAI/Emu3.5-Image"}]})

    def do_POST(self):  # noqa: N802
        body = self.request_json()
        self.bodies.append(body)
        if body["stop_token_ids"] == [EOI]:
            rows = [[BOV + 4 * row + column for column in range(4)] for row in range(4)]
            tokens = [19, 9, 19, IMG] + [t for row in rows for t in [*row, EOL]][:-1] + [EOI]  # "4*4", the grid
        else:
            tokens = [ord("y") - 33, ord("e") - 33, ord("s") - 33, EOS]  # GPT-2 byte order: "!" is 0
        self.reply({"choices": [{"text": "", "token_ids": tokens}]})


@pytest.mark.slow
def test_a_running_engine_server_is_a_model_source_like_any_other(emu3p5, workspace):
    """`--model http://… --backbone emu3_5`: the adapter (tokenizers, request translation) runs in its
    own environment, with its options recorded in the model it is served from; the engine samples."""
    from umm_harness.model_ref import resolve_model

    _, _, tiny = emu3p5
    with serving(_PatchedVllmStandIn) as url:
        model = resolve_model(url, backbone="emu3_5", options={"checkpoint": str(tiny), "repo_path": str(CHECKOUT)})
        assert model.env_manager == "uv" and flavor.flavor_conf(model.model_folder)["load_options"] == {
            "checkpoint": str(tiny)}
        try:
            (image,) = model.backbone.run([InferenceRequest(task="generation", prompt="a red circle",
                                                            params={"seed": 7})])
            (answer,) = model.backbone.run([InferenceRequest(task="understanding", prompt="Is it red?",
                                                             params={"temperature": 0},
                                                             images=[Image.new("RGB", (64, 64), "red")])])
        finally:
            model.close()
    assert image.images[0].size == (64, 64) and answer.text == "yes"
    generation, understanding = _PatchedVllmStandIn.bodies
    assert generation["prompt"][-1] == BOI and generation["uncond_prompt_token_ids"][-1] == BOI
    assert generation["vllm_xargs"]["guidance_scale"] == 5.0 and generation["max_tokens"] == 24  # "4*4", IMG, 4×5
    assert generation["seed"] == 7 and generation["vllm_xargs"]["height"] == generation["vllm_xargs"]["width"] == 4
    assert understanding["stop_token_ids"] == [EOS] and understanding["temperature"] == 0.0
    assert IMG in understanding["prompt"] and "height" not in understanding["vllm_xargs"]
