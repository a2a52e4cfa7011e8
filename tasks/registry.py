"""Benchmark names → task classes, and suites (named lists of benchmarks)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from tasks.base import Task
from umm_harness.core.errors import ConfigError

TASKS: dict[str, str] = {
    "shapes": "tasks.shapes:ShapesTask",
    "mme": "tasks.mme:MMETask",
    "mmmu": "tasks.mmmu:MMMUTask",
    "mmbench": "tasks.mmbench:MMBenchTask",
    "mm_vet": "tasks.mm_vet:MMVetTask",
    "mathvista": "tasks.mathvista:MathVistaTask",
    "mmstar": "tasks.mmstar:MMStarTask",
    "geneval": "tasks.geneval:GenEvalTask",
    "dpg_bench": "tasks.dpg_bench:DPGBenchTask",
    "wise": "tasks.wise:WISETask",
    "ueval": "tasks.ueval:UEvalTask",
    "uni_mmmu": "tasks.uni_mmmu:UniMMMUTask",
    "gedit": "tasks.gedit:GEditTask",
    "imgedit": "tasks.imgedit:ImgEditTask",
}

SUITES: dict[str, list[str]] = {
    "shapes": ["shapes"],
    "understanding": ["mme", "mmmu", "mmbench", "mm_vet", "mathvista", "mmstar"],
    "generation": ["geneval", "dpg_bench", "wise"],
    "unified": ["ueval", "uni_mmmu"],
    "editing": ["gedit", "imgedit"],
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"unknown benchmark '{name}'; known benchmarks: {', '.join(sorted(TASKS))}")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def suite_benchmarks(suite: str) -> list[str]:
    """A suite's benchmarks; a single benchmark name is a suite of one, `a,b` a suite of two."""
    if suite in SUITES:
        return SUITES[suite]
    names = [part.strip() for part in suite.split(",") if part.strip()]
    unknown = [name for name in names if name not in TASKS]
    if not names or unknown:
        raise ConfigError(
            f"unknown suite '{suite}'; suites: {', '.join(sorted(SUITES))}; benchmarks: {', '.join(sorted(TASKS))}"
        )
    return names


def check_task_options(name: str, options: dict[str, Any] | None) -> type[Task]:
    """The task class, after checking `options` name constructor arguments it has."""
    cls = task_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options or {}) - set(accepted) - {"self"})
    if unknown:
        known = sorted(k for k in accepted if k not in ("self", "data_dir", "judge"))
        raise ConfigError(f"task_options.{name}: unknown option '{unknown[0]}' (options: {', '.join(known) or 'none'})")
    return cls


def build_task(name: str, data_dir: Path | None = None, judge: Any = None,
               options: dict[str, Any] | None = None) -> Task:
    """A task from a recipe: its options are checked against the task's constructor by name,
    and the recipe's judge goes to every task that takes one."""
    cls = check_task_options(name, options)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = dict(options or {})
    if judge is not None and "judge" in accepted:
        kwargs.setdefault("judge", judge)
    return cls(data_dir=data_dir, **kwargs)
