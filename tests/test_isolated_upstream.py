"""Upstream backbones in their own MLflow-built environments, end to end through the real CLI.

For each model — a tiny random-weight instance of its real classes (BAGEL, OmniGen2, MMaDA and
Show-o on their authors' code from ../shared/upstream; BLIP3o-NEXT on its native parts) — an
evaluation on `shapes` in this process (`--env-manager local`) logs the model with its environment
and the upstream checkout at the pinned commit, and registers it. Then `umm eval --env-manager uv`
of that registered version, in a fresh process, runs it behind `mlflow models serve` in the
environment uv builds from the model's own requirements, and gives the same metrics and the same
outputs (texts, seeds, image bytes). An editing model also edits there.

Environments are MLflow's, under its own cache: the first run on a machine builds each one (MMaDA
and Show-o share theirs: their requirements are the same); later runs find them by their hash.
Each case prints its times (`pytest -s` shows them)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
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
from umm_harness.config import EvalRecipe
from umm_harness.core.requests import InferenceParams, InferenceRequest
from umm_harness.evaluate import evaluate
from umm_harness.model_ref import resolve_model
from umm_harness.tracking import official

pytestmark = pytest.mark.slow
UPSTREAM = REPO.parent / "shared" / "upstream"
# name: (adapter class, tiny builder, checkout folder or None for a native-parts model)
CASES = {
    "bagel": (Bagel, bagel_tiny.build_tiny, "bagel"),
    "omnigen2": (OmniGen2, omnigen2_tiny.build_tiny, "omnigen2"),
    "mmada": (Mmada, mmada.build_tiny, "mmada"),
    "show-o": (ShowO, show_o.build_tiny, "show-o"),
    "blip3o-next": (Blip3oNext, blip3o_next.build_tiny, None),
}
PARAMS = InferenceParams(steps=2, max_new_tokens=4)  # few diffusion steps, short answers
# Two understanding and two generation samples (a model answers those of its capabilities).
SETTINGS = {"suite": "shapes", "seed": 1, "batch_size": 4, "threads": 1,
            "task_options": {"shapes": {"num_understanding": 2, "num_generation": 2}}}


def _eval_run(name: str, exclude: str) -> mlflow.entities.Run:
    """The parent run of the one evaluation of `name` version 1 that is not `exclude`."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`umm.model_uri` = 'models:/{name}/1'")
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags and run.info.run_id != exclude]
    return parent


def _environment_line(stderr: str) -> str:
    """What the isolated run said about its environment (built or reused, and how long it took)."""
    lines = [line for line in stderr.splitlines() if "answers at" in line or "environment" in line.lower()]
    return lines[-1].strip() if lines else "(the run said nothing about its environment)"


def _forget_bagel_modules() -> None:
    """BAGEL's adapter imports its checkout's top-level packages (`modeling`, `data`, ...) in this
    process; other tests' stand-ins use the same names."""
    for module in [n for n in sys.modules if n.split(".")[0] in ("inferencer", "data", "modeling")]:
        del sys.modules[module]
    for path in [p for p in sys.path if p.startswith(str(UPSTREAM))]:
        sys.path.remove(path)


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
    try:
        local = evaluate(EvalRecipe(**SETTINGS, model=str(folder), params=PARAMS, env_manager="local",
                                    register_as=f"{name}-tiny",
                                    backbone_options={"repo_path": str(checkout)} if checkout else {}))
    finally:
        _forget_bagel_modules()
    local_s = time.perf_counter() - started

    # The registered version carries its environment and its code (the checkout at the pinned commit).
    model = Path(mlflow.artifacts.download_artifacts(f"models:/{name}-tiny/1"))
    requirements = (model / "requirements.txt").read_text().split()
    assert all(pin in requirements for pin in cls.pip_requirements)
    conf = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["umm"]
    if checkout is not None:
        assert conf["upstream"]["commit"] == cls.upstream.commit
        assert (model / "code" / "upstream" / ".upstream-commit").read_text().strip() == cls.upstream.commit
    else:
        assert conf["upstream"] is None

    # The same evaluation of the registered version, in a fresh process, the model in its own environment.
    (umm_home() / "cache").rename(umm_home() / "cache-local")  # so every output is computed again
    recipe = tmp_path / "uv.yaml"
    recipe.write_text(yaml.safe_dump({**SETTINGS, "model": f"models:/{name}-tiny/1", "env_manager": "uv",
                                      "params": PARAMS.model_dump(exclude_none=True)}))
    isolated = umm("eval", "--recipe", str(recipe), cwd=workspace, timeout=1200)
    assert isolated.returncode == 0, isolated.stderr[-3000:]
    uv_s = time.perf_counter() - started - local_s
    there = _eval_run(f"{name}-tiny", exclude=local.run_id)
    assert there.data.tags["umm.env_manager"] == "uv" and there.data.tags["umm.backbone"] == cls.key
    assert official(there.data.metrics) == official(local.metrics)
    assert there.data.metrics["shapes/failed_samples"] == 0
    local_outputs, isolated_outputs = _outputs(umm_home() / "cache-local"), _outputs(umm_home() / "cache")
    assert isolated_outputs == local_outputs
    assert any(images for _, _, images in local_outputs.values()) == ("generation" in cls.capabilities)
    assert any(text is not None for text, _, _ in local_outputs.values()) == ("understanding" in cls.capabilities)

    if "editing" in cls.capabilities:  # a fresh server of the version finds its environment by its hash
        served = resolve_model(f"models:/{name}-tiny/1", env_manager="uv").backbone.loaded()
        try:
            assert not served.server.built and Path(served.server.environment).is_dir()
            (edited,) = served.run([InferenceRequest(task="editing", prompt="make it blue",
                                                     images=[Image.new("RGB", (64, 48), "red")],
                                                     params=PARAMS.model_copy(update={"seed": 4}))])
            assert edited.images and edited.params.seed == 4
        finally:
            served.close()
    print(f"\n{name}: local eval {local_s:.0f} s, uv eval (CLI) {uv_s:.0f} s, whole case "
          f"{time.perf_counter() - started:.0f} s; {_environment_line(isolated.stderr)}")
