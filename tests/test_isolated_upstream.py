"""Upstream backbones in their own MLflow-built environments, end to end through the real CLI.

For each model — a tiny random-weight instance of its real classes (BAGEL, OmniGen2, MMaDA and
Show-o on their authors' code from ../shared/upstream; BLIP3o-NEXT on its native parts) — `umm eval
--env-manager uv` on `shapes` runs the model behind `mlflow models serve` in the environment uv
builds from the model's own requirements, and gives the same metrics and the same outputs (texts,
seeds, image bytes) as `umm eval --env-manager local`. The version it registers carries its
environment and the upstream checkout at the pinned commit; a fresh server of that version finds
the environment by its hash, answers plain pyfunc JSON, and (editing models) edits.

Environments are MLflow's, under its own cache: the first run on a machine builds each one (MMaDA
and Show-o share theirs: their requirements are the same); later runs reuse them. Each case logs
its build or reuse time and its whole time (`pytest -s` shows them)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from PIL import Image

from model_flavors import bagel_tiny, blip3o_next, mmada, omnigen2_tiny, show_o
from model_flavors.bagel import Bagel
from model_flavors.blip3o_next import Blip3oNext
from model_flavors.mmada import Mmada
from model_flavors.omnigen2 import OmniGen2
from model_flavors.show_o import ShowO
from tests.conftest import REPO, umm
from umm_harness.cache import ResultCache
from umm_harness.core.home import umm_home
from umm_harness.core.requests import InferenceParams, InferenceRequest, encode_png
from umm_harness.model_ref import resolve_model
from umm_harness.tracking import official

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
UPSTREAM = REPO.parent / "shared" / "upstream"
# name: (adapter class, tiny builder, checkout folder or None for a native-parts model)
CASES = {
    "bagel": (Bagel, bagel_tiny.build_tiny, "bagel"),
    "omnigen2": (OmniGen2, omnigen2_tiny.build_tiny, "omnigen2"),
    "mmada": (Mmada, mmada.build_tiny, "mmada"),
    "show-o": (ShowO, show_o.build_tiny, "show-o"),
    "blip3o-next": (Blip3oNext, blip3o_next.build_tiny, None),
}
PARAMS = {"steps": 2, "max_new_tokens": 4}


def _recipe(path: Path, model: Path, checkout: Path | None, env_manager: str, register_as: str) -> Path:
    recipe = {"model": str(model), "suite": "shapes", "limit": 2, "seed": 1, "batch_size": 4, "threads": 1,
              "params": PARAMS, "env_manager": env_manager, "register_as": register_as,
              "backbone_options": {"repo_path": str(checkout)} if checkout else {}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def _eval_run(register_as: str) -> mlflow.entities.Run:
    version = mlflow.MlflowClient().get_model_version(register_as, "1")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`umm.model_uri` = 'models:/{register_as}/1' "
                                              "and tags.`umm.suite` = 'shapes'")
    assert version.run_id
    return run


def _outputs(cache_root: Path) -> dict:
    """Every cached output of the run's one cache: (text, seed, image bytes) by (sample id, k)."""
    (folder,) = cache_root.iterdir()
    cache = ResultCache(folder)
    keys = [(row["sample_id"], row["k"]) for row in map(json.loads, (folder / "outputs.jsonl").read_text().splitlines())]
    return {key: (out.text, out.seed, [image.tobytes() for image in out.images])
            for key in keys if (out := cache.output(*key))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_upstream_backbone_runs_end_to_end_in_its_own_uv_environment(name, workspace, tmp_path):
    cls, build_tiny, checkout_name = CASES[name]
    checkout = UPSTREAM / checkout_name if checkout_name else None
    if checkout is not None and not checkout.is_dir():
        pytest.skip(f"no upstream snapshot at {checkout}")
    started = time.perf_counter()
    folder = tmp_path / f"tiny-{name}"
    build_tiny(folder, seed=0, **({"repo_path": checkout} if checkout else {}))

    local = umm("eval", "--recipe", str(_recipe(tmp_path / "local.yaml", folder, checkout, "local", f"{name}-local")),
                cwd=workspace, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    (umm_home() / "cache").rename(umm_home() / "cache-local")  # the isolated run computes every output again
    isolated = umm("eval", "--recipe", str(_recipe(tmp_path / "uv.yaml", folder, checkout, "uv", f"{name}-uv")),
                   cwd=workspace, timeout=1200)
    assert isolated.returncode == 0, isolated.stderr[-3000:]
    eval_s = time.perf_counter() - started

    # Same metrics, same outputs, from the model's own environment.
    here, there = _eval_run(f"{name}-local"), _eval_run(f"{name}-uv")
    assert there.data.tags["umm.env_manager"] == "uv" and there.data.tags["umm.backbone"] == cls.key
    assert official(there.data.metrics) == official(here.data.metrics)
    assert there.data.metrics["shapes/failed_samples"] == 0
    local_outputs, isolated_outputs = _outputs(umm_home() / "cache-local"), _outputs(umm_home() / "cache")
    assert isolated_outputs == local_outputs and len(local_outputs) >= 2

    # The registered version carries its environment and its code (the checkout at the pinned commit).
    model = Path(mlflow.artifacts.download_artifacts(f"models:/{name}-uv/1"))
    requirements = (model / "requirements.txt").read_text().split()
    assert all(pin in requirements for pin in cls.pip_requirements)
    conf = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["umm"]
    if checkout is not None:
        assert conf["upstream"]["commit"] == cls.upstream.commit
        assert (model / "code" / "upstream" / ".upstream-commit").read_text().strip() == cls.upstream.commit
    else:
        assert conf["upstream"] is None

    # A fresh server of the registered version reuses the environment and answers what a user of
    # `mlflow models serve` sends; an editing model edits there.
    served = resolve_model(f"models:/{name}-uv/1", env_manager="uv").backbone.loaded()
    try:
        assert not served.server.built and Path(served.server.environment).is_dir()
        task = sorted(cls.capabilities)[0]
        row = {"task": task, "prompt": "a red circle",
               "images": [encode_png(Image.new("RGB", (64, 64), "red"))] if task == "understanding" else []}
        plain = requests.post(f"{served.server.url}/invocations", timeout=300,
                              json={"dataframe_records": [row], "params": {"seed": 3, **PARAMS}})
        assert plain.status_code == 200, plain.text[-2000:]
        answer = plain.json()["predictions"][0]
        assert answer["text"] if task == "understanding" else answer["images"]
        if "editing" in cls.capabilities:
            (edited,) = served.run([InferenceRequest(task="editing", prompt="make it blue",
                                                     images=[Image.new("RGB", (64, 64), "red")],
                                                     params=InferenceParams(seed=4, **PARAMS))])
            assert edited.images and edited.params.seed == 4
    finally:
        served.close()
    log.warning("%s: eval local + uv %.0f s (environment %s in %.0f s: %s); whole case %.0f s", name, eval_s,
                "reused" if "already exists" in isolated.stderr else "built", served.server.environment_s or 0,
                served.server.environment, time.perf_counter() - started)
