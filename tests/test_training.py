"""Post-training (`training/`): methods, DeepSpeed stages, resume, launcher, export to the registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from model_flavors import flavor
from tests.training_fixtures import register_base
from umm_harness.core.errors import ConfigError

NAME = "janus-pro-tiny"

# A fixed batch: every step trains on the same examples (the whole, tiny, data set).
FIXED = {"steps": 6, "batch_size": 4, "lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "cfg_dropout": 0.0,
         "data": {"num_understanding": 4, "num_generation": 4}, "checkpoint_every": 0, "log_every": 2}


def recipe(**values):
    from training.recipe import train_recipe

    merged = {**FIXED, **values}
    merged["data"] = {**FIXED["data"], **values.get("data", {})}
    return train_recipe(**merged)


@pytest.fixture
def base(workspace, tiny_janus):
    """The tiny Janus-Pro registered as version 1 of `janus-pro-tiny`."""
    register_base(tiny_janus, NAME)
    return workspace


def _versions() -> list[str]:
    try:
        return sorted(str(mv.version) for mv in MlflowClient().search_model_versions(f"name = '{NAME}'"))
    except Exception:
        return []


def _probe_inputs(backbone):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((220, 40, 40), (10, 10, 30, 30))
    inputs = backbone.processor(text=[backbone._chat_prompt("What color is the square?", 1)], images=[image],
                                generation_mode="text", return_tensors="pt")
    return inputs, image


@torch.no_grad()
def _logits(backbone) -> torch.Tensor:
    inputs, _ = _probe_inputs(backbone)
    return backbone.model(**inputs).logits


def _answer(backbone) -> str:
    from umm_harness.core.requests import InferenceRequest

    _, image = _probe_inputs(backbone)
    return backbone.understand([InferenceRequest(task="understanding", prompt="What color is the square?",
                                                 images=[image])])[0].text


def _artifact_layout(model_uri: str) -> list[str]:
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts)


# -- recipes and bad input -------------------------------------------------------------------


def test_recipe_defaults_target_the_registered_tiny_model():
    from training.recipe import TrainRecipe, load_train_recipe

    default = TrainRecipe()
    assert default.model == "models:/janus-pro-tiny/1" and default.method == "sft"
    assert default.active_objectives() == {"understanding": 1.0}
    assert default.zero_stage == 0 and default.nproc == 1 and default.alias == "challenger"
    repo = Path(__file__).resolve().parents[1]
    for name, method in [("train_shapes_sft", "sft"), ("train_shapes_lora", "lora"), ("train_shapes_reca", "reca")]:
        assert load_train_recipe(repo / "projects" / f"{name}.yaml").method == method


@pytest.mark.parametrize("values, fragment", [
    ({"method": "dpo"}, "method"),
    ({"zero_stage": 5}, "zero_stage"),
    ({"zero_stage": -1}, "zero_stage"),
    ({"model": "tiny:janus-pro"}, "models:/"),
    ({"learning_rate": 1e-3}, "unknown field"),
    ({"batch_size": 6, "grad_accum": 4}, "multiple"),
    ({"method": "sft", "objectives": {"reconstruction": 1.0}}, "reca"),
])
def test_bad_recipes_are_one_line_config_errors(values, fragment):
    from training.recipe import train_recipe

    with pytest.raises(ConfigError) as info:
        train_recipe(**values)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_an_unregistered_base_is_a_config_error_and_nothing_is_registered(workspace):
    from training.run import train

    with pytest.raises(ConfigError, match="not registered") as info:
        train(recipe(model="models:/janus-pro-tiny/1"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not registered"):
        train(recipe(model="models:/janus-pro-tiny@champion"))
    assert MlflowClient().search_registered_models() == []


def test_bad_input_with_a_registered_base_registers_nothing_new(base):
    from training.recipe import load_train_recipe
    from training.run import train

    for values in ({"method": "unknown"}, {"zero_stage": 5}):
        with pytest.raises(ConfigError):
            train(load_train_recipe(None, {**FIXED, **values}))
    with pytest.raises(ConfigError, match="not registered"):
        train(recipe(model="models:/janus-pro-tiny/7"))
    assert _versions() == ["1"]


# -- methods -----------------------------------------------------------------------------------


def test_sft_trains_registers_a_version_and_reloads_with_the_same_outputs(base):
    from training.run import train

    result = train(recipe(log_every=4))
    assert result.version == "2" and result.parent_version == "1" and result.steps == 6
    assert "WORLD_SIZE" not in os.environ and "RANK" not in os.environ  # one process: nothing left behind
    assert len(result.losses) == 6 and result.losses[-1] < 0.7 * result.losses[0]

    client = MlflowClient()
    mv = client.get_model_version(NAME, "2")
    assert mv.tags["umm.parent_version"] == "1" and mv.tags["umm.method"] == "sft"
    assert mv.tags["umm.train_run_id"] == result.run_id
    assert mv.tags["umm.dataset_digest"] == result.dataset_digest and len(result.dataset_digest) == 64
    assert mv.tags["umm.weights_digest"] == result.weights_digest
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"

    # the weights digest is the flavor's: folder_digest of the saved weights folder
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/janus-pro-tiny/2"))
    assert flavor.folder_digest(local / "weights") == result.weights_digest

    # the exported checkpoint reloads through the flavor and answers as the in-memory model
    reloaded = flavor.load_model("models:/janus-pro-tiny/2")
    assert torch.allclose(_logits(reloaded), _logits(result.backbone), atol=1e-5)
    assert _answer(reloaded) == _answer(result.backbone)
    base_model = flavor.load_model("models:/janus-pro-tiny/1")
    assert not torch.allclose(_logits(base_model), _logits(reloaded), atol=1e-3)

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["recipe.method"] == "sft" and run.data.params["recipe.zero_stage"] == "0"
    assert run.data.tags["umm.model_version"] == "2" and run.data.tags["umm.parent_version"] == "1"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 7))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(result.losses)
    for key in ("train/lr", "train/samples_per_s", "train/rss_mb", "train/loss_understanding"):
        assert len(client.get_metric_history(result.run_id, key)) == 6, key
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == result.dataset_digest[:16]
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == result.dataset_size == 4
    assert (Path(mlflow.artifacts.download_artifacts(run_id=result.run_id)) / "recipe.yaml").is_file()


def test_sft_on_generation_data_lowers_the_image_head_loss(base):
    from training.run import train

    result = train(recipe(objectives={"generation": 1.0}, checkpoint_every=3, export_every_checkpoint=True))
    assert result.losses[-1] < 0.8 * result.losses[0]
    client = MlflowClient()
    checkpoint, final = client.get_model_version(NAME, "2"), client.get_model_version(NAME, "3")
    assert (checkpoint.tags["umm.train_step"], checkpoint.tags["umm.train_final"]) == ("3", "false")
    assert (final.tags["umm.train_step"], final.tags["umm.train_final"]) == ("6", "true")
    assert result.version == "3" and final.tags["umm.method"] == "sft"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"


def test_image_generation_loss_matches_the_samplers_conditioning(tiny_janus):
    """Teacher forcing must see what `_sample_image_tokens` sees: position t's logits predict code t."""
    from model_flavors.janus_training import image_generation_loss

    model = tiny_janus.model
    inputs = tiny_janus.generation_inputs(["a photo of a red circle", "a photo of two squares"])
    codes = torch.randint(0, model.config.vq_config.num_embeddings, (2, model.config.vision_config.num_image_tokens),
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = image_generation_loss(model, inputs["input_ids"], inputs["attention_mask"], codes)
        # step by step with the KV cache, as the sampler does (conditional stream only)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds, past, losses = model.get_input_embeddings()(ids), None, []
        for t in range(codes.shape[1]):
            out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                             past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = model.model.generation_head(out.last_hidden_state[:, -1]).float()
            losses.append(torch.nn.functional.cross_entropy(logits, codes[:, t], reduction="none"))
            embeds = model.prepare_embeddings_for_image_generation(codes[:, t]).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
            positions = positions[:, -1:] + 1
    assert loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-4)


@pytest.mark.parametrize("merge", [True, False])
def test_lora_trains_adapters_and_exports_them_merged_or_kept(base, merge):
    from training.run import train

    result = train(recipe(method="lora", lora={"rank": 8, "alpha": 16, "merge": merge}, lr=5e-3))
    assert result.losses[-1] < 0.8 * result.losses[0]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri))
    assert (local / "weights" / "adapter_config.json").is_file() == (not merge)
    reloaded = flavor.load_model(result.model_uri)
    assert torch.allclose(_logits(reloaded), _logits(result.backbone), atol=1e-4)
    assert _answer(reloaded) == _answer(result.backbone)
    assert MlflowClient().get_model_version(NAME, result.version).tags["umm.method"] == "lora"


def test_reca_regenerates_images_from_their_understanding_embeddings(base):
    from training.run import train

    result = train(recipe(method="reca"))
    assert result.losses[-1] < 0.8 * result.losses[0]
    run = MlflowClient().get_run(result.run_id)
    assert "train/loss_reconstruction" in run.data.metrics
    assert MlflowClient().get_model_version(NAME, result.version).tags["umm.method"] == "reca"
    reloaded = flavor.load_model(result.model_uri)
    assert torch.allclose(_logits(reloaded), _logits(result.backbone), atol=1e-5)


# -- DeepSpeed stages, resume, processes ----------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_give_the_stage_0_loss_curve(base, stage):
    from training.run import train

    values = {"objectives": {"understanding": 1.0, "generation": 0.5}, "steps": 4, "alias": None}
    linear = torch.nn.functional.linear
    reference = train(recipe(**values, output_dir=str(base / "stage0")))
    sharded = train(recipe(**values, zero_stage=stage, output_dir=str(base / f"stage{stage}"),
                           zero_options={"stage3_param_persistence_threshold": 0} if stage == 3 else {}))
    assert sharded.losses == pytest.approx(reference.losses, rel=1e-4)
    assert torch.nn.functional.linear is linear  # ZeRO-3's own F.linear does not outlive its training
    reloaded = flavor.load_model(sharded.model_uri)  # ZeRO-3 shards consolidated at export
    assert torch.allclose(_logits(reloaded), _logits(flavor.load_model(reference.model_uri)), atol=1e-2)


def test_an_interrupted_training_resumes_with_the_same_loss_curve(base):
    from training.run import train

    # warmup + cosine, several epochs of shuffled data, random unconditional prompts: all must replay
    values = {"steps": 8, "checkpoint_every": 3, "batch_size": 4, "data": {"num_understanding": 12},
              "lr": 1e-3, "warmup_steps": 2, "min_lr_ratio": 0.1, "cfg_dropout": 0.5,
              "objectives": {"understanding": 1.0, "generation": 1.0}}
    whole = train(recipe(**values, output_dir=str(base / "whole")))

    stopped = train(recipe(**values, output_dir=str(base / "resumed")), stop_after_step=5)
    assert stopped.version is None and stopped.steps == 5
    assert MlflowClient().get_run(stopped.run_id).info.status == "KILLED"
    assert sorted(p.name for p in (base / "resumed").glob("step*")) == ["step0000003"]

    resumed = train(recipe(**values, output_dir=str(base / "resumed")))
    assert resumed.resumed_from_step == 3 and resumed.run_id == stopped.run_id
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6, abs=1e-7)
    assert resumed.weights_digest == whole.weights_digest  # the same weights, bit for bit
    assert MlflowClient().get_run(resumed.run_id).info.status == "FINISHED"
    # steps 4-5 were logged before the stop and replayed after it: each step is in the run once
    history = MlflowClient().get_metric_history(resumed.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(whole.losses, rel=1e-6)

    assert resumed.version == whole.version  # the same weights are one version
    again = train(recipe(**values, output_dir=str(base / "resumed")))  # finished: nothing to redo
    assert again.reused and again.version == resumed.version
    assert len(_versions()) == 2


@pytest.mark.slow
def test_two_processes_on_cpu_register_the_same_artifact_layout(base):
    from training.run import train

    zero3 = {"zero_stage": 3, "zero_options": {"stage3_param_persistence_threshold": 0}}
    # one rank with 2 micro-batches of 2 sees what two ranks with one micro-batch of 2 see
    one = train(recipe(alias=None, grad_accum=2, **zero3))
    two = train(recipe(nproc=2, **zero3))
    assert two.steps == 6 and two.backbone is None
    assert two.losses == pytest.approx(one.losses, rel=1e-3)
    # the same weights bit for bit, so the same registered version (the first one's)
    assert two.weights_digest == one.weights_digest and two.version == one.version == "2"
    logged = MlflowClient().search_logged_models([MlflowClient().get_run(two.run_id).info.experiment_id],
                                                 filter_string=f"source_run_id = '{two.run_id}'")
    assert _artifact_layout(f"models:/{logged[0].model_id}") == _artifact_layout(one.model_uri)
    mv = MlflowClient().get_model_version(NAME, "2")
    assert mv.tags["umm.train_run_id"] == one.run_id and mv.tags["umm.parent_version"] == "1"
    assert str(MlflowClient().get_model_version_by_alias(NAME, "challenger").version) == "2"
    run = MlflowClient().get_run(two.run_id)
    assert run.data.params["recipe.nproc"] == "2"
    assert len(MlflowClient().get_metric_history(two.run_id, "train/loss")) == 6  # rank 0 logs, once


def test_under_mlflow_run_the_training_logs_into_the_launchers_run(base, monkeypatch):
    from training.run import train

    mlflow.set_experiment("umm-train")
    with mlflow.start_run() as run:  # what `mlflow run` creates before starting the entry point
        pass
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    result = train(recipe(steps=2))
    assert result.run_id == run.info.run_id
    logged = MlflowClient().get_run(run.info.run_id)
    assert logged.data.tags["umm.model_version"] == result.version == "2"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "train/loss")) == 2


_TRAIN_ONE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from training.recipe import train_recipe
from training.run import train
result = train(train_recipe(**json.loads(sys.argv[1])))
print("RESULT " + json.dumps({"version": result.version, "digest": result.weights_digest, "reused": result.reused}))
"""


@pytest.mark.slow
def test_two_identical_trainings_at_once_make_one_version_and_take_turns_with_the_checkpoints(base):
    """The second waits for the first (one checkpoint folder, one writer), then returns its version."""
    import subprocess
    import sys

    values = {**FIXED, "steps": 3, "alias": None, "threads": 1}
    processes = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONE, json.dumps(values)], cwd=base, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "CI": "true"})
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outputs]
    assert results[0]["version"] == results[1]["version"] == "2" and results[0]["digest"] == results[1]["digest"]
    assert _versions() == ["1", "2"]
    assert sorted(r["reused"] for r in results) == [False, True]  # one trained, the other took its result
    assert any("another training is using" in err for _, err in outputs)  # after waiting for it

