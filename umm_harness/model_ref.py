"""Turning what a user typed as `--model` into a loaded backbone and its identity.

Accepted references, in the order they are tried:
- `models:/name/version`, `models:/name@alias` — a registered model (loaded through the flavor);
- `tiny:<name>` — a built-in tiny random-weight model, built on first use;
- a local folder — an MLflow model folder (has `MLmodel`) or a transformers checkpoint;
- a hub id (`org/name`) — downloaded by the backbone's own `from_pretrained`;
- an `http(s)://` URL — a model served by an engine (vllm-omni), with `--backbone`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from model_flavors import flavor
from model_flavors.registry import MARKER_FILES, backbone_class, infer_backbone, tiny_builder
from umm_harness import isolation
from umm_harness.core.acceleration import select_attn_implementation
from umm_harness.core.backbone import Backbone, LazyBackbone
from umm_harness.core.home import umm_home
from umm_harness.core.errors import ConfigError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ResolvedModel:
    backbone: Backbone | LazyBackbone
    reference: str  # what the user asked for
    digest: str  # identity of the weights: equal digests, equal models
    copy_weights: bool  # False for hub models: the flavor records them by reference
    registered_name: str  # the registered model this evaluates (or will be registered as)
    version: str | None = None  # set when the reference already is a registered version
    env_manager: str = "local"  # where the model runs: this process, or its own environment (uv, virtualenv)
    model_folder: Path | None = None  # the MLflow model folder a model run in its own environment is served from

    def close(self) -> None:
        """Stop the model's server when it runs in its own environment (nothing to do in-process)."""
        if isinstance(self.backbone, LazyBackbone):
            self.backbone.close()


def check_registered_name(name: str) -> str:
    """`name` if the registry takes it and a `models:/` URI and a search filter can name it again."""
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise ConfigError(f"registered model name '{name}': {exc.message}; choose another with --register-as") from None
    if "@" in name or ("'" in name and '"' in name) or name != name.strip() or not name.isprintable():
        raise ConfigError(f"registered model name '{name}': '@', both quote characters, line breaks and "
                          "surrounding spaces are not allowed; choose another with --register-as")
    return name


def resolve_registered(reference: str) -> tuple[str, str, dict[str, str]]:
    """(name, version, version tags) of a `models:/` reference, without loading anything."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", reference)
    if not match:
        raise ConfigError(f"model '{reference}': expected models:/<name>/<version> or models:/<name>@<alias>")
    name, version, alias = match.groups()
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ConfigError(f"model '{reference}' is not in the registry ({exc.message.splitlines()[0]})") from None
    return name, str(mv.version), dict(mv.tags)


def _adapter(cls: type[Backbone], load: Callable[..., Backbone], *, lazy: bool, dtype: str, device: str,
             acceleration: dict[str, Any]) -> Backbone | LazyBackbone:
    """`load(**acceleration options)` now, or on first use when `lazy` and the class alone says
    what the adapter can do; an impossible attention or compile choice fails now either way."""
    options = cls.acceleration_options(**acceleration)
    if not lazy or cls.per_instance_capabilities:
        return load(**options)
    attention = (select_attn_implementation(acceleration["attn_implementation"], device=device, dtype=dtype)
                 if cls.tunable_attention else None)
    return LazyBackbone(cls, partial(load, **options), attention, bool(options.get("compile")))


def _served(uri: str, conf: dict[str, Any], env_manager: str, device: str,
            acceleration: dict[str, Any]) -> LazyBackbone:
    """The model at `uri` in its own environment (`umm_harness.isolation`), started on first use."""
    cls = backbone_class(conf["backbone"])
    cls.acceleration_options(**acceleration)  # an impossible choice fails now, as in-process
    start = partial(isolation.serve_backbone, uri, env_manager, conf, device=device,
                    model_config={k: v for k, v in acceleration.items() if v not in ("auto", False)})
    backbone = LazyBackbone(cls, start, None, bool(acceleration.get("compile")))
    backbone.capabilities = frozenset(conf["capabilities"])
    return backbone


def _env_manager(requested: str | None, conf: dict[str, Any]) -> str:
    """The user's choice, else what the model was logged with, else its backbone's default."""
    return requested or conf.get("env_manager") or backbone_class(conf["backbone"]).env_manager


def _registered(reference: str, dtype: str, device: str, acceleration: dict[str, Any], lazy: bool,
                env_manager: str | None) -> ResolvedModel:
    name, version, tags = resolve_registered(reference)
    uri = f"models:/{name}/{version}"
    conf = flavor.flavor_conf(Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel")).parent)
    if (manager := _env_manager(env_manager, conf)) != "local":
        backbone = _served(uri, conf, manager, device, acceleration)
    else:
        backbone = _adapter(backbone_class(conf["backbone"]), partial(flavor.load_model, uri, device=device),
                            lazy=lazy, dtype=conf.get("dtype", dtype), device=device, acceleration=acceleration)
    digest = tags.get("umm.weights_digest") or conf["weights_digest"]
    return ResolvedModel(backbone, reference, digest, True, name, version, env_manager=manager)


def _checkpoint(cls: type[Backbone], source: str, digest: str, *, revision: str | None, copy_weights: bool,
                dtype: str, device: str, options: dict[str, Any], acceleration: dict[str, Any], lazy: bool,
                env_manager: str | None) -> tuple[Backbone | LazyBackbone, str, Path | None]:
    """(adapter, env manager, model folder) for a checkpoint that is not a logged model: loaded here,
    or — with env manager uv / virtualenv, the user's choice or the backbone's default — saved as an
    MLflow model folder without loading it here (`flavor.Checkpoint`) and served from its own environment."""
    manager = env_manager or cls.env_manager
    if manager == "local":
        load = partial(cls.load, source, dtype=dtype, device=device, **({"revision": revision} if revision else {}),
                       **options)
        return _adapter(cls, load, lazy=lazy, dtype=dtype, device=device, acceleration=acceleration), manager, None
    accepted = set(inspect.signature(cls.load).parameters) - {"source", "revision", "dtype", "device"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"backbone_options {unknown}: not options of {cls.key} (it takes: "
                          f"{', '.join(sorted(accepted)) or 'none'})")
    checkpoint = flavor.Checkpoint(backbone=cls.key, source=source, revision=revision, dtype=dtype,
                                   repo_path=options.get("repo_path"),
                                   options={k: v for k, v in options.items() if k != "repo_path"})
    identity = hashlib.sha256(f"{digest}|{checkpoint.model_dump_json()}".encode()).hexdigest()[:16]
    folder = umm_home() / "models" / f"{cls.key}-{identity}"
    if not (folder / "MLmodel").is_file():
        staging = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        flavor.save_model(checkpoint, staging, copy_weights=copy_weights)
        staging.rename(folder)
    return _served(str(folder), flavor.flavor_conf(folder), manager, device, acceleration), manager, folder


def _tiny(name: str, place: Callable[..., tuple[Any, str, Path | None]]) -> ResolvedModel:
    folder = umm_home() / "tiny" / name
    if not any((folder / marker).is_file() for marker in ("config.json", *MARKER_FILES)):
        log.info("building the tiny '%s' model at %s (first use only: a tokenizer and random weights, "
                 "about 10 s)", name, folder)
        started = time.perf_counter()
        tiny_builder(name)(folder, seed=0)
        log.info("built the tiny '%s' model in %.0f s", name, time.perf_counter() - started)
    cls = backbone_class(infer_backbone(str(folder)))
    digest = flavor.folder_digest(folder)
    backbone, manager, served_from = place(cls, str(folder), digest, revision=None, copy_weights=True, options={})
    return ResolvedModel(backbone, f"tiny:{name}", digest, True, f"{name}-tiny", env_manager=manager,
                         model_folder=served_from)


def _check_hub(repo_id: str, revision: str | None) -> None:
    """A hub model must be in the local cache or downloadable: one short request says which, where
    `from_pretrained` would retry for a minute and end in an OSError deep inside transformers."""
    import huggingface_hub
    import requests
    from huggingface_hub import constants

    if any(isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision), str)
           for name in ("config.json", "model_index.json")):
        return
    where = f"model '{repo_id}' is not in the local Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{where} and HF_HUB_OFFLINE is set; download it first, or pass a local folder")
    token = huggingface_hub.get_token()
    url = f"{constants.ENDPOINT}/api/models/{repo_id}/revision/{revision or 'main'}"
    try:
        answer = requests.get(url, timeout=10, headers={"Authorization": f"Bearer {token}"} if token else {})
    except requests.RequestException as exc:
        raise ConfigError(f"{where} and the hub ({constants.ENDPOINT}) cannot be reached "
                          f"({type(exc).__name__}); download it where there is network, or pass a local folder") from None
    if answer.status_code in (401, 403, 404):
        raise ConfigError(f"model '{repo_id}' (revision {revision or 'main'}) is not on the hub at {constants.ENDPOINT}, "
                          "or is gated: check the id, or log in (HF_TOKEN)")


def resolve_model(
    reference: str,
    *,
    backbone: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    register_as: str | None = None,
    options: dict[str, Any] | None = None,
    attn_implementation: str = "auto",
    compile: bool = False,
    lazy: bool = False,
    env_manager: str | None = None,
) -> ResolvedModel:
    """The model behind `reference`; bad references raise `ConfigError` before loading.

    `options` go to the adapter's `load` (e.g. BAGEL's `repo_path`) for checkpoints it loads itself;
    `attn_implementation` and `compile` to every transformers-based adapter (`umm_harness.core.acceleration`).
    `lazy`: the weights load on first use (`LazyBackbone`), where the backbone's class allows it.
    `env_manager`: "local" loads the model in this process; "uv" / "virtualenv" run it in its own
    environment (a checkpoint is first saved as an MLflow model folder under $UMM_HOME/models, without
    loading it here); None: the default the model was logged with, else its backbone's.
    """
    options = options or {}
    acceleration = {"attn_implementation": attn_implementation, "compile": compile}
    place = partial(_checkpoint, dtype=dtype, device=device, acceleration=acceleration, lazy=lazy,
                    env_manager=env_manager)
    if reference.startswith("models:/"):
        resolved = _registered(reference, dtype, device, acceleration, lazy, env_manager)
    elif reference.startswith("tiny:"):
        resolved = _tiny(reference.removeprefix("tiny:"), place)
    elif Path(reference).expanduser().exists():
        folder = Path(reference).expanduser().resolve()
        if (folder / "MLmodel").is_file():
            conf = flavor.flavor_conf(folder)
            if (manager := _env_manager(env_manager, conf)) != "local":
                loaded = _served(str(folder), conf, manager, device, acceleration)
            else:
                loaded = _adapter(backbone_class(conf["backbone"]), partial(flavor.load_local, folder, device=device),
                                  lazy=lazy, dtype=conf.get("dtype", dtype), device=device, acceleration=acceleration)
            digest = flavor.folder_digest(folder / "weights") if (folder / "weights").is_dir() else folder.name
            resolved = ResolvedModel(loaded, reference, digest, True, folder.name.lower(), env_manager=manager,
                                     model_folder=folder if manager != "local" else None)
        else:
            cls = backbone_class(backbone or infer_backbone(str(folder)))
            digest = flavor.folder_digest(folder)
            loaded, manager, served_from = place(cls, str(folder), digest, revision=None, copy_weights=True,
                                                 options=options)
            resolved = ResolvedModel(loaded, reference, digest, True, folder.name.lower(), env_manager=manager,
                                     model_folder=served_from)
    elif reference.startswith(("http://", "https://")):  # a model behind an engine (vllm-omni, patched vLLM)
        if not backbone:
            raise ConfigError(f"model '{reference}' is a server: pass --backbone (e.g. bagel)")
        # The engine runs the model; the adapter (tokenizers, request translation) runs here, or in its
        # own environment when its code needs one (Emu3.5's tokenizer).
        cls = backbone_class(backbone)
        digest = flavor.reference_digest(reference, None)
        loaded, manager, served_from = place(cls, reference, digest, revision=None, copy_weights=False,
                                             options=options)
        resolved = ResolvedModel(loaded, reference, digest, False,
                                 re.sub(r"[^a-z0-9-]+", "-", reference.split("://", 1)[1].lower()).strip("-"),
                                 env_manager=manager, model_folder=served_from)
    elif _HUB_ID.match(reference) and not reference.startswith((".", "~")):
        cls = backbone_class(backbone or infer_backbone(reference))
        _check_hub(reference, revision)
        digest = flavor.reference_digest(reference, revision)
        loaded, manager, served_from = place(cls, reference, digest, revision=revision, copy_weights=False,
                                             options=options)
        resolved = ResolvedModel(loaded, reference, digest, False, reference.split("/")[-1].lower(),
                                 env_manager=manager, model_folder=served_from)
    else:
        raise ConfigError(f"model '{reference}': no such file or directory, and not a hub id, models:/ URI or tiny:<name>")
    if register_as and resolved.version is None:
        resolved.registered_name = register_as
    if resolved.version is None:  # it will be registered under this name: refuse it now, not after the run
        check_registered_name(resolved.registered_name)
    return resolved
