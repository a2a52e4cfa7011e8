"""The `umm` MLflow flavor: any registered backbone as an MLflow model and a pyfunc.

The flavor is written once for every backbone; a backbone module only supplies its adapter.
A saved model holds:

- `MLmodel` with the `umm` flavor (backbone key, capabilities, weight source, dtype, digest)
  and the `python_function` flavor pointing at this module's `_load_pyfunc`;
- `weights/`, the adapter's `save_pretrained` output, unless the weights are recorded by
  reference (a hub id + revision), so logging a 7B base model never silently copies GBs;
- `code/` with `umm_harness` and `model_flavors`, so the model loads in a process where this
  repository is not importable (e.g. `mlflow models serve` on another machine).

pyfunc `predict` takes a DataFrame with columns `task`, `prompt`, `images` (a list of base64
images) and optionally `params` (a JSON object per row), and returns `text`, `images` (a list of
base64 PNGs), `params` (the params the backbone used, as JSON) and `elapsed_s`. Request-level
params (seed, guidance_scale, ...) apply to every row, row i using seed + i so a batch of
identical prompts gives distinct images; a row's own `params` override them, its seed taken as
given (this is how the harness keeps its per-sample seeds across `umm_harness.isolation`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import shutil
from functools import partial, wraps
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType, Array
from PIL import Image as PILImage
from pydantic import BaseModel, Field, ValidationError

import model_flavors
from model_flavors import environment
from model_flavors.registry import backbone_class
from umm_harness import core
from umm_harness.core.backbone import Backbone, LazyBackbone, ModelInfo
from umm_harness.core.requests import InferenceParams, InferenceRequest, encode_png

FLAVOR_NAME = "umm"
_WEIGHTS_DIR = "weights"
_CODE_DIR = "code"

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("string", "task"),
        ColSpec("string", "prompt", required=False),
        # `images`: a list of base64 images; `params`: this row's params (a JSON object, or its text),
        # seed as given. Both are declared `Any` so that every payload shape reaches `predict` as
        # rows: with an `Array` column MLflow turns an `instances` payload into one row of arrays,
        # and a `string` column turns an object into its Python repr. `predict` checks them itself.
        ColSpec(AnyType(), "images", required=False),
        ColSpec(AnyType(), "params", required=False),
    ]),
    outputs=Schema([
        ColSpec("string", "text", required=False),
        ColSpec(Array("string"), "images", required=False),
        ColSpec("string", "params", required=False),  # a JSON object: the params the backbone used
        ColSpec("double", "elapsed_s", required=False),
    ]),
    params=ParamSchema([
        ParamSpec("seed", "long", None),
        ParamSpec("guidance_scale", "double", None),
        ParamSpec("image_guidance_scale", "double", None),
        ParamSpec("steps", "long", None),
        ParamSpec("max_new_tokens", "long", None),
        ParamSpec("temperature", "double", None),
        ParamSpec("image_size", "long", None),
    ]),
)

# How `_load_pyfunc` loads the backbone; MLflow lets a loader override only keys logged here
# (`mlflow.pyfunc.load_model(model_config=...)`, `SERVING_MODEL_CONFIG` for a scoring server).
# threads 0: torch's default.
LOAD_CONFIG: dict[str, Any] = {"device": "cpu", "threads": 0, "attn_implementation": "auto", "compile": False}


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative name and bytes: equal digests mean the same weights."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def reference_digest(source: str, revision: str | None) -> str:
    return hashlib.sha256(f"ref:{source}@{revision or 'main'}".encode()).hexdigest()


def _copy_code(destination: Path) -> None:
    # The whole `umm_harness` package travels (its `core` is what adapters import).
    for package_dir in (Path(core.__file__).parent.parent, Path(model_flavors.__file__).parent):
        shutil.copytree(package_dir, destination / package_dir.name, ignore=shutil.ignore_patterns("__pycache__"))


class Checkpoint(BaseModel):
    """A backbone's checkpoint that is not loaded here (its code may not even import in this
    environment): enough to save it as a model that loads in its own environment. A local folder
    is copied as the weights, as the adapter's `load` reads it; a hub id is recorded by reference."""

    backbone: str  # registry key
    source: str  # local checkpoint folder or hub id
    revision: str | None = None
    dtype: str = "float32"
    repo_path: Path | None = None  # the upstream checkout, for upstream routes
    # The adapter's other `load` options (backbone_options), recorded in the model and applied where
    # it loads; local paths among them are kept by reference.
    options: dict[str, Any] = Field(default_factory=dict)


def save_model(
    backbone: Backbone | Checkpoint,
    path: str | Path,
    mlflow_model: Model | None = None,
    copy_weights: bool = True,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write `backbone` (a loaded adapter, or a `Checkpoint`) as an MLflow model folder at `path`
    (which must not exist or be empty)."""
    if isinstance(backbone, LazyBackbone):  # its class (environment, upstream) and weights are the loaded adapter's
        backbone = backbone.loaded()
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise MlflowException(f"Path '{path}' already exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    mlflow_model = mlflow_model or Model()
    load_options: dict[str, Any] = {}
    if isinstance(backbone, Checkpoint):
        cls, repo_path, load_options = backbone_class(backbone.backbone), backbone.repo_path, backbone.options
        info = ModelInfo(backbone=cls.key, source=backbone.source, revision=backbone.revision, dtype=backbone.dtype)
        capabilities = cls.capabilities
        copy_weights = copy_weights and Path(backbone.source).is_dir()
        save_weights = partial(shutil.copytree, backbone.source, ignore=shutil.ignore_patterns(".git", ".cache"))
    else:
        cls, repo_path, info = type(backbone), backbone.repo_path, backbone.info
        capabilities, save_weights = backbone.capabilities, backbone.save_pretrained

    if copy_weights:
        save_weights(path / _WEIGHTS_DIR)
        digest = folder_digest(path / _WEIGHTS_DIR)
    else:
        digest = reference_digest(info.source, info.revision)
    _copy_code(path / _CODE_DIR)
    upstream = environment.bundle_upstream(cls, repo_path, path / _CODE_DIR)
    adapters = copy_weights and (path / _WEIGHTS_DIR / environment.ADAPTER_CONFIG).is_file()
    env_files = environment.write_environment(path, cls, adapters=adapters)

    mlflow_model.signature = SIGNATURE
    if metadata:
        mlflow_model.metadata = {**(mlflow_model.metadata or {}), **metadata}
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module="model_flavors.flavor", code=_CODE_DIR,
                               python_env=env_files["virtualenv"], conda_env=env_files["conda"],
                               model_config=dict(LOAD_CONFIG))
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        backbone=cls.key,
        capabilities=sorted(capabilities),
        source=info.source if not copy_weights else None,
        base_model=info.source,
        revision=info.revision,
        dtype=info.dtype,
        weights=_WEIGHTS_DIR if copy_weights else None,
        weights_digest=digest,
        harness_version=core.__version__,
        code=_CODE_DIR,
        env_manager=cls.env_manager,
        upstream=upstream,
        **({"load_options": load_options} if load_options else {}),
    )
    mlflow_model.save(path / "MLmodel")


def log_model(
    backbone: Backbone | Checkpoint,
    name: str = "model",
    registered_model_name: str | None = None,
    copy_weights: bool = True,
    tags: dict[str, str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log to the active run (and register, if a name is given) through MLflow's own `Model.log`."""
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        registered_model_name=registered_model_name,
        backbone=backbone,
        copy_weights=copy_weights,
        tags=tags,
    )


def flavor_conf(local_path: Path) -> dict[str, Any]:
    model = Model.load(local_path / "MLmodel")
    if FLAVOR_NAME not in model.flavors:
        raise MlflowException(f"{local_path} is not a '{FLAVOR_NAME}' model (flavors: {sorted(model.flavors)})")
    return model.flavors[FLAVOR_NAME]


def load_local(local_path: Path, device: str = "cpu", attn_implementation: str = "auto",
               compile: bool = False) -> Backbone:
    conf = flavor_conf(local_path)
    cls = backbone_class(conf["backbone"])
    source = str(local_path / conf["weights"]) if conf.get("weights") else conf["source"]
    options = {**conf.get("load_options", {}), **cls.acceleration_options(attn_implementation, compile)}
    if conf.get("upstream"):  # the checkout bundled as code, never one on this machine
        options["repo_path"] = str(local_path / conf.get("code", _CODE_DIR) / conf["upstream"]["path"])
    return cls.load(source, revision=None if conf.get("weights") else conf.get("revision"),
                    dtype=conf.get("dtype", "float32"), device=device, **options)


def load_model(model_uri: str, dst_path: str | None = None, device: str = "cpu", attn_implementation: str = "auto",
               compile: bool = False) -> Backbone:
    """The backbone adapter behind `model_uri` (runs:/, models:/, a local folder, ...)."""
    local_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path))
    return load_local(local_path, device=device, attn_implementation=attn_implementation, compile=compile)


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _base64_bytes(value: Any, row_index: int, index: int) -> bytes:
    """An image of a request row, from base64 only: a served model must never read a path it is sent."""
    payload = value.split(",", 1)[1] if isinstance(value, str) and value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _invalid(f"row {row_index}: images[{index}]: not valid base64 (send images as base64 PNG/JPEG)") from None


# What one served request may ask for. A scoring worker computes a request to the end even after
# the client gave up, so a 10 MB prompt or max_new_tokens=10**9 would hold it for minutes.
SERVE_LIMITS = {"prompt_chars": 16_000, "images_per_row": 8, "image_pixels": 4096 * 4096,
                "max_new_tokens": 4096, "steps": 500, "image_size": 2048}


def _check_served_params(params: InferenceParams) -> None:
    for name in ("max_new_tokens", "steps", "image_size"):
        value = getattr(params, name)
        if value is not None and value > SERVE_LIMITS[name]:
            raise _invalid(f"params: {name}: {value} is above the served limit {SERVE_LIMITS[name]}")


def _check_served_row(row_index: int, prompt: Any, images: list[bytes]) -> None:
    if isinstance(prompt, str) and len(prompt) > SERVE_LIMITS["prompt_chars"]:
        raise _invalid(f"row {row_index}: prompt has {len(prompt)} characters; at most {SERVE_LIMITS['prompt_chars']}")
    if len(images) > SERVE_LIMITS["images_per_row"]:
        raise _invalid(f"row {row_index}: {len(images)} images; at most {SERVE_LIMITS['images_per_row']}")
    for index, data in enumerate(images):
        try:
            with PILImage.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        except Exception:  # noqa: BLE001 - not an image: the request's own validation names it
            continue
        if width * height > SERVE_LIMITS["image_pixels"]:
            raise _invalid(f"row {row_index}: images[{index}] is {width}x{height}; at most "
                           f"{SERVE_LIMITS['image_pixels']} pixels")


class UmmPyfuncModel:
    """The pyfunc face of a backbone: DataFrame rows in, text and base64 PNGs out."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def _requests(self, frame: pd.DataFrame, params: dict[str, Any]) -> list[InferenceRequest]:
        if "task" not in frame.columns:
            raise _invalid("input is missing the required column 'task'")
        try:
            base = InferenceParams(**{k: v for k, v in params.items() if v is not None})
        except ValidationError as exc:
            raise _invalid(f"params: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        _check_served_params(base)
        requests = []
        for row_index, row in enumerate(frame.to_dict("records")):
            images = _row_images(row.get("images"), row_index)
            prompt = _present(row.get("prompt"))
            _check_served_row(row_index, prompt, images)
            params = base.model_copy(update={"seed": None if base.seed is None else base.seed + row_index})
            if (own := _present(row.get("params"))) is not None:
                params = _row_params(own, row_index).merged_over(params)
                _check_served_params(params)
            try:
                request = InferenceRequest(task=row["task"], prompt=prompt, images=images, params=params)
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                if field and not message.startswith(field):
                    message = f"{field}: {message}"
                raise _invalid(f"row {row_index}: {message}") from None
            self.backbone.check_supports(request.task)
            requests.append(request)
        return requests

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            requests = self._requests(model_input, params or {})
        except Exception as exc:
            if isinstance(exc, MlflowException):
                raise
            raise _invalid(str(exc)) from None
        outputs: list[dict[str, Any]] = [{} for _ in requests]
        for task in dict.fromkeys(r.task for r in requests):
            indices = [i for i, r in enumerate(requests) if r.task == task]
            try:
                results = self.backbone.run([requests[i] for i in indices])
            except Exception as exc:  # noqa: BLE001 - a served model answers with what went wrong, not a generic 400
                code = INVALID_PARAMETER_VALUE if isinstance(exc, ValueError) else INTERNAL_ERROR
                raise MlflowException(f"{self.backbone.key} {task}: {type(exc).__name__}: {exc}",
                                      error_code=code) from exc
            for i, result in zip(indices, results):
                outputs[i] = {"text": result.text, "images": [encode_png(img) for img in result.images],
                              "params": result.params.model_dump_json(exclude_none=True),
                              "elapsed_s": result.elapsed_s}
        # object columns: a missing text stays None (JSON null); a string column would turn it into NaN,
        # which MLflow's scoring server writes as a bare `NaN` that strict JSON parsers refuse
        return pd.DataFrame(outputs, columns=["text", "images", "params", "elapsed_s"], dtype=object)


def _present(value: Any) -> Any:
    """None for a cell the client left empty (pandas fills missing cells with NaN)."""
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _row_images(value: Any, row_index: int) -> list[bytes]:
    """A row's images as bytes: a list of base64 strings (an array, for payloads MLflow turned into arrays)."""
    value = _present(value)
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _invalid(f"row {row_index}: images: expected a list of base64 images, got {type(value).__name__} "
                       f"{str(value)[:40]!r}")
    return [_base64_bytes(item, row_index, index) for index, item in enumerate(value)]


def _row_params(value: Any, row_index: int) -> InferenceParams:
    try:
        return InferenceParams.model_validate_json(value) if isinstance(value, str) else InferenceParams(**value)
    except (ValidationError, TypeError) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = f".{detail['loc'][0]}" if detail and detail["loc"] else ""
        raise _invalid(f"row {row_index}: params{where}: {detail['msg'] if detail else exc}") from None


def _refuse_deep_json_in_scoring_server() -> None:
    """MLflow's scoring server (3.17, 3.18) parses a request body with `json.loads` outside its error
    handling, so a body nested deeper than Python's recursion limit (`[[[[...` 50,000 deep) raises
    RecursionError and is answered 500. When that server is the one loading this model, its body
    decoder is wrapped so that such a body is a 400, like any other JSON it cannot read."""
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    decode = getattr(server, "_decode_json_input", None)
    if decode is None or getattr(decode, "refuses_deep_json", False):
        return

    @wraps(decode)
    def decode_or_refuse(json_input: Any) -> Any:
        try:
            return decode(json_input)
        except RecursionError:
            raise _invalid("the JSON body is nested too deeply to parse (send flat rows)") from None

    decode_or_refuse.refuses_deep_json = True  # type: ignore[attr-defined]
    server._decode_json_input = decode_or_refuse


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> UmmPyfuncModel:
    """`model_config` (MLflow's, e.g. `SERVING_MODEL_CONFIG` for a scoring server): `device`,
    `threads` (torch CPU threads), `attn_implementation`, `compile`."""
    _refuse_deep_json_in_scoring_server()
    config = {**LOAD_CONFIG, **(model_config or {})}
    if config["threads"]:
        import torch

        torch.set_num_threads(int(config["threads"]))
    return UmmPyfuncModel(load_local(Path(path), device=config["device"],
                                     attn_implementation=config["attn_implementation"], compile=bool(config["compile"])))
