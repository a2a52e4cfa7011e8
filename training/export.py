"""Trained weights → the backbone's flavor → a new registered version of the base model's name.

1. `gather_state`: the full state dict of the trained model on rank 0. Under ZeRO-3 every rank
   holds a shard of each parameter; all ranks gather them together (DeepSpeed's
   `GatheredParameters`), rank 0 keeps a CPU copy. With an EMA, its averages (sharded the same
   way, `training.ema`) replace the trained parameters.
2. `rebuild`: a fresh load of the base model with that state put back by the method (`sft`,
   `reca`: the weights; `lora`: the adapters, merged or kept).
3. `register`: `model_flavors.flavor.log_model` in the training run, registered under the base
   model's name (once per distinct weights), with lineage tags and the `challenger` alias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import mlflow
import torch
from mlflow import MlflowClient
from torch import nn

from model_flavors import flavor
from training.ema import Ema
from training.irg import STAGE_TAG
from training.recipe import TrainRecipe
from umm_harness.core.training import Trainable
from umm_harness.model_registry import DIGEST_TAG, describe_version, find_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseVersion:
    """The registered version post-training starts from."""

    name: str
    version: str
    identity: str = ""  # its weights digest tag (or its source): tells two registries' "version 1" apart

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def gather_state(model: nn.Module, zero_stage: int, is_main: bool, ema: Ema | None = None,
                 ) -> dict[str, torch.Tensor] | None:
    """`model.state_dict()` with full tensors, on rank 0 (None elsewhere), with `ema`'s averages in
    place of the trained parameters if given. Call on every rank."""

    def copy() -> dict[str, torch.Tensor]:
        return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}

    averages = ema.whole(model, keep=is_main) if ema is not None else None
    if zero_stage < 3:
        state = copy() if is_main else None
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            state = copy() if is_main else None
    return ema.applied(state, averages) if ema is not None and state is not None else state


def rebuild(method: ModuleType, state: dict[str, torch.Tensor], base_dir: Path, recipe: TrainRecipe,
            base: BaseVersion) -> Trainable:
    """A fresh copy of the base model carrying the trained weights, ready for `flavor.log_model`."""
    fresh = flavor.load_local(base_dir)
    exported = method.rebuild(fresh, state, recipe)
    exported.info = exported.info.model_copy(update={"source": base.uri, "revision": None})
    exported.model.eval()
    return exported


def method_tags(recipe: TrainRecipe) -> dict[str, str]:
    """Tags a method adds to its run and its versions: IRG's stage (what a stage-2 recipe checks)."""
    return {STAGE_TAG: str(recipe.irg.stage)} if recipe.method == "irg" else {}


def register(backbone: Trainable, *, base: BaseVersion, recipe: TrainRecipe, run_id: str, dataset_digest: str,
             step: int, final: bool) -> tuple[str, str]:
    """Log `backbone` in the active run and register it as a new version; returns (version, weights digest).

    Weights already registered under the name (an identical training, e.g. two at once) keep their
    version: the digest tag is written with the version, and the higher of two equal versions is
    dropped, as `umm_harness.model_registry.ensure_registered` does for evaluated models."""
    info = flavor.log_model(backbone, name="model" if final else f"model-step{step}", copy_weights=True)
    digest = info.flavors[flavor.FLAVOR_NAME]["weights_digest"]
    tags = {
        DIGEST_TAG: digest,
        "umm.parent_version": base.version,
        "umm.method": recipe.method,
        "umm.train_run_id": run_id,
        "umm.dataset_digest": dataset_digest,
        "umm.backbone": backbone.key,
        "umm.base_model": base.uri,
        "umm.train_step": str(step),
        "umm.train_final": str(final).lower(),
        **method_tags(recipe),
    }
    client = MlflowClient()
    version = str(mlflow.register_model(info.model_uri, base.name, tags=tags).version)
    first = find_version(base.name, digest)
    if first is not None and str(first.version) != version:
        log.info("%s version %s has the same weights (run %s): keeping it", base.name, first.version,
                 first.tags.get("umm.train_run_id"))
        client.delete_model_version(base.name, version)
        version = str(first.version)
    describe_version(base.name, version)
    if final and recipe.alias:
        client.set_registered_model_alias(base.name, recipe.alias, version)
    return version, digest
