"""Post-training BAGEL (tiny random weights, its real upstream code from ../shared/upstream/bagel):
the same methods as Janus through the training contract, BAGEL's own objective (text CE +
flow-matching MSE on VAE latents) over packed sequence plans, and the interleaved methods (IRG in
two stages, UniCoT with LoRA) on tiny conversation data sets (`tests.training_fixtures`)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from model_flavors import flavor
from tests.training_fixtures import BAGEL_CHECKOUT as CHECKOUT
from tests.training_fixtures import (
    conversations_parquet,
    forget_upstream_modules,
    image_parquet,
    irg_dataset,
    register_base,
    unicot_dataset,
)
from tests.training_fixtures import square as _square
from umm_harness.core.errors import ConfigError
from umm_harness.core.training import Example

NAME = "bagel-tiny"

pytestmark = pytest.mark.skipif(not (CHECKOUT / "inferencer.py").is_file(),
                                reason=f"no BAGEL checkout at {CHECKOUT} (the upstream-backbones tests need it too)")

FIXED = {"model": f"models:/{NAME}/1", "steps": 6, "batch_size": 4, "lr": 2e-3, "warmup_steps": 0,
         "min_lr_ratio": 1.0, "cfg_dropout": 0.0, "data": {"num_understanding": 4, "num_generation": 4},
         "checkpoint_every": 0, "log_every": 2, "threads": 1}


def recipe(**values):
    from training.recipe import train_recipe

    return train_recipe(**{**FIXED, **values})


@pytest.fixture(scope="module")
def tiny_bagel_dir(tmp_path_factory):
    from model_flavors.bagel_tiny import build_tiny

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = build_tiny(tmp_path_factory.mktemp("bagel") / "tiny-bagel", seed=0, repo_path=CHECKOUT)
    yield folder
    torch.set_num_threads(before)
    forget_upstream_modules()  # the stand-in checkouts of test_bagel.py use the same top-level names


@pytest.fixture
def tiny_bagel(tiny_bagel_dir):
    from model_flavors.bagel import Bagel

    return Bagel.load(str(tiny_bagel_dir), dtype="float32", device="cpu")


@pytest.fixture
def base(workspace, tiny_bagel):
    """The tiny BAGEL (fp32, CPU) registered as version 1 of `bagel-tiny`."""
    register_base(tiny_bagel, NAME)
    return workspace


def _weights(backbone) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in backbone.model.state_dict().items()}


# -- the contract ------------------------------------------------------------------------------


def test_parameter_groups_split_the_mixture_of_transformers(tiny_bagel):
    groups = tiny_bagel.parameter_groups()
    names = {group: {id(p) for module in modules for p in module.parameters()} for group, modules in groups.items()}
    model_params = {id(p) for p in tiny_bagel.model.parameters()}
    # the three model groups cover the model exactly once; the VAE is outside it
    assert names["understanding_expert"] | names["generation_expert"] | names["vision_encoder"] == model_params
    assert not names["understanding_expert"] & names["generation_expert"]
    assert not names["vae"] & model_params
    gen = {n for n, p in tiny_bagel.model.named_parameters() if id(p) in names["generation_expert"]}
    assert "language_model.model.layers.0.self_attn.q_proj_moe_gen.weight" in gen and "llm2vae.weight" in gen
    assert not any("moe_gen" in n for n, p in tiny_bagel.model.named_parameters()
                   if id(p) in names["understanding_expert"])


def test_each_objective_reaches_only_its_branches(tiny_bagel):
    """CE trains the understanding path (no VAE-branch gradient); flow matching trains the generation
    expert (the LM head gets none); reconstruction's condition is the ViT view."""
    model = tiny_bagel.model.train()
    tiny_bagel.freeze("vae")
    understanding = [Example(f"u{i}", "understanding", "What color is the square?", _square(c), answer=c)
                     for i, c in enumerate(["red", "blue"])]
    generation = [Example(f"g{i}", "generation", f"a {c} square", _square(c)) for i, c in enumerate(["red", "blue"])]
    grads = {}
    for objective, examples in [("understanding", understanding), ("generation", generation),
                                ("reconstruction", understanding)]:
        model.zero_grad(set_to_none=True)
        batch = tiny_bagel.encode(examples, objective).collate([0, 1])
        loss = tiny_bagel.loss(model, objective, batch)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        grads[objective] = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "language_model.lm_head.weight" in grads["understanding"]
    assert not any(n.startswith("llm2vae") for n in grads["understanding"])
    assert "llm2vae.weight" in grads["generation"] and "language_model.lm_head.weight" not in grads["generation"]
    assert not any(n.startswith("vit_model") for n in grads["generation"])
    assert any(n.startswith("vit_model") for n in grads["reconstruction"])


def test_a_dropped_prompt_leaves_its_text_out(tiny_bagel):
    examples = [Example("g0", "generation", "a red square", _square("red"))]
    batch = tiny_bagel.encode(examples, "generation").collate([0])
    dropped = {**batch, "input_ids": tiny_bagel.unconditional_ids(batch["input_ids"], torch.tensor([True]))}
    model = tiny_bagel.model.train()
    torch.manual_seed(0)
    with_prompt = tiny_bagel.loss(model, "generation", batch)
    torch.manual_seed(0)
    without = tiny_bagel.loss(model, "generation", dropped)
    assert with_prompt.item() != without.item()


# -- methods end to end -----------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lowers_bagels_loss_and_registers_a_version_that_compare_reads_against_its_parent(base):
    from training.run import train
    from umm_harness.compare import CompareRecipe, compare

    result = train(recipe(method="sft", objectives={"understanding": 1.0, "generation": 1.0}))
    assert len(result.losses) == 6 and result.losses[-1] < 0.8 * result.losses[0], result.losses
    assert result.version == "2"
    mv = MlflowClient().get_model_version(NAME, "2")
    assert mv.tags["umm.parent_version"] == "1" and mv.tags["umm.method"] == "sft"
    assert mv.tags["umm.train_run_id"] == result.run_id and mv.tags["umm.dataset_digest"] == result.dataset_digest
    assert str(MlflowClient().get_model_version_by_alias(NAME, "challenger").version) == "2"

    reloaded = flavor.load_model(f"models:/{NAME}/2")
    trained, again = _weights(result.backbone), _weights(reloaded)
    assert trained.keys() == again.keys() and all(torch.equal(trained[k], again[k]) for k in trained)
    original = _weights(flavor.load_model(f"models:/{NAME}/1"))
    assert any(not torch.equal(original[k], trained[k]) for k in trained)
    comparison = compare(CompareRecipe(model_name=NAME, versions=["1", "2"], limit=2, batch_size=2, bootstrap=100))
    assert comparison.baseline == "1" and {d.version for d in comparison.deltas} == {"2"}


@pytest.mark.slow
def test_reca_trains_only_the_generation_expert(base):
    from training.run import train

    result = train(recipe(method="reca"))
    assert result.losses[-1] < result.losses[0], result.losses
    before, after = flavor.load_model(f"models:/{NAME}/1"), flavor.load_model(f"models:/{NAME}/2")
    groups = after.parameter_groups()
    by_id = {id(p): n for n, p in after.model.named_parameters()}
    old, new = _weights(before), _weights(after)
    for group, changed in [("understanding_expert", False), ("vision_encoder", False), ("generation_expert", True)]:
        names = {by_id[id(p)] for module in groups[group] for p in module.parameters()}
        moved = {n for n in names if not torch.equal(old[n], new[n])}
        assert bool(moved) is changed, (group, sorted(moved)[:3])
    assert MlflowClient().get_model_version(NAME, "2").tags["umm.method"] == "reca"


@pytest.mark.slow
def test_reca_with_ema_resumes_exactly_after_a_kill(base, tmp_path):
    """Killed after step 3 and run again, it repeats the uninterrupted loss curve and exports the same
    EMA weights (the average travels with the checkpoint)."""
    from training.run import train

    settings = {"method": "reca", "ema": 0.5, "checkpoint_every": 3, "alias": None}
    whole = train(recipe(**settings, output_dir=str(tmp_path / "whole")))
    killed = train(recipe(**settings, output_dir=str(tmp_path / "resumed")), stop_after_step=3)
    assert killed.version is None and killed.steps == 3
    resumed = train(recipe(**settings, output_dir=str(tmp_path / "resumed")))
    assert resumed.resumed_from_step == 3 and resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a = _weights(flavor.load_model(whole.model_uri))
    b = _weights(flavor.load_model(resumed.model_uri))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_ema_under_zero_3_on_two_processes_exports_as_one_process_and_resumes_exactly(base, tmp_path):
    """Each ZeRO-3 rank averages its own partition of the weights; gathered at export they are the EMA
    one process keeps of whole weights over the same global batch (a text-only objective: no
    per-rank noise), even across a kill: each rank's averages travel with the checkpoint."""
    from training.run import train

    values = {"method": "sft", "ema": 0.5, "objectives": {"understanding": 1.0}, "steps": 2, "batch_size": 2,
              "data": {"num_understanding": 2, "num_generation": 0}, "checkpoint_every": 1, "alias": None}
    zero3 = {"nproc": 2, "zero_stage": 3, "zero_options": {"stage3_param_persistence_threshold": 0}}
    one = train(recipe(**values, grad_accum=2, output_dir=str(tmp_path / "one")))
    # two ranks, killed after step 1 and run again: an average restarted at the resumed weights
    # would be 0.25 × (w0 - w1) away, some 5e-4 at this learning rate
    killed = train(recipe(**values, **zero3, output_dir=str(tmp_path / "two")), stop_after_step=1)
    assert killed.version is None and killed.steps == 1
    two = train(recipe(**values, **zero3, output_dir=str(tmp_path / "two")))
    assert two.resumed_from_step == 1 and two.losses == pytest.approx(one.losses, rel=1e-5)
    parent = _weights(flavor.load_model(f"models:/{NAME}/1"))
    a, b = _weights(flavor.load_model(one.model_uri)), _weights(flavor.load_model(two.model_uri))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert max((a[k] - parent[k]).abs().max() for k in a) > 1e-4  # the EMA moved


def test_the_ema_moves_toward_the_weights_and_replaces_them_at_export():
    from training.ema import Ema

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    ema = Ema(model, decay=0.75)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 1.0) and "bias" not in ema.shadow
    exported = ema.applied(model.state_dict(), ema.whole(model, keep=True))
    assert torch.equal(exported["weight"], ema.shadow["weight"]) and torch.equal(exported["bias"], model.bias)


# -- lora (UniCoT's method) and bad input -----------------------------------------------------------


@pytest.mark.slow
def test_lora_on_both_experts_merges_into_a_version_that_reloads(base):
    from training.run import train

    result = train(recipe(method="lora", objectives={"understanding": 1.0, "generation": 1.0}, lr=1e-2,
                          lora={"rank": 8, "alpha": 16, "merge": True}))
    assert result.losses[-1] < result.losses[0], result.losses
    old, new = _weights(flavor.load_model(f"models:/{NAME}/1")), _weights(flavor.load_model(result.model_uri))
    assert old.keys() == new.keys()  # merged: a plain BAGEL checkpoint, no adapter weights
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert "language_model.model.layers.0.self_attn.q_proj_moe_gen.weight" in moved
    assert "language_model.model.layers.0.mlp.up_proj.weight" in moved
    assert not any(k.startswith(("vit_model", "llm2vae", "language_model.lm_head")) for k in moved)


def test_a_lora_rank_above_a_layers_size_is_refused_before_any_step(base):
    from training.run import train

    with pytest.raises(ConfigError, match=r"lora.rank 256 is larger than layer '.*language_model.*'.* at most"):
        train(recipe(method="lora", lora={"rank": 256, "alpha": 512}))
    assert [str(mv.version) for mv in MlflowClient().search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert not mlflow.search_runs(search_all_experiments=True, filter_string="tags.`umm.stage` = 'train'").shape[0]


def test_bagel_behind_a_server_cannot_be_trained():
    from model_flavors.bagel import Bagel, VllmOmniEngine
    from umm_harness.core.backbone import ModelInfo
    from umm_harness.core.errors import ConfigError

    served = Bagel(VllmOmniEngine(client=None, model="ByteDance-Seed/BAGEL-7B-MoT"),
                   ModelInfo(backbone="bagel", source="http://127.0.0.1:8000"))
    with pytest.raises(ConfigError, match="served by vllm-omni cannot be post-trained"):
        served.encode([Example("g0", "generation", "a red square", _square("red"))], "generation")


@pytest.mark.slow
def test_reca_trains_on_a_parquet_of_images(base, tmp_path):
    from training.run import train

    data = image_parquet(tmp_path / "images.parquet", [_square(c) for c in ("red", "blue", "green", "yellow")])
    result = train(recipe(method="reca", data={"benchmark": "images", "path": str(data)}))
    assert result.version == "2" and result.dataset_size == 4 and result.losses[-1] < result.losses[0]


def test_a_bad_image_row_is_named_before_any_step(base, tmp_path):
    from training.run import train

    data = image_parquet(tmp_path / "images.parquet", [_square("red"), _square("blue"), "bm90IGFuIGltYWdl"])
    with pytest.raises(ConfigError, match=r"images.parquet': row 2: field 'image': not an image"):
        train(recipe(method="reca", data={"benchmark": "images", "path": str(data)}))
    assert [str(mv.version) for mv in MlflowClient().search_model_versions(f"name = '{NAME}'")] == ["1"]
    with pytest.raises(ConfigError, match="trains only the 'reconstruction' objective"):
        recipe(method="sft", data={"benchmark": "images", "path": str(data)})


# -- recA's instructions ------------------------------------------------------------------------------


def test_reca_draws_a_describe_everything_instruction_per_image():
    from training.reca import DESCRIBE_PROMPTS, describe_prompt

    drawn = [describe_prompt(0, f"img{i}") for i in range(40)]
    assert set(drawn) <= set(DESCRIBE_PROMPTS) and len(set(drawn)) > 10  # many templates, not one
    assert drawn == [describe_prompt(0, f"img{i}") for i in range(40)]  # a function of (seed, image id)
    assert drawn != [describe_prompt(1, f"img{i}") for i in range(40)]


# -- IRG: interleaved conversations, two stages --------------------------------------------------------


def test_a_conversation_becomes_a_plan_whose_loss_reaches_text_and_image(tiny_bagel, tmp_path):
    """A full-learning conversation: its learnt texts train the LM head, its target images the
    generation expert, its image conditions (ViT view, clean latents) the vision branch."""
    from training.interleaved import load_subsets

    root = irg_dataset(tmp_path / "irg", modes=["improving_full_learning"], rows=1)
    [example] = load_subsets(root, ["improving_full_learning"])
    assert [(p.type, p.loss, p.vae, p.vit) for p in example.parts] == [
        ("text", False, False, False), ("text", False, False, False), ("image", False, True, True),
        ("text", True, False, False), ("image", True, False, False)]
    plans = tiny_bagel.encode([example], "interleaved")
    assert [part.kind for part in plans.plans[0]] == ["text", "text", "vae", "vit", "text", "target"]
    model = tiny_bagel.model.train()
    tiny_bagel.freeze("vae")
    loss = tiny_bagel.loss(model, "interleaved", plans.collate([0]))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"language_model.lm_head.weight", "llm2vae.weight"} <= grads
    assert any(n.startswith("vit_model") for n in grads)


def _bad_rows():
    good = {"role": "assistant", "content": [{"type": "text", "content": "ok"}]}
    return [
        ("not json", r"row 1: field 'conversation': not JSON"),
        ([{"role": "system", "content": "x"}, good], r"row 1: turn 0: field 'role'"),
        ([{"role": "assistant", "content": [{"type": "image", "content": "bm90IGFuIGltYWdl", "need_loss": True}]}],
         r"row 1: turn 0: part 0: field 'content': not a base64 image"),
        ([{"role": "assistant", "content": [{"type": "text", "content": "x", "need_loss": "yes"}]}],
         r"row 1: turn 0: part 0: field 'need_loss': expected true or false"),
        ([{"role": "user", "content": "only a question"}], r"row 1: nothing to learn"),
    ]


@pytest.mark.parametrize("row, message", _bad_rows())
def test_a_bad_conversation_row_is_named(tmp_path, row, message):
    from training.interleaved import load_subsets

    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "content": "ok"}]}]
    conversations_parquet(tmp_path / "irg" / "initial_full_learning" / "part-0.parquet", [good, row])
    with pytest.raises(ConfigError, match=message):
        load_subsets(tmp_path / "irg", ["initial_full_learning"])


def test_bad_interleaved_input_is_refused_before_any_step(base, tmp_path):
    from training.run import train

    data = irg_dataset(tmp_path / "irg", modes=["initial_full_learning"], rows=1)
    with pytest.raises(ConfigError, match="no parquet files for subset 'improving_full_learning'"):
        train(recipe(method="irg", data={"benchmark": "interleaved", "path": str(data)}))
    with pytest.raises(ConfigError, match="irg stage 2 continues from an IRG stage-1 version.*version 1 "
                                          r"\(method none, stage none\)"):
        train(recipe(method="irg", irg={"stage": 2}, data={"benchmark": "interleaved", "path": str(data)}))
    with pytest.raises(ConfigError, match="irg stage 2 keeps only the full-learning modes; remove "
                                          "initial_thinking_generation_learning"):
        recipe(method="irg", irg={"stage": 2, "modes": {"initial_full_learning": 1.0,
                                                        "initial_thinking_generation_learning": 0.5}},
               data={"benchmark": "interleaved", "path": str(data)})
    # UniCoT's rank 256 does not fit the tiny model's layers
    with pytest.raises(ConfigError, match=r"lora.rank 256 is larger than layer"):
        train(recipe(method="unicot", data={"benchmark": "interleaved", "path": str(unicot_dataset(tmp_path / "u"))}))
    assert [str(mv.version) for mv in MlflowClient().search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert not mlflow.search_runs(search_all_experiments=True, filter_string="tags.`umm.stage` = 'train'").shape[0]


def test_interleaved_methods_are_refused_on_a_backbone_without_the_loss(workspace, tiny_janus, tmp_path):
    from training.run import train

    register_base(tiny_janus, "janus-pro-tiny")
    data = irg_dataset(tmp_path / "irg", rows=1)
    with pytest.raises(ConfigError, match="method 'irg': backbone 'janus_pro' has no 'interleaved' loss"):
        train(recipe(model="models:/janus-pro-tiny/1", method="irg", data={"benchmark": "interleaved",
                                                                          "path": str(data)}))


IRG = {"steps": 4, "batch_size": 2, "lr": 2e-3, "checkpoint_every": 2}


@pytest.mark.slow
def test_irg_stage_1_then_stage_2_lower_the_loss_register_lineage_and_resume_exactly(base, tmp_path):
    from training.run import train
    from umm_harness.compare import CompareRecipe, compare

    data = {"benchmark": "interleaved", "path": str(irg_dataset(tmp_path / "irg", rows=2))}
    stage1 = train(recipe(method="irg", data=data, **IRG))
    assert stage1.losses[-1] < stage1.losses[0], stage1.losses
    run = MlflowClient().get_run(stage1.run_id)
    assert {"train/loss_initial_full_learning", "train/loss_improving_thinking_understanding_learning"} <= set(
        run.data.metrics)

    # killed after step 2 and run again: the same curve and the same weights
    killed = train(recipe(method="irg", data=data, **IRG, output_dir=str(tmp_path / "killed"), alias=None),
                   stop_after_step=2)
    assert killed.version is None and killed.steps == 2
    resumed = train(recipe(method="irg", data=data, **IRG, output_dir=str(tmp_path / "killed"), alias=None))
    assert resumed.resumed_from_step == 2 and resumed.losses == pytest.approx(stage1.losses, rel=1e-5)
    a, b = _weights(flavor.load_model(stage1.model_uri)), _weights(flavor.load_model(resumed.model_uri))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    stage2 = train(recipe(model=f"models:/{NAME}/{stage1.version}", method="irg", irg={"stage": 2}, data=data,
                          **IRG))
    assert stage2.losses[-1] < stage2.losses[0], stage2.losses
    for result, stage, parent in [(stage1, "1", "1"), (stage2, "2", stage1.version)]:
        mv = MlflowClient().get_model_version(NAME, result.version)
        assert mv.tags["umm.method"] == "irg" and mv.tags["umm.irg_stage"] == stage
        assert mv.tags["umm.parent_version"] == parent and mv.tags["umm.train_run_id"] == result.run_id
        assert mv.tags["umm.dataset_digest"] == result.dataset_digest
    assert set(MlflowClient().get_run(stage2.run_id).data.metrics) >= {"train/loss_improving_full_learning"}
    assert not any("thinking" in key for key in MlflowClient().get_run(stage2.run_id).data.metrics)
    assert str(MlflowClient().get_model_version_by_alias(NAME, "challenger").version) == stage2.version

    reloaded = flavor.load_model(stage2.model_uri)  # through the flavor, as any registered BAGEL
    trained, again = _weights(stage2.backbone), _weights(reloaded)
    assert all(torch.equal(trained[k], again[k]) for k in trained)
    comparison = compare(CompareRecipe(model_name=NAME, versions=[stage1.version, stage2.version], limit=2,
                                       batch_size=2, bootstrap=100))
    assert comparison.baseline == stage1.version and {d.version for d in comparison.deltas} == {stage2.version}


@pytest.mark.slow
def test_unicot_trains_lora_adapters_on_conversations_merges_them_and_resumes_exactly(base, tmp_path):
    from training.run import train

    data = {"benchmark": "interleaved", "path": str(unicot_dataset(tmp_path / "unicot"))}
    values = {"method": "unicot", "data": data, "lora": {"rank": 8, "alpha": 16}, "lr": 1e-2, "steps": 4,
              "batch_size": 2, "checkpoint_every": 2}
    result = train(recipe(**values))
    assert result.losses[-1] < result.losses[0], result.losses
    assert set(MlflowClient().get_run(result.run_id).data.metrics) >= {"train/loss_self_reflection",
                                                                       "train/loss_breakdown"}
    mv = MlflowClient().get_model_version(NAME, result.version)
    assert mv.tags["umm.method"] == "unicot" and mv.tags["umm.parent_version"] == "1"
    old, new = _weights(flavor.load_model(f"models:/{NAME}/1")), _weights(flavor.load_model(result.model_uri))
    assert old.keys() == new.keys()  # merged into a plain BAGEL checkpoint
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith("language_model.model.layers.") for k in moved)

    killed = train(recipe(**values, output_dir=str(tmp_path / "killed"), alias=None), stop_after_step=2)
    resumed = train(recipe(**values, output_dir=str(tmp_path / "killed"), alias=None))
    assert killed.steps == 2 and resumed.resumed_from_step == 2
    assert resumed.losses == pytest.approx(result.losses, rel=1e-5)


@pytest.mark.slow
def test_unicot_adapters_kept_unmerged_reload_in_a_fresh_process_and_answer_as_merged(base, tmp_path):
    """`lora.merge: false`: the version holds the base weights untouched plus peft's adapter files;
    BAGEL's loader applies them, and it answers as the same training merged."""
    from safetensors.torch import load_file

    from tests.reload import assert_same_predictions, predict_in_fresh_process, task_rows
    from training.run import train
    from umm_harness.compare import CompareRecipe, compare
    from umm_harness.core.requests import encode_png

    data = {"benchmark": "interleaved", "path": str(unicot_dataset(tmp_path / "unicot"))}
    values = {"method": "unicot", "data": data, "lr": 1e-2, "steps": 2, "batch_size": 2, "alias": None}
    merged = train(recipe(**values, lora={"rank": 8, "alpha": 16}, output_dir=str(tmp_path / "merged")))
    kept = train(recipe(**values, lora={"rank": 8, "alpha": 16, "merge": False}, output_dir=str(tmp_path / "kept")))
    assert kept.losses == merged.losses and kept.version != merged.version

    folders = {name: Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri,
                                                              dst_path=str(tmp_path / name)))
               for name, result in {"merged": merged, "kept": kept}.items()}
    weights = folders["kept"] / "weights"
    assert (weights / "adapter_model.safetensors").is_file() and (weights / "adapter_config.json").is_file()
    requirements = {name: (folder / "requirements.txt").read_text().split() for name, folder in folders.items()}
    assert "peft>=0.17" in requirements["kept"] and "peft>=0.17" not in requirements["merged"]  # its own env loads it
    parent = _weights(flavor.load_model(f"models:/{NAME}/1"))
    base_weights = load_file(str(weights / "ema.safetensors"))
    assert base_weights.keys() == parent.keys() and all(torch.equal(base_weights[k], parent[k]) for k in parent)
    loaded = flavor.load_model(kept.model_uri)
    trained_b = [p for name, p in loaded.model.named_parameters() if "lora_B" in name]
    assert trained_b and all(p.abs().sum() > 0 for p in trained_b)  # trained adapters, applied at load

    # in fp32, the adapters beside the weights compute what the merged weights compute
    examples = [Example(f"u{i}", "understanding", "What color is the square?", _square(c), answer=c)
                for i, c in enumerate(["red", "blue"])]

    def fp32_losses(backbone) -> list[float]:
        out = []
        for objective in ("understanding", "generation"):
            torch.manual_seed(0)  # the flow-matching noise
            with torch.no_grad():
                out.append(backbone.loss(backbone.model.train(), objective,
                                         backbone.encode(examples, objective).collate([0, 1])).item())
        return out

    losses = fp32_losses(loaded)
    assert losses == pytest.approx(fp32_losses(flavor.load_model(merged.model_uri)), rel=1e-5)
    assert losses != pytest.approx(fp32_losses(flavor.load_model(f"models:/{NAME}/1")), rel=1e-3)

    # served from a fresh process: the same answers; images within bf16 rounding (the CPU route
    # samples under bf16 autocast, where x·W + (x·A)·B and x·(W + A·B) round differently)
    rows = task_rows(encode_png(_square("red")), ("understanding", "generation"))
    params = {"seed": 5, "steps": 3, "max_new_tokens": 4}
    answers = predict_in_fresh_process({name: (folder, rows, params) for name, folder in folders.items()}, tmp_path)
    assert_same_predictions(answers["kept"]["rows"], answers["merged"]["rows"], name="kept", pixel_tolerance=8)

    comparison = compare(CompareRecipe(model_name=NAME, versions=["1", kept.version], limit=2, batch_size=2,
                                       bootstrap=100))
    assert comparison.baseline == "1" and {d.version for d in comparison.deltas} == {kept.version}


@pytest.mark.slow
def test_irg_on_two_processes_with_zero_3_follows_one_process_with_grad_accumulation(base, tmp_path):
    """One rank with 2 micro-batches sees the conversations two ranks (ZeRO-3, torchrun) with one each
    see; the flow-matching noise is drawn per rank, so the losses agree only closely."""
    from training.run import train

    data = {"benchmark": "interleaved", "path": str(irg_dataset(tmp_path / "irg", rows=1))}
    values = {"method": "irg", "data": data, "steps": 1, "batch_size": 2, "alias": None,
              "irg": {"modes": {"initial_full_learning": 1.0, "improving_full_learning": 1.0}}}
    one = train(recipe(**values, grad_accum=2, output_dir=str(tmp_path / "one")))
    two = train(recipe(**values, nproc=2, zero_stage=3, output_dir=str(tmp_path / "two"),
                       zero_options={"stage3_param_persistence_threshold": 0}))
    assert two.steps == 1 and two.losses == pytest.approx(one.losses, rel=2e-2)
    assert MlflowClient().get_model_version(NAME, two.version).tags["umm.irg_stage"] == "1"
