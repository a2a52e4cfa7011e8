"""JanusFlow on its authors' code (../shared/upstream/janus, `janus.janusflow`), which imports
torchvision, timm and attrdict — none of which loads beside the harness's CPU torch: the adapter
declares its own environment and the README's defaults, refuses what the model cannot take, the
harness's own process explains why the code does not import, and (slow) a tiny random-weight
JanusFlow of the real upstream classes, built inside the environment MLflow makes for it, goes the
way of every backbone — served by `mlflow models serve --env-manager uv` (understanding,
generation), the same outputs from a fresh process, logged, registered and evaluated on `shapes`
by `umm eval` through its own environment."""

import json
import sys

import pytest
from mlflow.models import Model
from PIL import Image

from model_flavors import environment, flavor, registry
from model_flavors.janus_flow import UPSTREAM, JanusFlow, card_params, generation_params, text_sampling
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
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image

CHECKOUT, pytestmark = shared_checkout("janus")
SCENE = RED_SCENE
ROWS = task_rows(SCENE, ("understanding", "generation"))
PARAMS = {"seed": 5, "max_new_tokens": 8, "steps": 2}


def _checkpoint(source: str) -> flavor.Checkpoint:
    return flavor.Checkpoint(backbone="janus_flow", source=source, repo_path=CHECKOUT)


def test_requests_get_the_readmes_defaults():
    assert generation_params(InferenceRequest(task="generation", prompt="a cat")) == InferenceParams(
        seed=0, guidance_scale=2.0, steps=30, image_size=384)
    assert card_params("understanding") == InferenceParams(seed=0, max_new_tokens=512, temperature=0.0)
    assert text_sampling(card_params("understanding")) == {"do_sample": False}  # greedy, as the README answers
    assert text_sampling(InferenceParams(temperature=0.7)) == {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
    own = generation_params(InferenceRequest(task="generation", prompt="a cat", params={"guidance_scale": 5, "seed": 3}))
    assert (own.guidance_scale, own.seed, own.steps) == (5, 3, 30)


def test_requests_the_model_cannot_take_are_refused_by_field():
    with pytest.raises(ValueError, match="janus_flow generates 384px images; got image_size=512"):
        generation_params(InferenceRequest(task="generation", prompt="a cat", params={"image_size": 512}))
    with pytest.raises(ValueError, match="generates from text only; got 1 input image"):
        generation_params(InferenceRequest(task="generation", prompt="a cat", images=[Image.new("RGB", (8, 8))]))
    assert "editing" not in JanusFlow.capabilities


def test_its_checkpoints_are_recognised(tmp_path):
    assert registry.backbone_class(registry.infer_backbone("deepseek-ai/JanusFlow-1.3B")) is JanusFlow
    (tmp_path / "umm_janus_flow.json").write_text("{}")  # what a folder this adapter saved carries
    assert registry.infer_backbone(str(tmp_path)) == "janus_flow"


def test_the_model_carries_its_own_environment_and_the_checkout(tmp_path):
    flavor.save_model(_checkpoint("deepseek-ai/JanusFlow-1.3B"), tmp_path / "m")
    requirements = (tmp_path / "m" / "requirements.txt").read_text().split()
    assert {"torch==2.14.1", "torchvision==0.29.1", "transformers==4.48.2", "attrdict==2.0.1"} <= set(requirements)
    assert "torch==2.13.0" not in requirements  # its pin replaces the harness's: torchvision needs its torch
    assert requirements == environment.requirements_for(JanusFlow)
    umm = Model.load(tmp_path / "m" / "MLmodel").flavors["umm"]
    assert umm["env_manager"] == "uv" and umm["upstream"]["commit"] == UPSTREAM.commit
    assert umm["weights"] is None and umm["source"] == "deepseek-ai/JanusFlow-1.3B"  # by reference
    assert (tmp_path / "m" / "code" / "upstream" / "janus" / "janusflow" / "models" / "uvit.py").is_file()


@pytest.fixture
def forget_janus():
    """The refused import leaves the checkout's `janus` package half-imported; later tests start clean."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [name for name in sys.modules if name == "janus" or name.startswith("janus.")]:
        del sys.modules[name]


def test_in_the_harness_environment_loading_says_which_environment_it_needs(tmp_path, forget_janus):
    with pytest.raises(ConfigError, match=r"importing JanusFlow's code \(janus\.janusflow\.models\) failed: "
                                          r".*torchvision.*pip install 'torch==2\.14\.1' 'torchvision==0\.29\.1'"):
        JanusFlow.load(str(tmp_path), repo_path=CHECKOUT)


@pytest.fixture(scope="module")
def janus_flow(tmp_path_factory):
    """(model folder, its environment's python, the tiny weights), built in the environment MLflow makes."""
    return tiny_in_its_own_environment(_checkpoint, "deepseek-ai/JanusFlow-1.3B", "model_flavors.janus_flow", CHECKOUT,
                                       tmp_path_factory.mktemp("janus_flow"))


@pytest.mark.slow
def test_served_from_its_own_environment_and_reloaded_in_a_fresh_process(janus_flow, tmp_path):
    model_dir, python, _ = janus_flow
    with served_answers(model_dir, ROWS, PARAMS, tmp_path) as (url, predictions):
        assert isinstance(predictions[0]["text"], str) and json.loads(predictions[0]["params"])["temperature"] == 0.0
        generated = predictions[1]["images"][0]
        assert decode_image(generated).size == (64, 64)
        assert json.loads(predictions[1]["params"])["guidance_scale"] == 2.0  # the README's cfg_weight
        alone = invoke(url, ROWS[1:2], params={**PARAMS, "seed": PARAMS["seed"] + 1}).json()["predictions"][0]
        assert alone["images"][0] == generated  # row i runs with seed + i
        other = invoke(url, ROWS[1:2], params={**PARAMS, "seed": PARAMS["seed"] + 2}).json()["predictions"][0]
        assert other["images"][0] != generated  # the seed reaches the flow's starting noise
        refused = invoke(url, ROWS[1:2], params={"image_size": 384})
        assert refused.status_code == 400 and "generates 64px images; got image_size=384" in refused.json()["message"]
    assert_a_fresh_process_answers_alike(model_dir, python, ROWS, PARAMS, predictions, tmp_path)


@pytest.mark.slow
def test_registered_and_evaluated_on_shapes_in_its_own_environment(janus_flow, workspace):
    _, _, tiny = janus_flow
    assert_registers_and_evaluates_on_shapes(_checkpoint(str(tiny)), InferenceParams(max_new_tokens=8, steps=2))