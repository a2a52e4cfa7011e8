"""Attention kernels and torch.compile: one choice for every transformers-based backbone.

`auto` takes FlashAttention-2 only where it runs (flash-attn, a CUDA GPU, half precision) and
SDPA everywhere else; an explicit choice that cannot run fails before any weights load, with
one line naming the fix. Whatever kernel runs, a greedy answer and a seeded image are the same.
"""

import sys

import mlflow
import pytest
import torch

from model_flavors.diffusers_backbone import DiffusersBackbone
from model_flavors.emu3 import Emu3
from model_flavors.emu3 import build_tiny as build_tiny_emu3
from model_flavors.janus import JanusPro
from tasks.shapes import ShapesTask
from tests.conftest import tiny_dir
from tests.test_cli_errors import _one_line_error, _run_in_process
from umm_harness.core.acceleration import flash_attn_installed, select_attn_implementation
from umm_harness.config import load_recipe
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams
from umm_harness.runner import limit_samples, request_for

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without a CUDA GPU")


def _requests(kind: str, count: int):
    samples = [s for s in limit_samples(ShapesTask().samples(), 40) if s.request.task == kind]
    return [request_for(sample, 0, 0, InferenceParams()) for sample in samples[:count]]


@needs_no_gpu
def test_auto_picks_sdpa_on_a_machine_without_flash_attention_or_gpu():
    for device in ("cpu", "cuda"):
        for dtype in ("float32", "bfloat16", "float16"):
            assert select_attn_implementation("auto", device=device, dtype=dtype) == "sdpa"
    assert select_attn_implementation("eager", device="cpu", dtype="float32") == "eager"


def test_flash_attention_without_flash_attn_names_the_install_command():
    with pytest.raises(ConfigError, match=r"install flash-attn: pip install flash-attn --no-build-isolation"):
        select_attn_implementation("flash_attention_2", device="cuda", dtype="bfloat16")


@needs_no_gpu
def test_flash_attention_without_a_gpu_says_it_needs_one(tmp_path, monkeypatch):
    # flash-attn cannot be installed here (it needs CUDA to build): an importable stand-in
    # package lets the next check speak.
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            select_attn_implementation("flash_attention_2", device="cpu", dtype="bfloat16")
        assert select_attn_implementation("auto", device="cpu", dtype="bfloat16") == "sdpa"
    finally:
        sys.modules.pop("flash_attn", None)  # the stand-in must not outlive this test


def test_a_backbone_without_the_choice_refuses_it_and_ignores_auto():
    assert DiffusersBackbone.acceleration_options("auto", False) == {}
    with pytest.raises(ConfigError, match="'diffusers'.*no attn_implementation or compile choice"):
        DiffusersBackbone.acceleration_options("eager", False)
    assert JanusPro.describe()["attn_implementations"] == ["auto", "flash_attention_2", "sdpa", "eager"]


def test_backbone_options_are_the_same_choice_as_the_recipe_fields():
    recipe = load_recipe(None, {"backbone_options": {"attn_implementation": "eager", "compile": True}})
    assert (recipe.attn_implementation, recipe.compile, recipe.backbone_options) == ("eager", True, {})
    with pytest.raises(ConfigError, match="attn_implementation is set to 'sdpa' and in backbone_options to 'eager'"):
        load_recipe(None, {"attn_implementation": "sdpa", "backbone_options": {"attn_implementation": "eager"}})
    with pytest.raises(ConfigError, match="field 'attn_implementation'"):
        load_recipe(None, {"attn_implementation": "flash"})


def test_tiny_janus_gives_the_same_answers_and_images_with_sdpa_and_eager(tiny_janus_dir):
    questions, prompts = _requests("understanding", 6), _requests("generation", 3)
    outputs = {}
    for kernel in ("sdpa", "eager"):
        backbone = JanusPro.load(str(tiny_janus_dir), attn_implementation=kernel)
        assert backbone.attn_implementation == kernel
        assert backbone.model.model.language_model.config._attn_implementation == kernel
        outputs[kernel] = ([r.text for r in backbone.run(questions)],
                           [r.images[0].tobytes() for r in backbone.run(prompts)])
    assert outputs["sdpa"] == outputs["eager"]
    assert all(outputs["sdpa"][0]) and len(outputs["sdpa"][1]) == 3


def test_emu3_loads_each_role_with_the_chosen_kernel(tmp_path_factory):
    emu3 = Emu3.load(str(tiny_dir(tmp_path_factory, "emu3", build_tiny_emu3)), attn_implementation="eager")
    assert emu3.attn_implementation == "eager" and emu3._loaded == {}  # chosen now, applied on first use
    assert emu3._role("chat").model.config._attn_implementation == "eager"


@pytest.mark.skipif(flash_attn_installed(), reason="describes a machine without flash-attn")
def test_eval_with_flash_attention_here_exits_2_with_one_line_and_no_run(workspace, capsys):
    done = _run_in_process(capsys, "eval", "--limit", "2", "--attn-implementation", "flash_attention_2")
    _one_line_error(done, "attn_implementation flash_attention_2: flash-attn is not installed; "
                          "install flash-attn: pip install flash-attn --no-build-isolation")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


@pytest.mark.slow
def test_compiled_language_model_answers_exactly_as_the_plain_one(tiny_janus_dir):
    questions = _requests("understanding", 4)
    plain = JanusPro.load(str(tiny_janus_dir))
    compiled = JanusPro.load(str(tiny_janus_dir), compile=True)
    assert compiled.compiled and not plain.compiled
    assert [r.text for r in compiled.run(questions)] == [r.text for r in plain.run(questions)]
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()  # saving is unaffected
