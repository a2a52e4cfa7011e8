"""Data-parallel evaluation ranks, as torchrun (or `umm eval --nproc N`) starts them.

Every rank generates its share of the pending outputs into the shared cache; rank 0 then
scores everything and is the only one that talks to MLflow. Several nodes: each runs the same
`umm eval --nnodes N --rdzv-endpoint host:port` (one launcher per node, `--nproc` ranks each);
torchrun's c10d rendezvous numbers the ranks, every rank takes its share of the one fixed work
order, and the caches must be on a folder every node sees (`--cache-dir`). Rank 0 (on whichever
node the rendezvous put it) must reach the tracking store: use a tracking server across machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from umm_harness.core.ports import free_port


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, value: int) -> int:
        """`value` summed over all ranks (a synchronisation point)."""
        if self.world_size == 1:
            return value
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        total = torch.tensor([value], dtype=torch.long, device=device)
        dist.all_reduce(total)
        return int(total.item())


def current_ranks(device: str = "cpu") -> Ranks:
    """This process's rank; joins the process group (gloo on CPU, NCCL on GPUs) when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks(rank, world_size)


@dataclass(frozen=True)
class Launch:
    """How many ranks to start: `nproc` on this node, `nnodes` nodes meeting at `rdzv_endpoint`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


def relaunch(launch: Launch, args: list[str]) -> int:
    """Run `python -m umm_harness <args>` as torchrun ranks; this node's launcher's exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.nproc)]
    if launch.nnodes > 1:
        command += ["--nnodes", str(launch.nnodes), "--node_rank", str(launch.node_rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", str(launch.rdzv_endpoint),
                    "--rdzv_id", "umm-eval"]
    else:
        command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return subprocess.call([*command, "-m", "umm_harness", *args])
