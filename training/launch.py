"""Running a training as N ranks: relaunch under torchrun (default) or DeepSpeed's launcher.

`launch_workers` writes the recipe to a file, starts `python -m training.launch` N times
through the launcher (gloo on CPU, nccl on GPU), waits, and reads back rank 0's result.
Each worker calls `training.run.train` with `UMM_TRAIN_WORKER=1` set, so it trains instead of
relaunching; only rank 0 talks to MLflow. The workers' output goes to this process's
stdout/stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from umm_harness.core.ports import free_port
from training.recipe import TrainRecipe


def _command(recipe: TrainRecipe, port: int, args: list[str]) -> list[str]:
    if recipe.launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(recipe.nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(port), "--no_local_rank",
                "--module", "training.launch", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(recipe.nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "training.launch", *args]


def launch_workers(recipe: TrainRecipe, *, stop_after_step: int | None = None, timeout: float | None = None):
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
        completed = subprocess.run(_command(recipe, free_port(), args), env=env, timeout=timeout)
        if completed.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"training with {recipe.nproc} processes ({recipe.launcher}) failed "
                               f"(exit code {completed.returncode}); the workers' output is above")
        return TrainResult.from_json(json.loads(result_file.read_text()))


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
