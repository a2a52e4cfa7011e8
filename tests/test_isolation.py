"""Backbones in their own environments: what a logged model records, and the isolated route
(`--env-manager uv`: MLflow builds the model's environment and serves it; the harness posts batches).

The slow tests start real `mlflow models serve` processes in uv-built environments; the first one on
a machine builds the environment (about a minute), later ones find it by its hash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from model_flavors import environment, flavor
from model_flavors.janus import JanusPro
from umm_harness import isolation
from umm_harness.cache import ResultCache
from umm_harness.config import EvalRecipe
from umm_harness.core.backbone import Upstream
from umm_harness.core.errors import ConfigError
from umm_harness.core.home import umm_home
from umm_harness.core.requests import InferenceParams, InferenceRequest, encode_png
from umm_harness.model_ref import resolve_model
from umm_harness.tracking import official

UPSTREAM_JANUS = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "janus"


class JanusOnUpstream(JanusPro):
    """Janus-Pro declared as an upstream route declares itself: its repository at a pinned commit, its
    own pins, its own environment by default (the weights still load through the harness's Janus code)."""

    upstream = Upstream(repo="https://github.com/deepseek-ai/Janus", commit="1daa72fa409002d40931bd7b36a9280362469ead")
    pip_requirements = ("transformers>=5.1,<6", "einops>=0.7")
    env_manager = "uv"

    @classmethod
    def load(cls, source: str, *, repo_path: str | None = None, **options) -> JanusOnUpstream:
        backbone = super().load(source, **options)
        backbone.repo_path = Path(repo_path) if repo_path else None
        return backbone


def _requests() -> list[InferenceRequest]:
    """A batch of each kind, every sample with its own seed (as the runner makes them)."""
    scene = Image.new("RGB", (64, 64), "white")
    return [InferenceRequest(task="generation", prompt=f"a photo of a red circle {i}",
                             params=InferenceParams(seed=1000 + 37 * i)) for i in range(3)] + [
        InferenceRequest(task="understanding", prompt=f"Is there a circle? ({i})", images=[scene],
                         params=InferenceParams(seed=i)) for i in range(2)]


def _same(a, b) -> None:
    assert [r.text for r in a] == [r.text for r in b]
    assert [[image.tobytes() for image in r.images] for r in a] == [[image.tobytes() for image in r.images] for r in b]
    assert [r.params.seed for r in a] == [r.params.seed for r in b]


def test_a_logged_model_carries_its_environment_for_every_env_manager(tmp_path, tiny_janus):
    flavor.save_model(tiny_janus, tmp_path / "model")
    model = tmp_path / "model"
    pyfunc = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["env"] == {"virtualenv": "python_env.yaml", "conda": "conda.yaml"}  # uv reads both keys
    python = ".".join(map(str, sys.version_info[:3]))
    assert yaml.safe_load((model / "python_env.yaml").read_text())["python"] == python
    assert f"python={python}" in yaml.safe_load((model / "conda.yaml").read_text())["dependencies"]
    requirements = (model / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    assert Path(mlflow.pyfunc.get_model_dependencies(str(model))) == model / "requirements.txt"
    assert yaml.safe_load((model / "MLmodel").read_text())["flavors"]["umm"]["env_manager"] == "local"


def test_a_backbone_pin_replaces_the_base_pin_of_the_same_package():
    class OldTransformers(JanusPro):
        pip_requirements = ("Transformers==4.49.0", "timm>=1.0")

    requirements = environment.requirements_for(OldTransformers)
    assert "Transformers==4.49.0" in requirements and "transformers>=5.0,<6" not in requirements
    assert "timm>=1.0" in requirements and "torch==2.13.0" in requirements

    class Broken(JanusPro):
        pip_requirements = ("transformers >>> 5",)

    with pytest.raises(ConfigError, match="Broken.pip_requirements: 'transformers >>> 5'"):
        environment.requirements_for(Broken)


@pytest.mark.skipif(not UPSTREAM_JANUS.is_dir(), reason=f"no upstream snapshot at {UPSTREAM_JANUS}")
def test_the_upstream_checkout_travels_with_the_model_and_is_loaded_from_there(tmp_path, tiny_janus_dir, monkeypatch):
    monkeypatch.setitem(sys.modules["model_flavors.registry"].BACKBONES, "janus_pro", f"{__name__}:JanusOnUpstream")
    backbone = JanusOnUpstream.load(str(tiny_janus_dir), repo_path=str(UPSTREAM_JANUS))
    flavor.save_model(backbone, tmp_path / "model")

    conf = flavor.flavor_conf(tmp_path / "model")
    assert conf["upstream"] == {"repo": "https://github.com/deepseek-ai/Janus",
                                "commit": JanusOnUpstream.upstream.commit, "path": "upstream", "verified": "True"}
    assert conf["env_manager"] == "uv"
    bundled = tmp_path / "model" / "code" / "upstream"
    assert (bundled / "janus").is_dir() and (bundled / ".upstream-commit").is_file()
    requirements = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert "transformers>=5.1,<6" in requirements and "einops>=0.7" in requirements

    reloaded = flavor.load_local(tmp_path / "model")
    assert reloaded.repo_path == bundled  # the model's own copy, not the checkout it was logged from


def test_a_checkout_at_another_commit_is_refused(tmp_path, tiny_janus_dir):
    checkout = tmp_path / "janus"
    checkout.mkdir()
    (checkout / ".upstream-commit").write_text("0123456789abcdef0123456789abcdef01234567\n")
    backbone = JanusOnUpstream.load(str(tiny_janus_dir), repo_path=str(checkout))
    with pytest.raises(ConfigError, match=r"is at commit 0123456789ab, but backbone 'janus_pro' is written against "
                                          r"1daa72fa4090: check out that commit"):
        flavor.save_model(backbone, tmp_path / "model")
    without = JanusOnUpstream.load(str(tiny_janus_dir))  # an instance that runs without the authors' code
    flavor.save_model(without, tmp_path / "model2")
    assert flavor.flavor_conf(tmp_path / "model2")["upstream"] is None
    assert not (tmp_path / "model2" / "code" / "upstream").exists()


def test_uv_gets_the_package_sources_pip_is_configured_with():
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True)
    variables = isolation.pip_sources_for_uv()
    for folder in listing.stdout.split():
        assert folder in variables.get("UV_FIND_LINKS", "").split(",")  # where torch 2.13.0 (CPU) lies here


def test_every_row_keeps_its_own_params_and_seed(tiny_janus):
    model = flavor.UmmPyfuncModel(tiny_janus)
    batch = _requests()[:3]
    frame = pd.DataFrame({"task": [r.task for r in batch], "prompt": [r.prompt for r in batch],
                          "params": [r.params.model_dump_json(exclude_none=True) for r in batch]})
    answered = model.predict(frame, params={"seed": 5})
    assert [json.loads(p)["seed"] for p in answered["params"]] == [1000, 1037, 1074]  # not 5, 6, 7
    direct = tiny_janus.run(batch)
    assert list(answered["images"]) == [[encode_png(image) for image in r.images] for r in direct]

    frame["params"] = ['{"seed": 1}', '{"steps": 0}', None]
    with pytest.raises(MlflowException, match=r"row 1: params.steps: Input should be greater than or equal to 1"):
        model.predict(frame)


def test_a_checkpoint_for_its_own_environment_is_saved_without_loading_it(workspace, tiny_janus, tiny_janus_dir):
    model = resolve_model("tiny:janus-pro", env_manager="uv")
    assert model.env_manager == "uv" and model.backbone._loaded is None  # nothing loaded, no server yet
    conf = flavor.flavor_conf(model.model_folder)
    assert conf["backbone"] == "janus_pro" and conf["weights"] == "weights"
    assert (model.model_folder / "python_env.yaml").is_file()
    batch = _requests()[:2]
    _same(flavor.load_local(model.model_folder).run(batch), tiny_janus.run(batch))  # the copied checkpoint loads
    assert resolve_model("tiny:janus-pro", env_manager="uv").model_folder == model.model_folder  # saved once

    with pytest.raises(ConfigError, match=r"backbone_options \['think'\]: not options of janus_pro \(it takes: "):
        resolve_model(str(tiny_janus_dir), env_manager="uv", options={"think": True})


@pytest.mark.slow
def test_eval_in_its_own_environment_matches_in_process_and_reuses_the_environment(workspace, tiny_janus):
    from umm_harness.evaluate import evaluate

    local = evaluate(EvalRecipe(model="tiny:janus-pro", limit=6, env_manager="local"))  # registers version 1
    cache = umm_home() / "cache"
    cache.rename(umm_home() / "cache-local")  # so the isolated run computes every output again

    isolated = evaluate(EvalRecipe(model="tiny:janus-pro", limit=6, env_manager="uv",
                                   register_as="janus-pro-tiny-isolated"))
    assert official(isolated.metrics) == official(local.metrics)
    assert isolated.results["shapes"].records == local.results["shapes"].records
    assert isolated.results["shapes"].computed == local.results["shapes"].computed > 0
    # The outputs themselves (texts, seeds, image bytes) are identical.
    here, there = (ResultCache(next((umm_home() / name).iterdir())) for name in ("cache-local", "cache"))
    keys = [(sample.id, k) for sample in local.results["shapes"].samples for k in range(sample.n)]
    for key in keys:
        a, b = here.output(*key), there.output(*key)
        assert (a.text, a.seed, [i.tobytes() for i in a.images]) == (b.text, b.seed, [i.tobytes() for i in b.images])
    assert any(here.output(*key).images for key in keys) and any(here.output(*key).text for key in keys)
    assert mlflow.get_run(isolated.run_id).data.tags["umm.env_manager"] == "uv"

    # The registered version is self-contained: a second start serves it from the registry and finds
    # the environment by its hash; the server answers plain pyfunc JSON (what `mlflow models serve`
    # users send), batches keep per-sample seeds, and an adapter's error comes back as this batch's.
    assert isolated.model_name == "janus-pro-tiny-isolated"
    served = resolve_model("models:/janus-pro-tiny-isolated/1", env_manager="uv").backbone.loaded()
    try:
        assert not served.server.built and Path(served.server.environment).is_dir()
        plain = requests.post(f"{served.server.url}/invocations", timeout=120, json={
            "dataframe_records": [{"task": "generation", "prompt": "a photo of a red circle"}], "params": {"seed": 3}})
        assert plain.status_code == 200 and plain.json()["predictions"][0]["images"]
        batch = _requests()
        _same(served.run(batch[:3]), tiny_janus.run(batch[:3]))
        _same(served.run(batch[3:]), tiny_janus.run(batch[3:]))
        with pytest.raises(isolation.ServedModelError, match=r"uv environment\): a batch of 1 generation request\(s\) "
                                                             r"failed: janus_pro generation: ValueError: janus_pro "
                                                             r"generates 64px images only"):
            served.run([InferenceRequest(task="generation", prompt="x", params=InferenceParams(image_size=128))])
    finally:
        served.close()
    assert served.server.process.poll() is not None


@pytest.mark.slow
def test_an_environment_that_cannot_be_built_is_a_clear_error(tmp_path, tiny_janus, monkeypatch):
    flavor.save_model(tiny_janus, tmp_path / "model")
    missing = tmp_path / "wheels" / "umm_missing-1.0-py3-none-any.whl"
    with (tmp_path / "model" / "requirements.txt").open("a") as requirements:
        requirements.write(f"{missing}\n")
    monkeypatch.setenv("MLFLOW_ENV_ROOT", str(tmp_path / "envs"))
    monkeypatch.setenv("UMM_HOME", str(tmp_path / "home"))
    conf = flavor.flavor_conf(tmp_path / "model")
    with pytest.raises(isolation.EnvironmentBuildError, match=r"its environment \(uv\) could not be built .*: error: "
                                                              r"Distribution not found at") as failed:
        isolation.serve_backbone(str(tmp_path / "model"), "uv", conf)
    log_path = Path(str(failed.value).rsplit("full log: ", 1)[1])
    assert "umm_missing-1.0-py3-none-any.whl" in log_path.read_text()  # the whole story is in the log it names
    assert not any((tmp_path / "envs").iterdir())  # MLflow removed the half-built environment
    shutil.rmtree(tmp_path / "envs")


@pytest.mark.slow
def test_training_runs_in_the_models_own_environment_and_registers_the_next_version(workspace, tiny_janus, tmp_path):
    """`umm train --env-manager uv`: MLflow builds the base model's environment (its pins, plus the
    harness's training requirements it does not pin), the workers run there, and the result is the
    same training as in the harness's own environment."""
    from training.recipe import train_recipe
    from training.run import train
    from umm_harness.core.home import umm_home
    from tests.conftest import umm

    with mlflow.start_run():
        flavor.log_model(tiny_janus, registered_model_name="janus-pro-tiny")
    fixed = {"model": "models:/janus-pro-tiny/1", "steps": 2, "batch_size": 4, "lr": 2e-3, "warmup_steps": 0,
             "cfg_dropout": 0.0, "data": {"num_understanding": 4, "num_generation": 4}, "checkpoint_every": 0,
             "threads": 1, "alias": None}
    local = train(train_recipe(**fixed, env_manager="local"))
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({**fixed, "output_dir": str(umm_home() / "train-isolated")}))

    ran = umm("train", "--recipe", str(recipe), "--env-manager", "uv", cwd=workspace, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "janus-pro-tiny version 3 (from version 1)" in ran.stdout
    version = mlflow.MlflowClient().get_model_version("janus-pro-tiny", "3")
    run = mlflow.get_run(version.tags["umm.train_run_id"])
    assert run.data.tags["umm.env_manager"] == "uv"
    environment = Path(run.data.tags["umm.python_prefix"])
    assert environment.name.startswith("mlflow-") and environment != Path(sys.prefix)  # MLflow's, by its hash
    losses = [m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")]
    assert losses == pytest.approx(local.losses, rel=1e-4)
