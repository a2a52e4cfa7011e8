"""The adapter contract every backbone implements.

One subclass per backbone family (in `model_flavors/`). It owns everything between an
`InferenceRequest` and the model: prompt templates, pre/post-processing, batching, seeding.
Exceptions raised inside a backbone propagate: a caller that wants a fallback decides that,
so a failure is never hidden behind a plausible-looking answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from umm_harness.core.acceleration import ATTN_IMPLEMENTATIONS
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind


def require_safetensors(source: str, allow_pickle: bool = False) -> None:
    """Refuse a local checkpoint whose weights are pickles only: unpickling runs arbitrary code.
    (Hub checkpoints are loaded with `use_safetensors=True`, which refuses them the same way.)"""
    folder = Path(source)
    if allow_pickle or not folder.is_dir() or any(folder.rglob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.rglob("*.bin")) + sorted(p.name for p in folder.rglob("*.pt"))
    if pickles:
        raise ConfigError(f"{source}: only pickle weights ({', '.join(pickles[:3])}); umm loads safetensors only: "
                          "convert them, or set backbone_options: {allow_pickle: true}")


class UnsupportedTask(Exception):
    """The backbone cannot do this task; raised before any work starts."""

    def __init__(self, backbone: str, task: str, capabilities: frozenset[str]):
        super().__init__(f"backbone '{backbone}' cannot do '{task}' (it supports: {', '.join(sorted(capabilities))})")
        self.backbone, self.task = backbone, task


EnvManager = Literal["local", "uv", "virtualenv"]


class Upstream(BaseModel):
    """The authors' repository an upstream backbone runs on, at the commit its adapter was written
    against. A logged model bundles the checkout (`repo_path`) as code, so it is self-contained."""

    model_config = ConfigDict(frozen=True)

    repo: str  # e.g. https://github.com/ByteDance-Seed/Bagel
    commit: str  # 12+ hex digits; a checkout at another commit is refused when the model is logged


class ModelInfo(BaseModel):
    """What the flavor records about where the weights came from."""

    backbone: str
    source: str  # hub id or local folder the weights were loaded from
    revision: str | None = None
    dtype: str = "float32"


class TaskBatches(ABC):
    """What the runner calls on any backbone, loaded here or served from its own environment: `run`
    of a batch of one task kind, checked against `capabilities` before any work starts."""

    key: str
    capabilities: frozenset[TaskKind]

    def check_supports(self, task: str) -> None:
        if task not in self.capabilities:
            raise UnsupportedTask(self.key, task, self.capabilities)

    def run(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        tasks = {r.task for r in requests}
        if len(tasks) != 1:
            raise ValueError(f"a batch must hold one task kind, got {sorted(tasks)}")
        task = tasks.pop()
        self.check_supports(task)
        return self.run_task(task, requests)

    @abstractmethod
    def run_task(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        """Answer a batch of `task` requests (the task is supported)."""


class Backbone(TaskBatches):
    key: ClassVar[str]
    capabilities: ClassVar[frozenset[TaskKind]]
    # What `umm models list` prints: how the model runs and what it needs installed.
    route: ClassVar[str] = "transformers"  # transformers | diffusers | upstream | engine
    requires: ClassVar[tuple[str, ...]] = ("transformers>=5.0",)
    hub_ids: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[str] = ""
    # The environment a logged model records (see `model_flavors.environment`): pip requirement
    # strings beside the flavor's base (mlflow, torch, transformers, ...); a pin here replaces the
    # base's pin of the same package. `upstream`: the repository an upstream route runs on.
    # `env_manager`: where `umm eval|infer` run the model by default ("local": in the harness process).
    pip_requirements: ClassVar[tuple[str, ...]] = ()
    upstream: ClassVar[Upstream | None] = None
    env_manager: ClassVar[EnvManager] = "local"
    # True when `load()` takes `attn_implementation` and `compile` (umm_harness.core.acceleration).
    tunable_attention: ClassVar[bool] = False
    # True when an instance can do less than its class says (what it can do is known once loaded).
    per_instance_capabilities: ClassVar[bool] = False

    info: ModelInfo
    attn_implementation: str | None = None  # the kernel this instance runs (None: not ours to choose)
    compiled: bool = False  # language model forward under torch.compile
    repo_path: Path | None = None  # the upstream checkout this instance runs on (upstream routes)

    @classmethod
    def describe(cls) -> dict[str, object]:
        return {"key": cls.key, "capabilities": sorted(cls.capabilities), "route": cls.route,
                "requires": list(cls.requires), "hub_ids": list(cls.hub_ids), "notes": cls.notes,
                "env_manager": cls.env_manager,
                "attn_implementations": list(ATTN_IMPLEMENTATIONS) if cls.tunable_attention else []}

    @classmethod
    def acceleration_options(cls, attn_implementation: str = "auto", compile: bool = False) -> dict[str, object]:
        """The `load()` keywords for these choices; asking a backbone for one it cannot make is an error,
        so a recipe never silently runs without the kernel it names."""
        if cls.tunable_attention:
            return {"attn_implementation": attn_implementation, "compile": compile}
        if attn_implementation != "auto" or compile:
            raise ConfigError(f"backbone '{cls.key}' ({cls.route}) has no attn_implementation or compile choice; "
                              "leave them at auto / off")
        return {}

    @classmethod
    @abstractmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu") -> Backbone:
        """Load from a hub id or a local folder (the real path users take)."""

    @abstractmethod
    def save_pretrained(self, path: Path) -> None:
        """Write weights and processors so that `load(str(path))` gives the same model."""

    def default_params(self, task: TaskKind) -> InferenceParams:
        """The model card's defaults for `task`; requests override them field by field."""
        return InferenceParams()

    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        raise UnsupportedTask(self.key, "understanding", self.capabilities)

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        raise UnsupportedTask(self.key, "generation", self.capabilities)

    def edit(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        raise UnsupportedTask(self.key, "editing", self.capabilities)

    def run_task(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        method = {"understanding": self.understand, "generation": self.generate, "editing": self.edit}[task]
        return method(requests)


class LazyBackbone:
    """An adapter whose weights load on first use. Its key, capabilities and attention kernel are
    known from its class and the recipe, so rerunning an evaluation whose outputs are all cached
    loads nothing (for a 7B model, minutes and tens of GB). Anything else loads the weights once."""

    def __init__(self, cls: type[Backbone], load: Callable[[], Backbone], attn_implementation: str | None,
                 compiled: bool):
        self.key, self.capabilities = cls.key, cls.capabilities
        self.attn_implementation, self.compiled = attn_implementation, compiled
        self._load = load
        self._loaded: Backbone | None = None

    def loaded(self) -> Backbone:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def close(self) -> None:
        """Release what loading started, where the adapter has something to release (a served
        model's server process); an adapter never loaded has nothing to release."""
        if self._loaded is not None and hasattr(self._loaded, "close"):
            self._loaded.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loaded(), name)
