"""Registered versions of evaluated models, found again by the digest of their weights.

Evaluating the same weights twice must not create a second version, so every version we
register carries `umm.weights_digest`, and registration first looks for a version with it.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from model_flavors import flavor
from umm_harness.model_ref import ResolvedModel
from umm_harness.search_filters import quoted

log = logging.getLogger(__name__)

DIGEST_TAG = "umm.weights_digest"


def find_version(name: str, digest: str) -> ModelVersion | None:
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = {quoted(name)}")
    except MlflowException:
        return None
    matches = [mv for mv in versions if mv.tags.get(DIGEST_TAG) == digest]
    return min(matches, key=lambda mv: int(mv.version)) if matches else None


def ensure_registered(model: ResolvedModel, extra_tags: dict[str, str] | None = None) -> str:
    """The registered version of `model`, logging and registering it (in the active run) if new."""
    if model.version is not None:
        return model.version
    existing = find_version(model.registered_name, model.digest)
    if existing is not None:
        log.info("reusing %s version %s (same weights)", model.registered_name, existing.version)
        model.version = str(existing.version)
        return model.version
    if model.env_manager == "local":
        model_uri = flavor.log_model(model.backbone, name="model", copy_weights=model.copy_weights).model_uri
    else:  # the MLflow model folder served in its own environment: logged as it is, code and environment included
        mlflow.log_artifacts(str(model.model_folder), "model")
        model_uri = f"runs:/{mlflow.active_run().info.run_id}/model"
    tags = {
        DIGEST_TAG: model.digest,
        "umm.backbone": model.backbone.key,
        # (a served model's reference names its weights too; asking it for its info would start it)
        "umm.base_model": model.backbone.info.source if not model.copy_weights and model.env_manager == "local"
        else model.reference,
        **(extra_tags or {}),
    }
    # The digest tag is created with the version, so a concurrent evaluation of the same weights
    # sees it; if one registered them first anyway, keep the lowest version and drop ours.
    version = str(mlflow.register_model(model_uri, model.registered_name, tags=tags).version)
    first = find_version(model.registered_name, model.digest)
    if first is not None and str(first.version) != version:
        MlflowClient().delete_model_version(model.registered_name, version)
        version = str(first.version)
    else:
        describe_version(model.registered_name, version)
    log.info("registered %s version %s", model.registered_name, version)
    model.version = version
    return version


def lineage(name: str, version: str) -> str:
    """One line on where a version comes from: its training method and parent, or its source."""
    mv = MlflowClient().get_model_version(name, version)
    tags = mv.tags
    if tags.get("umm.method"):
        run = f" (training run {tags['umm.train_run_id']})" if tags.get("umm.train_run_id") else ""
        return f"{tags['umm.method']} of version {tags.get('umm.parent_version', '?')}{run}."
    return f"Evaluated as registered from {tags.get('umm.base_model', mv.source)}."


# What the latest evaluation and comparison of a version said, kept as version tags and shown
# in its description under its lineage.
SUMMARY_TAGS = ("umm.scores", "umm.deltas")


def describe_version(name: str, version: str, **summaries: str) -> None:
    """The version's description, as the registry's pages show it: its lineage, then the
    latest `scores=` (an evaluation) and `deltas=` (a comparison) given for it."""
    client = MlflowClient()
    for key, text in summaries.items():
        client.set_model_version_tag(name, version, f"umm.{key}", text)
    tags = client.get_model_version(name, version).tags
    paragraphs = [lineage(name, version), *(tags[tag] for tag in SUMMARY_TAGS if tags.get(tag))]
    client.update_model_version(name, version, description="\n\n".join(paragraphs))


def logged_model_id(name: str, version: str) -> str | None:
    """The MLflow 3 logged model behind a registered version (None for a version registered
    from a plain artifact folder), the model its evaluation metrics are attached to. The SQL store
    leaves `model_id` empty; the version's source (`models:/m-...`) names it."""
    mv = MlflowClient().get_model_version(name, version)
    source = mv.source or ""
    return mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
