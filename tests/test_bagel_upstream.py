"""BAGEL on its real code: a tiny random-weight instance of the upstream classes (Qwen2-MoT,
SigLIP-NaViT, the FLUX-style autoencoder) imported from the pinned snapshot in
../shared/upstream/bagel, driven through upstream's own `InterleaveInferencer` on CPU, with the
adapter's CPU fallbacks (model_flavors.bagel_cpu) in place of flash-attention and torchvision."""

import json
import math
import sys
from contextlib import ExitStack

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from model_flavors import bagel_cpu, flavor
from model_flavors.bagel import Bagel
from model_flavors.bagel_tiny import build_tiny
from tests.conftest import REPO, umm
from tests.reload import assert_reloads_the_same, task_rows
from tests.serving import invoke, served
from tests.training_fixtures import forget_upstream_modules as _forget_upstream_modules
from umm_harness.config import EvalRecipe
from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image, encode_png
from umm_harness.evaluate import evaluate

CHECKOUT = REPO.parent / "shared" / "upstream" / "bagel"
FEW_STEPS = {"steps": 4}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread on this shared 2-core machine (MODELS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, one_thread):
    folder = build_tiny(tmp_path_factory.mktemp("bagel") / "tiny-bagel", seed=0, repo_path=CHECKOUT)
    yield folder
    _forget_upstream_modules()  # the stand-in checkouts of test_bagel.py use the same top-level names


@pytest.fixture(scope="module")
def bagel(tiny_dir):
    return Bagel.load(str(tiny_dir), dtype="bfloat16", device="cpu")


def _scene(color: str = "red", size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


# -- the flash-attention stand-in -----------------------------------------------------------------

def _reference_attention(q, k, v, lens_q, lens_k, causal):
    """softmax(q·kᵀ/√d + mask)·v written out per sequence and head: the definition, not a kernel."""
    outputs, q0, k0 = [], 0, 0
    group = q.shape[1] // k.shape[1]
    for lq, lk in zip(lens_q, lens_k):
        for i in range(lq):
            row = []
            for h in range(q.shape[1]):
                scores = (k[k0:k0 + lk, h // group] @ q[q0 + i, h]) / math.sqrt(q.shape[-1])
                if causal:
                    scores[i + (lk - lq) + 1:] = -math.inf
                row.append(torch.softmax(scores, dim=0) @ v[k0:k0 + lk, h // group])
            outputs.append(torch.stack(row))
        q0, k0 = q0 + lq, k0 + lk
    return torch.stack(outputs)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens_q, lens_k", [([3, 5, 1], [3, 5, 1]), ([1, 2, 4], [6, 2, 9])])
def test_sdpa_stand_in_equals_reference_attention(causal, lens_q, lens_k):
    """Packed sequences of unequal length, 4 query heads over 2 key/value heads, and (second case)
    fewer queries than keys: BAGEL's KV-cached decoding, where the causal mask is bottom-right aligned."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lens_q), 4, 8, generator=generator)
    k = torch.randn(sum(lens_k), 2, 8, generator=generator)
    v = torch.randn(sum(lens_k), 2, 8, generator=generator)
    cu_q = torch.tensor([0, *np.cumsum(lens_q)], dtype=torch.int32)
    cu_k = torch.tensor([0, *np.cumsum(lens_k)], dtype=torch.int32)
    got = bagel_cpu.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal)
    torch.testing.assert_close(got, _reference_attention(q, k, v, lens_q, lens_k, causal), atol=1e-5, rtol=1e-5)
    halves = bagel_cpu.varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu_q, cu_k, causal=causal)
    assert halves.dtype == torch.bfloat16  # flash-attn answers in the query's dtype


def test_a_query_that_may_see_no_key_gets_zeros_as_in_flash_attn():
    q, k = torch.ones(3, 2, 4), torch.ones(1, 2, 4)
    out = bagel_cpu.varlen_attention(q, k, k, torch.tensor([0, 3]), torch.tensor([0, 1]), causal=True)
    assert out[:2].abs().sum() == 0 and torch.equal(out[2], torch.ones(2, 4))


def test_the_stand_in_exists_only_while_bagel_imports(bagel):
    upstream_attention = sys.modules["modeling.bagel.qwen2_navit"].flash_attn_varlen_func
    assert upstream_attention is bagel_cpu.varlen_attention
    assert sys.modules["modeling.bagel.siglip_navit"].flash_attn_varlen_func is bagel_cpu.varlen_attention
    assert "flash_attn" not in sys.modules  # transformers and everything else still see no flash-attn


def test_the_torchvision_free_resize_keeps_upstreams_rule():
    resize = bagel_cpu.BoundedResize(max_size=1024, min_size=512, stride=16, max_pixels=14 * 14 * 9 * 1024)
    assert resize.size_for(64, 48) == (688, 512)  # short side up to 512, long side in proportion, stride 16
    assert resize.size_for(4000, 1000) == (1024, 256)  # the long side wins over the short side's minimum
    assert resize.size_for(980, 980) == (976, 976)
    transform = bagel_cpu.ImageTransform(64, 32, 16)
    tensor = transform(_scene("white", (64, 48)))
    assert tuple(tensor.shape) == (3, 48, 64) and torch.allclose(tensor, torch.ones_like(tensor))


# -- the tiny model -----------------------------------------------------------------------------

def test_the_tiny_build_is_bagels_checkpoint_layout(tiny_dir, bagel):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors", "vocab.json",
            "merges.txt"} <= names
    model = bagel.engine.inferencer.model
    assert type(model).__module__ == "modeling.bagel.bagel" and model.use_moe  # Qwen2-MoT, from the checkout
    assert type(bagel.engine.inferencer.vae_model).__module__ == "modeling.autoencoder"
    assert bagel.default_params("generation").image_size == 64  # the size it is built for


def test_understanding_answers_in_text(bagel):
    request = InferenceRequest(task="understanding", prompt="What colour is it?", images=[_scene()],
                               params={"max_new_tokens": 6})
    first, again = bagel.understand([request])[0], bagel.understand([request])[0]
    assert isinstance(first.text, str) and first.text == again.text and not first.images


def test_generation_is_seeded_and_text_cfg_reaches_the_image(bagel):
    def draw(seed, **params):
        request = InferenceRequest(task="generation", prompt="a red circle", params={**FEW_STEPS, "seed": seed, **params})
        return _pixels(bagel.generate([request])[0].images[0])

    first = draw(1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, draw(1))
    assert not np.array_equal(first, draw(2))
    assert not np.array_equal(first, draw(1, guidance_scale=1.0))


def test_editing_keeps_the_input_size_and_image_cfg_reaches_the_image(bagel):
    def edit(**params):
        request = InferenceRequest(task="editing", prompt="make it blue", images=[_scene()],
                                   params={**FEW_STEPS, "seed": 3, **params})
        return bagel.edit([request])[0]

    result = edit()
    assert result.images[0].size == (64, 48) and result.params.image_guidance_scale == 2.0
    assert not np.array_equal(_pixels(result.images[0]), _pixels(edit(image_guidance_scale=1.0).images[0]))


def test_think_mode_reasons_before_the_image_or_the_answer(bagel):
    request = InferenceRequest(task="generation", prompt="a red circle", metadata={"think": True},
                               params={**FEW_STEPS, "max_new_tokens": 5})
    result = bagel.generate([request])[0]
    assert isinstance(result.text, str) and len(result.images) == 1 and result.params.max_new_tokens == 5
    question = InferenceRequest(task="understanding", prompt="What colour is it?", images=[_scene()],
                                metadata={"think": True}, params={"max_new_tokens": 5})
    reasoned = bagel.understand([question])[0]
    assert isinstance(reasoned.text, str) and not reasoned.images


# -- the flavor: save, reload elsewhere, register, evaluate, serve -----------------------------

ROWS = task_rows(encode_png(_scene()))
PARAMS = {"seed": 5, "steps": 3, "max_new_tokens": 4}


def test_saved_model_carries_the_tiny_weights_and_reloads_in_a_fresh_process(bagel, tmp_path):
    assert_reloads_the_same({"bagel": (bagel, ROWS)}, PARAMS, tmp_path)
    reference = json.loads((tmp_path / "bagel" / "weights" / "umm_bagel.json").read_text())
    assert reference["checkpoint"] == "." and (tmp_path / "bagel" / "weights" / "ema.safetensors").is_file()


@pytest.mark.slow
def test_registers_evaluates_on_shapes_and_serves(bagel, tiny_dir, workspace, monkeypatch):
    mlflow.set_experiment("bagel-upstream")
    with mlflow.start_run():
        info = flavor.log_model(bagel, registered_model_name="bagel-tiny")
    assert info.registered_model_version == 1
    assert flavor.load_model("models:/bagel-tiny/1").engine.route == "upstream"

    summary = evaluate(EvalRecipe(model="models:/bagel-tiny/1", limit=4, seed=1, batch_size=4, threads=1,
                                  params=InferenceParams(steps=3, max_new_tokens=4), experiment="eval-bagel"))
    tags = mlflow.MlflowClient().get_run(summary.run_id).data.tags
    assert tags["umm.backbone"] == "bagel" and tags["umm.suite"] == "shapes"
    assert summary.metrics["shapes/failed_samples"] == 0 and summary.metrics["shapes/skipped_samples"] == 0
    assert 0.0 <= summary.metrics["shapes/understanding_acc"] <= 1.0

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with ExitStack() as servers:
        url = servers.enter_context(served("models:/bagel-tiny/1", cwd=workspace))
        for row in ROWS:
            answer = invoke(url, [row], params=PARAMS)
            assert answer.status_code == 200, answer.text
            prediction = answer.json()["predictions"][0]
            if row["task"] == "understanding":
                assert isinstance(prediction["text"], str)
            else:
                size = (64, 64) if row["task"] == "generation" else (64, 48)
                assert decode_image(prediction["images"][0]).size == size


@pytest.mark.slow
def test_umm_cli_builds_tiny_bagel_and_evaluates_it(workspace):
    built = umm("models", "init-tiny", "bagel", "--repo-path", str(CHECKOUT), cwd=workspace)
    assert built.returncode == 0, built.stderr[-2000:]
    ran = umm("eval", "--model", "tiny:bagel", "--limit", "2", "--threads", "1", "--max-new-tokens", "4",
              cwd=workspace)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "bagel-tiny version 1" in ran.stdout and "shapes/understanding_acc" in ran.stdout
    assert [line.split()[-1] for line in ran.stdout.splitlines() if "shapes/failed_samples" in line] == ["0.0000"]
