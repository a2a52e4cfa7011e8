"""Loading saved `umm` models in a fresh interpreter where this repository is not importable, as a
user's `mlflow.pyfunc.load_model` on another machine would: the model must bring its own code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from tests.conftest import REPO

# Every route to this repository is removed first: the editable install's finder, the repo root
# and the current directory on sys.path.
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    repo, jobs = sys.argv[1], json.loads(sys.argv[2])
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                     and "editable" not in type(f).__name__.lower()]
    sys.path = [p for p in sys.path if p not in ("", ".", repo)]
    try:
        import model_flavors  # noqa: F401
        raise SystemExit("the repository is still importable")
    except ImportError:
        pass
    import torch
    torch.set_num_threads(1)
    import mlflow, pandas as pd
    answers = {}
    for name, (model_dir, rows_file, params) in jobs.items():
        out = mlflow.pyfunc.load_model(model_dir).predict(pd.read_json(rows_file, orient="records"), params=params)
        import model_flavors
        answers[name] = {"module": model_flavors.__file__, "rows": json.loads(out.to_json(orient="records"))}
    print(json.dumps(answers))
""")


def predict_in_fresh_process(models: dict[str, tuple[Path, list[dict[str, Any]], dict[str, Any]]], cwd: Path, *,
                             python: str = sys.executable, timeout_s: float = 600) -> dict[str, dict[str, Any]]:
    """{name: (model folder, rows, params)} → {name: {"module": where model_flavors came from,
    "rows": the predictions as records}}, all from one fresh `python` (another environment's, if given)."""
    jobs = {}
    for name, (model_dir, rows, params) in models.items():
        rows_file = Path(cwd) / f"{name}-rows.json"
        pd.DataFrame(rows).to_json(rows_file, orient="records")
        jobs[name] = (str(model_dir), str(rows_file), params)
    done = subprocess.run([python, "-c", FRESH_PROCESS, str(REPO), json.dumps(jobs)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_predictions(got: list[dict[str, Any]], want: list[dict[str, Any]], *, name: str = "",
                            pixel_tolerance: int = 0) -> None:
    """Same rows: texts and params equal, as many images, each within `pixel_tolerance` levels per
    pixel (a diffusion pipeline's float maths may round differently between processes)."""
    import numpy as np

    from umm_harness.core.requests import decode_image

    assert len(got) == len(want), name
    for row, expected in zip(got, want):
        assert row["text"] == expected["text"] and row["params"] == expected["params"], name
        assert len(row["images"] or []) == len(expected["images"] or []), name
        for image, expected_image in zip(row["images"] or [], expected["images"] or []):
            difference = np.abs(np.asarray(decode_image(image), int) - np.asarray(decode_image(expected_image), int))
            assert difference.max() <= pixel_tolerance, name


def environment_python(model_dir: Path, env_manager: str, cwd: Path) -> Path:
    """The interpreter of the environment MLflow builds (or finds) for a saved model:
    `mlflow models prepare-env`, the folder read off MLflow's own log line."""
    import os
    import re

    from umm_harness.isolation import pip_sources_for_uv

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **(pip_sources_for_uv() if env_manager == "uv" else {}), "MLFLOW_LOGGING_LEVEL": "INFO",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(bin_dir / "mlflow"), "models", "prepare-env", "-m", str(model_dir), "--env-manager",
                           env_manager], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"(?:Creating a new environment in|Environment) (\S+)", done.stderr + done.stdout)
    assert found, (done.stderr + done.stdout)[-3000:]
    return Path(found.group(1)) / "bin" / "python"


def task_rows(image: str, tasks: tuple[str, ...] = ("understanding", "generation", "editing")) -> list[dict[str, Any]]:
    """One pyfunc row per task, about a base64 `image` of a red scene."""
    rows = {"understanding": {"task": "understanding", "prompt": "Is there a red circle?", "images": [image]},
            "generation": {"task": "generation", "prompt": "a photo of a red circle", "images": []},
            "editing": {"task": "editing", "prompt": "make it blue", "images": [image]}}
    return [rows[task] for task in tasks]


def assert_reloads_the_same(backbones: dict[str, tuple[Any, list[dict[str, Any]]]], params: dict[str, Any], cwd: Path,
                            *, pixel_tolerance: int = 0) -> None:
    """Save each loaded backbone under `cwd/<name>`, then load them all in one fresh process: each
    answers its rows from the model's own code/ as it answers them here."""
    from model_flavors import flavor

    models, expected = {}, {}
    for name, (backbone, rows) in backbones.items():
        flavor.save_model(backbone, Path(cwd) / name)
        models[name] = (Path(cwd) / name, rows, params)
        expected[name] = json.loads(flavor.UmmPyfuncModel(backbone).predict(pd.DataFrame(rows), params=params)
                                    .to_json(orient="records"))
    for name, answer in predict_in_fresh_process(models, cwd).items():
        # Imported from a saved model's own code/ (the first one loaded), never from this repository.
        assert answer["module"].startswith(str(cwd)) and "/code/model_flavors/" in answer["module"], name
        assert_same_predictions(answer["rows"], expected[name], name=name, pixel_tolerance=pixel_tolerance)
