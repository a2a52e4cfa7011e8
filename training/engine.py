"""The shared DeepSpeed layer: process group, engine, LR schedule, the step loop, checkpoints.

- One process by default. DeepSpeed needs a process group even then; `process_env` gives a
  single process RANK=0 / WORLD_SIZE=1 / a free MASTER_PORT while it trains, and
  `setup_distributed` starts the group (gloo on CPU, nccl on GPU) once and keeps it for later
  trainings in the same process (DeepSpeed caches its groups, so they cannot be torn down).
- ZeRO stage 0-3 from the recipe; fp32 on CPU, bf16 on GPU (`precision: auto`); the optimizer is
  torch's AdamW (no compiled DeepSpeed ops needed); LR: linear warmup then cosine decay to
  `lr × min_lr_ratio`, stepped by DeepSpeed at every optimizer step.
- `steps()` is the loop: per optimizer step, `grad_accum` micro-batches per rank, drawn by
  `training.data.StepOrder`. Every step reseeds torch from (seed, step, rank), so random choices
  (dropout, unconditional prompts) depend on the step alone: with the data order and DeepSpeed's
  checkpoint (weights, optimizer moments, LR scheduler), a resumed run repeats the loss curve of an
  uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from umm_harness.core.ports import free_port
from umm_harness.core.training import Encoded
from training.data import StepOrder
from training.recipe import TrainRecipe

log = logging.getLogger(__name__)

_TAG_PREFIX = "step"


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class StepRecord:
    step: int  # optimizer steps completed (1-based)
    loss: float  # weighted total, averaged over micro-batches and ranks
    parts: dict[str, float]  # per-objective losses
    lr: float  # the learning rate this step used
    seconds: float
    samples_per_s: float
    rss_mb: float
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        values = {"train/loss": self.loss, "train/lr": self.lr, "train/samples_per_s": self.samples_per_s,
                  "train/step_seconds": self.seconds, "train/rss_mb": self.rss_mb}
        values.update({f"train/loss_{name}": value for name, value in self.parts.items()})
        values.update(self.extra)
        return values


def resolve_device(recipe: TrainRecipe) -> str:
    if recipe.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if recipe.device == "cuda" and not torch.cuda.is_available():
        from umm_harness.core.errors import ConfigError

        raise ConfigError("device 'cuda' was asked for, but torch sees no GPU")
    return recipe.device


def use_bf16(recipe: TrainRecipe, device: str) -> bool:
    return recipe.precision == "bf16" or (recipe.precision == "auto" and device == "cuda")


_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextmanager
def process_env() -> Iterator[None]:
    """For one process not started by a launcher: RANK=0, WORLD_SIZE=1, ... while a training runs.

    DeepSpeed reads them when it starts the process group and the engine; they are put back
    afterwards so that nothing else in this process mistakes it for a launched rank.
    """
    if "WORLD_SIZE" in os.environ:  # started by torchrun / the deepspeed launcher
        yield
        return
    saved = {key: os.environ.get(key) for key in _DIST_ENV}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR=saved["MASTER_ADDR"] or "127.0.0.1",
                      MASTER_PORT=saved["MASTER_PORT"] or str(free_port()))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# The C++ ops DeepSpeed loads when it starts a process group (on CPU: its shared-memory
# collectives). A pip-installed DeepSpeed compiles them on first use, for minutes, in silence.
_OPS_AT_INIT = ("ShareMemCommBuilder",)


def ops_to_compile() -> list[str]:
    """The names of the ops `setup_distributed` will compile (neither prebuilt nor in torch's
    extension cache)."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops import __compatible_ops__
    from torch.utils.cpp_extension import _get_build_directory

    names = []
    for builder_name in _OPS_AT_INIT:
        builder = get_accelerator().create_op_builder(builder_name)
        if builder is None or not __compatible_ops__.get(builder.NAME) or installed_ops.get(builder.NAME):
            continue
        if not (Path(_get_build_directory(builder.name, verbose=False)) / f"{builder.name}.so").is_file():
            names.append(builder.name)
    return names


def setup_distributed(device: str) -> DistInfo:
    """Join (or, for one process, create) the process group DeepSpeed runs in (inside `process_env`)."""
    import deepspeed
    import deepspeed.comm as dist

    if not dist.is_initialized():
        for name in ops_to_compile():
            log.info("compiling DeepSpeed's %s op: first use on this machine only, it may take a few minutes", name)
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def lr_factor(step: int, recipe: TrainRecipe) -> float:
    """Multiplier of `recipe.lr` at optimizer step `step` (0-based): warmup, then cosine."""
    if step < recipe.warmup_steps:
        return (step + 1) / (recipe.warmup_steps + 1)
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def deepspeed_config(recipe: TrainRecipe, device: str) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": recipe.zero_stage, **recipe.zero_options}
    config: dict[str, Any] = {
        "train_batch_size": recipe.batch_size,
        "train_micro_batch_size_per_gpu": recipe.micro_batch_size,
        "gradient_accumulation_steps": recipe.grad_accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW: nothing to compile
        "bf16": {"enabled": use_bf16(recipe, device)},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if recipe.max_grad_norm > 0:
        config["gradient_clipping"] = recipe.max_grad_norm
    return config


def initialize(module: torch.nn.Module, recipe: TrainRecipe, device: str):
    """A DeepSpeed engine around `module`, training its parameters that require grad."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=recipe.weight_decay)

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, recipe))

    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=schedule,
                                      model_parameters=params, config=deepspeed_config(recipe, device))
    return engine


# -- the loop --------------------------------------------------------------------------------


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 9_176 + rank * 7_919) % (2**63 - 1)


def _mean_over_ranks(values: list[float], world_size: int) -> list[float]:
    if world_size == 1:
        return values
    import deepspeed.comm as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()


def steps(engine, sets: dict[str, Encoded], recipe: TrainRecipe, dist_info: DistInfo,
          start_step: int) -> Iterator[StepRecord]:
    """Run optimizer steps `start_step` … `recipe.steps - 1`, yielding one record after each."""
    orders = {name: StepOrder(len(s), recipe.batch_size, recipe.micro_batch_size, dist_info.world_size,
                              recipe.seed, name) for name, s in sets.items()}
    names = list(sets)
    device = engine.device
    process = psutil.Process()
    engine.train()
    for step in range(start_step, recipe.steps):
        torch.manual_seed(_step_seed(recipe.seed, step, dist_info.rank))
        lr = engine.get_lr()[0]
        start = time.perf_counter()
        sums = [0.0] * (1 + len(names))
        for micro in range(recipe.grad_accum):
            batches = {}
            for name in names:
                batch = sets[name].collate(orders[name].indices(step, micro, dist_info.rank))
                # tensors move here; interleaved plans are moved part by part by the backbone's loss
                batches[name] = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                                 for key, value in batch.items()}
            loss, parts = engine(batches)
            engine.backward(loss)
            engine.step()
            sums[0] += loss.item()
            for i, name in enumerate(names):
                sums[1 + i] += parts[name].item()
        means = _mean_over_ranks([value / recipe.grad_accum for value in sums], dist_info.world_size)
        seconds = time.perf_counter() - start
        extra = {}
        if device.type == "cuda":
            extra["train/gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        yield StepRecord(
            step=step + 1, loss=means[0], parts=dict(zip(names, means[1:])), lr=lr, seconds=seconds,
            samples_per_s=recipe.batch_size * len(names) / seconds, rss_mb=process.memory_info().rss / 2**20,
            extra=extra,
        )


# -- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(engine, output_dir: Path, step: int, client_state: dict[str, Any], keep: int,
                    dist_info: DistInfo, rank_state: dict[str, Any] | None = None) -> Path:
    """DeepSpeed checkpoint `step<N>` (all ranks), keeping the newest `keep` of them. `client_state`
    is rank 0's (DeepSpeed hands every rank rank 0's back); `rank_state` is each rank's own (a ZeRO-3
    rank's shards of an EMA), written first, so a checkpoint that `latest` names has it."""
    import deepspeed.comm as dist

    tag = f"{_TAG_PREFIX}{step:07d}"
    if rank_state is not None:
        (output_dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save(rank_state, _rank_state_file(output_dir / tag, dist_info.rank))
    engine.save_checkpoint(str(output_dir), tag=tag, client_state={**client_state, "step": step})
    dist.barrier()
    if dist_info.is_main:
        tags = sorted(p for p in output_dir.glob(f"{_TAG_PREFIX}*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return output_dir / tag


def load_latest(engine, output_dir: Path, dist_info: DistInfo) -> dict[str, Any] | None:
    """Restore weights, optimizer and LR schedule from `output_dir`'s latest checkpoint, if any; returns
    its client state with this rank's own state (`save_checkpoint`'s `rank_state`) merged in."""
    if not (output_dir / "latest").is_file():
        return None
    path, client_state = engine.load_checkpoint(str(output_dir))
    if path is None:
        return None
    own = _rank_state_file(Path(path).parent, dist_info.rank)
    return {**(client_state or {}), **(torch.load(own, weights_only=True) if own.is_file() else {})}


def _rank_state_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"rank{rank:05d}_state.pt"
