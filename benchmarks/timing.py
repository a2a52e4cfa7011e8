"""What the benchmark scripts share: device options, timers, and how figures are reported.

Figures are printed last as `name value` lines (for scripts) and logged as one run of the MLflow
experiment `umm-benchmarks`, so runs can be compared over time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import torch


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` / `--dtype`: the GPU in bf16 when there is one, so the GPU paths are what is measured."""
    gpu = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if gpu else "cpu", help="default: cuda when present")
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32", help="default: bfloat16 on cuda")


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Adds the seconds spent inside the block to `store[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start


def seconds(function: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def report(run_name: str, figures: dict[str, float], tags: dict[str, str], header: str) -> None:
    """Log the figures as one `umm-benchmarks` run (to the current tracking store), then print
    `header` and one `name value` line per figure."""
    mlflow.set_experiment("umm-benchmarks")
    with mlflow.start_run(run_name=run_name):
        mlflow.set_tags({**tags, "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg())})
        mlflow.log_metrics(figures)
    print(header)
    print(f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())} (1, 5, 15 min; a shared machine)")
    for name, value in figures.items():
        print(f"{name} {value:.4g}")
