"""The GPU paths, exercised whenever a CUDA GPU is present: bf16, the attention kernel `auto`
picks there (FlashAttention-2 when flash-attn is installed), peak VRAM in the run, and NCCL data
parallel with two GPUs. On a machine without a GPU every test here skips and says so; the CPU
side of the same code (sdpa/eager, gloo ranks, the errors) is in test_acceleration.py and
test_eval.py. Outputs are compared only where kernels are the same: bf16 and another attention
kernel change the numbers of a random model, so those tests check shape and bookkeeping.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from model_flavors.janus import JanusPro
from tests.test_acceleration import _requests
from umm_harness.core.acceleration import flash_attn_installed
from umm_harness.core.home import umm_home
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")


def test_bf16_on_the_gpu_with_the_kernel_auto_picks(tiny_janus_dir):
    backbone = JanusPro.load(str(tiny_janus_dir), dtype="bfloat16", device="cuda")
    expected = "flash_attention_2" if flash_attn_installed() else "sdpa"
    assert backbone.attn_implementation == expected
    assert backbone.model.dtype == torch.bfloat16 and backbone.model.device.type == "cuda"
    answers = backbone.run(_requests("understanding", 4))
    images = backbone.run(_requests("generation", 2))
    assert all(isinstance(r.text, str) for r in answers)
    assert all(len(r.images) == 1 for r in images)
    again = backbone.run(_requests("generation", 2))  # same seeds, same batch, same kernels
    assert [r.images[0].tobytes() for r in again] == [r.images[0].tobytes() for r in images]


@pytest.mark.skipif(not flash_attn_installed(), reason="needs flash-attn (pip install flash-attn --no-build-isolation)")
def test_flash_attention_2_runs_the_tiny_janus(tiny_janus_dir):
    backbone = JanusPro.load(str(tiny_janus_dir), dtype="bfloat16", device="cuda",
                             attn_implementation="flash_attention_2")
    assert backbone.model.model.language_model.config._attn_implementation == "flash_attention_2"
    assert all(isinstance(r.text, str) for r in backbone.run(_requests("understanding", 4)))


def test_an_eval_on_the_gpu_logs_its_kernel_and_peak_vram(workspace):
    summary = evaluate(EvalRecipe(limit=12, device="cuda", dtype="bfloat16"))
    child = MlflowClient().search_runs(
        [MlflowClient().get_run(summary.run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary.run_id}'")[0]
    assert child.data.metrics["shapes/peak_vram_mb"] > 0
    tags = {**MlflowClient().get_run(summary.run_id).data.tags, **child.data.tags}
    assert tags["umm.attn_implementation"] == ("flash_attention_2" if flash_attn_installed() else "sdpa")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs for NCCL data parallel")
def test_two_nccl_ranks_share_the_work_and_log_one_run(workspace):
    done = subprocess.run([sys.executable, "-m", "umm_harness", "eval", "--limit", "24", "--batch-size", "4",
                           "--device", "cuda", "--nproc", "2"], cwd=workspace, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = sorted((umm_home() / "cache").glob("*/outputs*.jsonl"))
    assert sorted(p.name for p in logs) == ["outputs-rank1.jsonl", "outputs.jsonl"]
    keys = [(row["sample_id"], row["k"]) for p in logs for row in map(json.loads, p.read_text().splitlines())]
    assert len(keys) == len(set(keys)) > 0
    client = MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                                  "tags.`umm.ranks` = '2' and tags.`umm.benchmark` = 'shapes'")
    assert child.data.metrics["shapes/outputs_computed"] == len(keys)
