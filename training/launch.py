"""Running a training as N ranks: relaunch under torchrun (default) or DeepSpeed's launcher.

`launch_workers` writes the recipe to a file, starts `python -m training.launch` N times
through the launcher (gloo on CPU, nccl on GPU), waits, and reads back rank 0's result.
Each worker calls `training.run.train` with `UMM_TRAIN_WORKER=1` set, so it trains instead of
relaunching; only rank 0 talks to MLflow. The workers' output goes to this process's
stdout/stderr.

`launch_in_environment` runs the same workers in the base model's own environment (`--env-manager
uv|virtualenv`): MLflow builds the environment from the model's `python_env.yaml` with the
harness's own requirements for the packages the model does not pin (training's included; the
model's pins win), and the workers run there on the harness's code, copied beside the recipe.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from training.recipe import TrainRecipe
from umm_harness.core.ports import free_port

if TYPE_CHECKING:
    from mlflow.utils.environment import Environment


HARNESS_PACKAGES = ("umm_harness", "model_flavors", "tasks", "training")  # what a training imports


def _command(recipe: TrainRecipe, port: int, args: list[str], python: str = sys.executable) -> list[str]:
    if recipe.launcher == "deepspeed":
        return [python, "-m", "deepspeed.launcher.runner", "--num_gpus", str(recipe.nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(port), "--no_local_rank",
                "--module", "training.launch", *args]
    return [python, "-m", "torch.distributed.run", "--nproc_per_node", str(recipe.nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "training.launch", *args]


def launch_workers(recipe: TrainRecipe, *, stop_after_step: int | None = None, timeout: float | None = None,
                   environment: Environment | None = None):
    """Rank 0's result of `recipe.nproc` workers, started here or, with `environment`, inside it."""
    from training.run import WORKER_ENV, TrainResult

    with tempfile.TemporaryDirectory(prefix="umm-launch-") as tmp:
        recipe_file, result_file = Path(tmp) / "recipe.json", Path(tmp) / "result.json"
        recipe_file.write_text(recipe.model_dump_json())
        args = ["--recipe", str(recipe_file), "--result", str(result_file)]
        if stop_after_step is not None:
            args += ["--stop-after-step", str(stop_after_step)]
        threads = recipe.threads or max(1, (os.cpu_count() or 1) // recipe.nproc)
        env = {**os.environ, WORKER_ENV: "1", "OMP_NUM_THREADS": str(threads)}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # ours are not theirs
            env.pop(key, None)
        if environment is None:
            process = subprocess.Popen(_command(recipe, free_port(), args), env=env)
        else:  # the harness's code travels beside the recipe; the environment's python runs it
            for package in HARNESS_PACKAGES:
                source = Path(importlib.import_module(package).__file__).parent
                shutil.copytree(source, Path(tmp) / "code" / package, ignore=shutil.ignore_patterns("__pycache__"))
            env["PYTHONPATH"] = str(Path(tmp) / "code")
            # one rank needs no launcher: the worker itself (one process fewer to start there)
            argv = ["python", "-m", "training.launch", *args] if recipe.nproc == 1 else \
                _command(recipe, free_port(), args, python="python")
            # DeepSpeed JIT-builds C++ ops into torch's extensions folder, keyed by their build paths: one
            # folder per environment, or each environment's build would displace the other's, every run
            command = f'TORCH_EXTENSIONS_DIR="${{TORCH_EXTENSIONS_DIR:-$VIRTUAL_ENV/torch-extensions}}" {shlex.join(argv)}'
            process = environment.execute(command, command_env=env, synchronous=False)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        where = "" if environment is None else " in the model's own environment"
        if returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"training with {recipe.nproc} processes ({recipe.launcher}){where} failed "
                               f"(exit code {returncode}); the workers' output is above")
        return TrainResult.from_json(json.loads(result_file.read_text()))


def training_requirements(model_requirements: list[str]) -> list[str]:
    """The harness's requirements (its training extra included) for the packages the model's own
    requirements do not name: the model's pins win."""
    pinned = {canonicalize_name(Requirement(line).name) for line in model_requirements
              if line.strip() and not line.startswith(("-", "#"))}
    wanted = []
    for line in importlib.metadata.requires("umm-harness") or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": "train"}):
            continue
        if canonicalize_name(requirement.name) not in pinned:
            requirement.marker = None
            wanted.append(str(requirement))
    return wanted


def launch_in_environment(recipe: TrainRecipe, *, stop_after_step: int | None = None, timeout: float | None = None):
    """Train `recipe` in the base model's own environment, built by `recipe.env_manager` (see the
    module docstring)."""
    import mlflow

    from umm_harness import isolation

    with tempfile.TemporaryDirectory(prefix="umm-base-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(f"{recipe.model}/MLmodel", dst_path=tmp)).parent
        for name in ("requirements.txt", "python_env.yaml"):
            mlflow.artifacts.download_artifacts(f"{recipe.model}/{name}", dst_path=tmp)
        extra = training_requirements((model_dir / "requirements.txt").read_text().splitlines())
        environment = isolation.prepare_environment(model_dir, recipe.env_manager, purpose="train", extra_requirements=extra)
    return launch_workers(recipe, stop_after_step=stop_after_step, timeout=timeout, environment=environment)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one training rank (started by training.launch)")
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--stop-after-step", type=int, default=None)
    args, _ = parser.parse_known_args(argv)  # the deepspeed launcher may add --local_rank

    import torch

    from training.run import train

    recipe = TrainRecipe.model_validate_json(args.recipe.read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = train(recipe, stop_after_step=args.stop_after_step)
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
