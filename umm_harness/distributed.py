"""Data-parallel evaluation ranks, as torchrun (or `umm eval --nproc N`) starts them.

Every rank generates its share of the pending outputs into the shared cache; rank 0 then
scores everything and is the only one that talks to MLflow.
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


def relaunch(nproc: int, args: list[str]) -> int:
    """Run `python -m umm_harness <args>` as `nproc` torchrun ranks on this machine; their exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "umm_harness", *args]
    return subprocess.call(command)
