"""Backbones that run only on their authors' code, where that code does not run on this kind of
machine yet: Show-o2, TokenFlow, DeepGen and Ovis-U1.

Each adapter is the part of a backbone that does not depend on running the model: capabilities,
hub ids, the model card's / repository's inference defaults, the translation of a request into
the upstream entry point's arguments (with its checks), the checkout and pins it needs, and a
precise statement of what blocks it here and what a user with a GPU runs instead. `load()`
checks what it can (the checkout, the opt-ins), then refuses with that statement: nothing here
pretends to generate. The adapters are data (`blocked_upstream.yaml`); this module turns each entry
into an `UpstreamOnly` subclass. Facts and sources: ../shared/RESEARCH-WAVE2.md section A.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from model_flavors.upstream_checkout import UpstreamCheckout
from umm_harness.core.backbone import Backbone
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, TaskKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskCard:
    """One task's official defaults: the ones InferenceParams has a field for, the upstream
    argument each field becomes, and the settings it has no field for (sampler, negative prompt, ...)."""

    params: InferenceParams
    arguments: dict[str, str]  # InferenceParams field → upstream argument name
    fixed: dict[str, Any] = field(default_factory=dict)
    image_sizes: tuple[int, ...] = ()  # generation sizes the checkpoint supports; () = any
    max_images: int = 1  # input images per request (understanding / editing)


class UpstreamOnly(Backbone):
    """The shared behaviour; subclasses are data."""

    route: ClassVar[str] = "upstream"
    status: ClassVar[str] = "blocked here"
    cards: ClassVar[dict[TaskKind, TaskCard]]
    upstream: ClassVar[UpstreamCheckout]
    blocked_here: ClassVar[str]
    gpu_run: ClassVar[str]
    upstream_pins: ClassVar[tuple[str, ...]]  # the repository's own pins: an environment for it starts here

    @classmethod
    def translate(cls, request: InferenceRequest) -> dict[str, Any]:
        """The upstream entry point's keyword arguments for `request`, defaults filled in, checked."""
        if request.task not in cls.capabilities:
            raise ValueError(f"{cls.key} cannot do '{request.task}' (it supports: {', '.join(sorted(cls.capabilities))})")
        card = cls.cards[request.task]
        params = request.params.merged_over(card.params)
        if request.task == "generation" and card.image_sizes and params.image_size not in card.image_sizes:
            raise ValueError(f"{cls.key} generates {' or '.join(f'{s}px' for s in card.image_sizes)} images; "
                             f"got image_size={params.image_size}")
        if len(request.images) > card.max_images:
            raise ValueError(f"{cls.key} takes at most {card.max_images} input image(s) for {request.task}; "
                             f"got {len(request.images)}")
        arguments = {name: getattr(params, fieldname) for fieldname, name in card.arguments.items()
                     if getattr(params, fieldname) is not None}
        return {"prompt": request.prompt or "", "num_images": len(request.images), **card.fixed, **arguments}

    def default_params(self, task: TaskKind) -> InferenceParams:
        return self.cards[task].params

    @classmethod
    def blocked(cls) -> ConfigError:
        return ConfigError(f"{cls.key} does not run here: {cls.blocked_here} On a machine with a GPU: {cls.gpu_run}")

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None) -> UpstreamOnly:
        cls.upstream.resolve(repo_path)  # a missing or mismatched checkout is the first thing to fix
        raise cls.blocked()

    def save_pretrained(self, path: Path) -> None:  # never reached: load() refuses
        raise self.blocked()

    def _refuse(self, requests: Sequence[InferenceRequest]) -> list:
        for request in requests:
            self.translate(request)
        raise self.blocked()

    understand = generate = edit = _refuse


class _RemoteCode(UpstreamOnly):
    """A backbone whose code comes from the model hub: it runs only on an explicit opt-in."""

    route: ClassVar[str] = "hub remote code"

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None, trust_remote_code: bool = False) -> UpstreamOnly:
        """Remote code runs only on an explicit, per-model opt-in (`backbone_options: {trust_remote_code:
        true}`); runs made with it are tagged `umm.trust_remote_code=true`."""
        if not trust_remote_code:
            raise ConfigError(f"{cls.key} runs code downloaded from the model hub ({source}); that executes "
                              f"arbitrary code, so it needs an explicit opt-in: backbone_options: "
                              f"{{trust_remote_code: true}}")
        log.warning("%s: trust_remote_code is on: code from %s will run in this process", cls.key, source)
        raise cls.blocked()


TABLE = Path(__file__).with_name("blocked_upstream.yaml")


def _adapter(name: str, entry: dict[str, Any]) -> type[UpstreamOnly]:
    """One table entry as a class (the registry names classes); hub code gets the opt-in."""
    cards = {task: TaskCard(params=InferenceParams(**card["params"]), arguments=card["arguments"],
                            fixed=card.get("fixed", {}), image_sizes=tuple(card.get("image_sizes", ())),
                            max_images=card.get("max_images", 1))
             for task, card in entry["cards"].items()}
    attributes = {**entry, "capabilities": frozenset(entry["capabilities"]), "hub_ids": tuple(entry["hub_ids"]),
                  "requires": tuple(entry["requires"]), "upstream_pins": tuple(entry["upstream_pins"]),
                  "upstream": UpstreamCheckout(**entry["upstream"]), "cards": cards, "__module__": __name__}
    return type(name, (_RemoteCode if entry.get("route") == _RemoteCode.route else UpstreamOnly,), attributes)


_ADAPTERS = {name: _adapter(name, entry) for name, entry in yaml.safe_load(TABLE.read_text()).items()}
ShowO2, TokenFlow, DeepGen, OvisU1 = (_ADAPTERS[name] for name in ("ShowO2", "TokenFlow", "DeepGen", "OvisU1"))
BLOCKED: tuple[type[UpstreamOnly], ...] = tuple(_ADAPTERS.values())
