"""Backbones whose authors' code does not run here (Show-o2, TokenFlow, DeepGen,
Ovis-U1): their defaults and request translation, their refusals (which say what blocks
them and what a GPU user runs), the trust_remote_code opt-in, and `umm models list` naming every
backbone of the reference system."""


import pytest
from click.testing import CliRunner
from PIL import Image

from model_flavors import registry
from model_flavors.upstream_only import BLOCKED, DeepGen, OvisU1, ShowO2, TokenFlow
from tests.conftest import REPO
from umm_harness.cli import cli
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceRequest

UPSTREAM = REPO.parent / "shared" / "upstream"
CHECKOUTS = {ShowO2: "show-o", TokenFlow: "tokenflow", DeepGen: "deepgen"}
RED = Image.new("RGB", (32, 32), "red")


def test_generation_requests_become_the_repositories_arguments():
    tokenflow = TokenFlow.translate(InferenceRequest(task="generation", prompt="a cat", params={"guidance_scale": 3}))
    assert tokenflow["cfg"] == 3 and tokenflow["topk_list"] == [600] and tokenflow["topp_list"] == [0.6]
    assert tokenflow["negative_prompt"].startswith("lowres, bad anatomy")
    show = ShowO2.translate(InferenceRequest(task="generation", prompt="a cat", params={"image_size": 512}))
    assert (show["guidance_scale"], show["num_inference_steps"], show["resolution"]) == (7.5, 50, 512)


def test_editing_requests_carry_the_editing_defaults():
    edit = DeepGen.translate(InferenceRequest(task="editing", prompt="make it blue", images=[RED]))
    assert (edit["cfg_scale"], edit["num_steps"], edit["height"], edit["seed"], edit["num_images"]) == (4.0, 50, 512, 42, 1)
    assert edit["cfg_prompt"].startswith("blurry, low quality") and DeepGen.translate(
        InferenceRequest(task="generation", prompt="a cat"))["cfg_prompt"] == ""
    ovis = OvisU1.translate(InferenceRequest(task="editing", prompt="make it blue", images=[RED]))
    assert (ovis["txt_cfg"], ovis["img_cfg"], ovis["num_steps"]) == (6.0, 1.5, 50)


def test_requests_a_model_cannot_take_are_refused_by_field():
    with pytest.raises(ValueError, match="tokenflow generates 256px images; got image_size=512"):
        TokenFlow.translate(InferenceRequest(task="generation", prompt="a cat", params={"image_size": 512}))
    with pytest.raises(ValueError, match="tokenflow cannot do 'editing'"):
        TokenFlow.translate(InferenceRequest(task="editing", prompt="x", images=[RED]))
    with pytest.raises(ValueError, match="at most 1 input image"):
        ShowO2.translate(InferenceRequest(task="understanding", prompt="same?", images=[RED, RED]))


@pytest.mark.parametrize("cls", BLOCKED, ids=lambda cls: cls.key)
def test_loading_says_what_blocks_it_and_what_a_gpu_user_runs(cls, tmp_path, monkeypatch):
    monkeypatch.delenv(cls.upstream.env, raising=False)
    options = {"trust_remote_code": True} if cls is OvisU1 else {}
    if cls in CHECKOUTS:
        with pytest.raises(ConfigError, match=f"no checkout is set: clone {cls.upstream.repo}"):
            cls.load(cls.hub_ids[0])
        checkout = UPSTREAM / CHECKOUTS[cls]
        if not checkout.is_dir():
            pytest.skip(f"no {cls.upstream.name} checkout at {checkout}")
        options["repo_path"] = checkout
    with pytest.raises(ConfigError) as refused:
        cls.load(cls.hub_ids[0], **options)
    message = str(refused.value)
    assert message.startswith(f"{cls.key} does not run here: ") and "On a machine with a GPU: " in message
    assert cls.blocked_here in message and cls.gpu_run in message
    assert cls.upstream_pins and len(cls.upstream.commit) == 40


def test_remote_code_needs_an_explicit_opt_in(caplog):
    with pytest.raises(ConfigError, match=r"needs an explicit opt-in: backbone_options: \{trust_remote_code: true\}"):
        OvisU1.load("AIDC-AI/Ovis-U1-3B")
    with pytest.raises(ConfigError, match="does not run here"):
        OvisU1.load("AIDC-AI/Ovis-U1-3B", trust_remote_code=True)
    assert "trust_remote_code is on" in caplog.text


def test_models_list_names_every_backbone_of_the_reference_system():
    # The thirteen keys of ../shared/MODELS.md; omnigen2's adapter is built in another branch (issue 14b).
    reference = {"bagel", "deepgen", "emu3", "emu3_5", "mmada", "janus", "janus_pro", "janus_flow", "show_o",
                 "show_o2", "blip3o", "tokenflow"}
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines()[1:]}
    assert reference <= set(rows), reference - set(rows)
    assert "upstream pins blocked here" in rows["tokenflow"] and "harness+5     runs here" in rows["mmada"]
    for own in ("emu3_5", "janus_flow"):  # their own environment, built by MLflow
        assert "own (uv)      runs here" in rows[own]
    for key in reference:
        assert registry.backbone_class(key).key in registry.BACKBONES
