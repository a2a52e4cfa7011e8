"""Recipes: the YAML files in `projects/` and the CLI flags that override them.

A recipe is validated in full before any model loads, and every problem is reported as one
line naming the field (`ConfigError`), which the CLI turns into exit code 2.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.judges.base import JudgeConfig
from umm_harness.core.acceleration import AttnImplementation
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams
from umm_harness.ray_executor import RaySettings

DEFAULT_MODEL = "tiny:janus-pro"


def _batch_size(value: Any) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
    return number


class EvalRecipe(BaseModel):
    """What `umm eval` / `mlflow run . -e eval` evaluates, and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    backbone: str | None = None  # needed only when it cannot be inferred from the model
    backbone_options: dict[str, Any] = Field(default_factory=dict)  # adapter-specific load options (repo_path, ...)
    revision: str | None = None
    suite: str = "shapes"
    limit: int | None = Field(default=None, ge=0)  # per benchmark; None or 0 = all samples
    seed: int = 0
    batch_size: Annotated[int | Literal["auto"], BeforeValidator(_batch_size)] = 16  # auto: largest that fits
    data_dir: Path | None = None
    # Where result caches live (default $UMM_HOME/cache); several nodes share one through this folder.
    cache_dir: Path | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    # Attention kernel of transformers-based backbones; auto: flash_attention_2 where it runs, else sdpa.
    attn_implementation: AttnImplementation = "auto"
    compile: bool = False  # torch.compile the language model's forward (pays a compile on first use)
    threads: int | None = Field(default=None, ge=1)
    executor: Literal["local", "ray"] = "local"  # ray: generation on a Ray Data actor pool (`ray:` block)
    ray: RaySettings = Field(default_factory=RaySettings)
    # Where the model runs: "local" in this process; "uv" / "virtualenv" in its own environment,
    # built by MLflow (umm_harness.isolation); None: the model's declared default.
    env_manager: Literal["local", "uv", "virtualenv"] | None = None
    experiment: str | None = None  # None: MLflow's current experiment (umm_harness.runs)
    register_as: str | None = None  # registered model name for a model that is not registered yet
    stage: Literal["all", "generate", "score"] = "all"  # generate → score, or both in one go
    from_run: str | None = None  # for stage score: the parent run of the generate stage
    params: InferenceParams = Field(default_factory=InferenceParams)  # overrides for every request
    judge: JudgeConfig | None = None  # for judged benchmarks (mm_vet, mathvista); None: UMM_JUDGE_* env
    task_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # benchmark → constructor options

    @model_validator(mode="before")
    @classmethod
    def _acceleration_from_backbone_options(cls, values: Any) -> Any:
        """`backbone_options: {attn_implementation: ..., compile: ...}` is the same choice as the
        top-level fields: move it there (naming it twice, differently, is an error)."""
        if not isinstance(values, dict) or not isinstance(values.get("backbone_options"), dict):
            return values
        values, options = dict(values), dict(values["backbone_options"])
        for name in ("attn_implementation", "compile"):
            if name in options:
                value = options.pop(name)
                if values.get(name, value) != value:
                    raise ValueError(f"{name} is set to {values[name]!r} and in backbone_options to {value!r}")
                values[name] = value
        values["backbone_options"] = options
        return values

    @field_validator("model", "suite")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        from umm_harness.core.acceleration import check_device

        try:
            return check_device(value, here=False)  # whether this machine has it: checked when evaluating
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("data_dir")
    @classmethod
    def _data_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"directory '{value}' does not exist")
        return value


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "recipe"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return f"{source}: field '{field}': {message}{more}"


# Bounds on what a recipe may hold. Free-form mappings (backbone_options, task_options, ...) are
# checked here too: YAML aliases can make a small file expand to billions of values, and every
# value becomes an MLflow param (keys of at most 250 characters), so a recipe is walked (with a
# budget) and flattened before it is accepted, never after a run has started.
MAX_RECIPE_BYTES = 1_000_000
MAX_VALUES = 10_000
MAX_DEPTH = 20
MAX_PARAMS = 500
MAX_PARAM_KEY = 250


def _check_size(values: Any, source: str) -> None:
    budget, stack = MAX_VALUES, [(values, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"{source}: more than {MAX_VALUES} values (YAML aliases that expand?)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_params(recipe: BaseModel, source: str) -> None:
    flat = flatten(recipe.model_dump(mode="json"), "recipe.")
    if len(flat) > MAX_PARAMS:
        largest = Counter(key.split(".")[1] for key in flat).most_common(1)[0][0]
        raise ConfigError(f"{source}: field '{largest}': the recipe flattens to {len(flat)} MLflow params, "
                          f"at most {MAX_PARAMS}")
    for key in flat:
        if len(key) > MAX_PARAM_KEY:
            raise ConfigError(f"{source}: field '{key.removeprefix('recipe.')[:80]}...': a name of {len(key)} "
                              f"characters; MLflow param names hold at most {MAX_PARAM_KEY}")


def build_recipe(model_cls: type[BaseModel], values: dict[str, Any], source: str = "recipe"):
    _check_size(values, source)
    try:
        recipe = model_cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    _check_params(recipe, source)
    return recipe


def load_recipe(path: Path | None, overrides: dict[str, Any], model_cls: type[BaseModel] = EvalRecipe):
    """A recipe file (optional) with CLI overrides applied on top; `None` overrides are ignored."""
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"recipe file '{path}' does not exist")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise ConfigError(f"recipe file '{path}' is {path.stat().st_size} bytes; a recipe holds at most "
                              f"{MAX_RECIPE_BYTES}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of fields, got {type(loaded).__name__}")
        values.update(loaded or {})
        source = str(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_recipe(model_cls, values, source)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested recipe → flat `a.b` keys, the form MLflow params take."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif value is not None:
            flat[name] = str(value)
    return flat
