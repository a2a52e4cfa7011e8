"""What `umm train` / `mlflow run . -e train` post-trains, and how (the YAML files in `projects/`).

A recipe is validated in full before anything loads (unknown fields, an unknown method, a ZeRO
stage outside 0-3 ... are one-line `ConfigError`s, see `umm_harness.config`). Whether the base
model is registered is checked by `training.run.train` before a run starts.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from umm_harness.config import build_recipe, load_recipe

Method = Literal["sft", "lora", "reca", "irg", "unicot"]
Objective = Literal["understanding", "generation", "reconstruction"]
IrgMode = Literal["initial_thinking_understanding_learning", "initial_thinking_generation_learning",
                  "initial_full_learning", "improving_thinking_understanding_learning",
                  "improving_thinking_generation_learning", "improving_full_learning"]
UnicotTask = Literal["self_reflection", "breakdown"]

DEFAULT_BASE = "models:/janus-pro-tiny/1"

# Which objectives each method trains when the recipe does not say (weights of the summed loss).
DEFAULT_OBJECTIVES: dict[str, dict[str, float]] = {
    "sft": {"understanding": 1.0},
    "lora": {"understanding": 1.0},
    "reca": {"reconstruction": 1.0},
}
INTERLEAVED_METHODS = ("irg", "unicot")  # methods whose data are interleaved conversations (one loss: `interleaved`)

# IRG's learning modes and their weights (IRG's `train_toy_dataset_stage1.yaml`): full learning 1.0, the
# thinking-only modes 0.5; the thinking-understanding modes may be absent from the data (not mandatory).
# Stage 2 keeps only the full-learning modes.
IRG_MODES: dict[int, dict[str, float]] = {
    1: {"initial_full_learning": 1.0, "improving_full_learning": 1.0,
        "initial_thinking_generation_learning": 0.5, "improving_thinking_generation_learning": 0.5,
        "initial_thinking_understanding_learning": 0.5, "improving_thinking_understanding_learning": 0.5},
    2: {"initial_full_learning": 1.0, "improving_full_learning": 1.0},
}
IRG_OPTIONAL_MODES = frozenset({"initial_thinking_understanding_learning", "improving_thinking_understanding_learning"})
# UniCoT trains on its self-reflection (micro) and breakdown (macro) interleaved data, with LoRA of this size.
UNICOT_TASKS: dict[str, float] = {"self_reflection": 1.0, "breakdown": 1.0}
UNICOT_LORA = {"rank": 256, "alpha": 512.0}

# The language model's attention and MLP projections (peft takes a regex as a full match): Janus'
# `language_model.layers.N`, BAGEL's `language_model.model.layers.N` with both experts' (`*_moe_gen`).
DEFAULT_LORA_TARGETS = (r".*language_model\.(model\.)?layers\.\d+\."
                        r"(self_attn\.(q|k|v|o)_proj(_moe_gen)?|mlp(_moe_gen)?\.(gate|up|down)_proj)")

_REGISTERED = re.compile(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))")


class LoraSettings(BaseModel):
    """peft LoRA adapters (methods `lora` and `unicot`)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=16, ge=1)  # unicot, unless set: UniCoT's 256
    alpha: float = Field(default=32.0, gt=0)  # unicot, unless set: UniCoT's 512
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = DEFAULT_LORA_TARGETS  # a regex (full match) or module-name suffixes
    merge: bool = True  # export merged weights; False keeps the adapter files beside the base weights


class RecaSettings(BaseModel):
    """Reconstruction alignment (method `reca`): regenerate an image from its understanding embeddings."""

    model_config = ConfigDict(extra="forbid")

    # the text that follows the image; None: one of the "describe everything" templates per image
    # (`training.reca.DESCRIBE_PROMPTS`, drawn from the run seed and the image id), as RecA does
    prompt: str | None = None
    train_understanding_encoder: bool = False  # RecA keeps the semantic encoder fixed


class IrgSettings(BaseModel):
    """Interleaving reasoning generation (method `irg`): which stage, and the learning modes' weights."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal[1, 2] = 1  # stage 2 continues from a stage-1 version (`model`) on full learning only
    modes: dict[IrgMode, float] | None = None  # None: the stage's reference modes and weights (IRG_MODES)

    def weights(self) -> dict[str, float]:
        return dict(self.modes if self.modes is not None else IRG_MODES[self.stage])


class UnicotSettings(BaseModel):
    """Uni-CoT (method `unicot`): LoRA (`lora`) on self-reflection and breakdown conversations."""

    model_config = ConfigDict(extra="forbid")

    tasks: dict[UnicotTask, float] = Field(default_factory=lambda: dict(UNICOT_TASKS))


class DataSettings(BaseModel):
    """The training data: a split of a built-in benchmark; or (`images`, RecA only) the images of a
    parquet file (`path`; column `image`: base64 or bytes, optional `id`); or (`interleaved`, IRG and
    UniCoT) a folder of conversations, one subfolder per learning mode / task holding parquet files
    with a `conversation` column (see `training.interleaved`)."""

    model_config = ConfigDict(extra="forbid")

    benchmark: Literal["shapes", "images", "interleaved"] = "shapes"
    path: Path | None = None  # benchmarks `images` and `interleaved` only
    split: Literal["train", "test"] = "train"
    seed: int = 0  # the split's generator seed
    num_understanding: int = Field(default=4096, ge=0)
    num_generation: int = Field(default=256, ge=0)


class TrainRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_BASE  # a registered version (or alias) whose name receives the new version
    method: Method = "sft"
    objectives: dict[Objective, float] | None = None  # loss weights; None = the method's default
    data: DataSettings = Field(default_factory=DataSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    reca: RecaSettings = Field(default_factory=RecaSettings)
    irg: IrgSettings = Field(default_factory=IrgSettings)
    unicot: UnicotSettings = Field(default_factory=UnicotSettings)

    # optimisation
    steps: int = Field(default=600, ge=1)  # optimizer steps
    batch_size: int = Field(default=32, ge=1)  # examples per objective per optimizer step, all ranks together
    grad_accum: int = Field(default=1, ge=1)  # micro-batches per optimizer step (per rank)
    lr: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 = no clipping
    cfg_dropout: float = Field(default=0.1, ge=0, le=1)  # generation prompts dropped to unconditional
    ema: float = Field(default=0.0, ge=0, lt=1)  # decay of a weights EMA exported instead of the weights; 0 = off
    # (BAGEL's trainer: 0.9999 pretraining, 0.995 IRG; see training.ema)
    seed: int = 0

    # DeepSpeed and processes
    zero_stage: int = Field(default=0, ge=0, le=3)
    zero_options: dict[str, Any] = Field(default_factory=dict)  # more `zero_optimization` keys (offload, ...)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: int = Field(default=1, ge=1)
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"
    threads: int | None = Field(default=None, ge=1)  # torch threads per process; None: torch's own (cores / nproc
    # under the launcher). Tiny models train faster on 1 thread than on 2 on a 2-core machine.
    # Where the workers run: "local" in the harness's environment; "uv" / "virtualenv" in the base
    # model's own environment, built by MLflow (training.launch); None: what the base was logged with.
    env_manager: Literal["local", "uv", "virtualenv"] | None = None

    # checkpoints, export and tracking
    output_dir: Path | None = None  # checkpoints; default $UMM_HOME/train/<name>-<recipe key>
    checkpoint_every: int = Field(default=100, ge=0)  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = Field(default=2, ge=1)
    resume: bool = True  # continue from the last checkpoint in output_dir if there is one
    export_every_checkpoint: bool = False  # also register a version at every checkpoint
    alias: str | None = "challenger"  # set on the final version
    experiment: str | None = None  # None: MLflow's current experiment (umm_harness.runs)
    log_every: int = Field(default=10, ge=1)  # steps between metric flushes to MLflow

    @field_validator("model")
    @classmethod
    def _registered_reference(cls, value: str) -> str:
        value = value.strip()
        if not _REGISTERED.fullmatch(value):
            raise ValueError(
                f"'{value}' is not a registered model: post-training starts from models:/<name>/<version> "
                "or models:/<name>@<alias> (register a model with `umm eval` first)"
            )
        return value

    @field_validator("zero_options")
    @classmethod
    def _no_stage(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "stage" in value:
            raise ValueError("set the stage with 'zero_stage', not inside zero_options")
        return value

    @field_validator("objectives")
    @classmethod
    def _some_weight(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            if any(weight < 0 for weight in value.values()):
                raise ValueError("loss weights must be >= 0")
            if not any(weight > 0 for weight in value.values()):
                raise ValueError("at least one objective needs a weight > 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainRecipe:
        if self.method in INTERLEAVED_METHODS:
            return self._consistent_interleaved()
        if self.data.benchmark == "interleaved":
            raise ValueError(f"data.benchmark 'interleaved' is the data of methods irg and unicot, not '{self.method}'")
        active = self.active_objectives()
        if self.method == "reca" and "reconstruction" not in active:
            raise ValueError("method 'reca' trains the 'reconstruction' objective; add it to objectives")
        if self.method != "reca" and "reconstruction" in active:
            raise ValueError(f"objective 'reconstruction' belongs to method 'reca', not '{self.method}'")
        if "generation" in active and self.data.num_generation == 0:
            raise ValueError("objective 'generation' needs data.num_generation > 0")
        if ("understanding" in active or "reconstruction" in active) and self.data.num_understanding == 0:
            raise ValueError("objectives 'understanding' and 'reconstruction' need data.num_understanding > 0")
        if self.data.benchmark == "images":
            if self.data.path is None:
                raise ValueError("data.benchmark 'images' needs data.path (a parquet file with an 'image' column)")
            if set(active) != {"reconstruction"}:
                raise ValueError("data.benchmark 'images' has no captions or answers: it trains only the "
                                 "'reconstruction' objective (method 'reca')")
        return self._consistent_steps()

    def _consistent_interleaved(self) -> TrainRecipe:
        if self.objectives is not None:
            raise ValueError(f"method '{self.method}' weighs its data subsets, not objectives: set "
                             f"{'irg.modes' if self.method == 'irg' else 'unicot.tasks'} instead of objectives")
        if self.data.benchmark != "interleaved" or self.data.path is None:
            raise ValueError(f"method '{self.method}' trains on interleaved conversations: set "
                             "data: {benchmark: interleaved, path: <folder with one subfolder per subset>}")
        weights = self.subset_weights()
        if not any(weight > 0 for weight in weights.values()) or any(weight < 0 for weight in weights.values()):
            raise ValueError(f"{'irg.modes' if self.method == 'irg' else 'unicot.tasks'}: weights must be >= 0, "
                             "at least one > 0")
        if self.method == "irg" and self.irg.stage == 2:
            thinking = sorted(mode for mode, weight in weights.items() if weight > 0 and "full_learning" not in mode)
            if thinking:
                raise ValueError(f"irg stage 2 keeps only the full-learning modes; remove {', '.join(thinking)}")
        if self.method == "unicot":
            for key, value in UNICOT_LORA.items():  # UniCoT's adapter size unless the recipe sets one
                if key not in self.lora.model_fields_set:
                    setattr(self.lora, key, type(getattr(self.lora, key))(value))
        return self._consistent_steps()

    def _consistent_steps(self) -> TrainRecipe:
        per_step = self.grad_accum * self.nproc
        if self.batch_size % per_step:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum × nproc = {per_step}")
        return self

    # -- derived values ------------------------------------------------------------------

    def active_objectives(self) -> dict[str, float]:
        """The losses the backbone computes, by objective (interleaved methods: the one `interleaved`)."""
        if self.method in INTERLEAVED_METHODS:
            return {"interleaved": 1.0}
        weights = self.objectives if self.objectives is not None else DEFAULT_OBJECTIVES[self.method]
        return {name: weight for name, weight in weights.items() if weight > 0}

    def subset_weights(self) -> dict[str, float]:
        """Interleaved methods: the weight of each data subset (IRG learning mode, UniCoT task)."""
        return self.irg.weights() if self.method == "irg" else dict(self.unicot.tasks)

    def loss_terms(self) -> dict[str, tuple[str, float]]:
        """What the summed loss adds up: term name → (objective, weight). A term is an objective, or
        for interleaved methods a data subset with the `interleaved` loss."""
        if self.method in INTERLEAVED_METHODS:
            return {name: ("interleaved", weight) for name, weight in self.subset_weights().items() if weight > 0}
        return {name: (name, weight) for name, weight in self.active_objectives().items()}

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.grad_accum * self.nproc)

    def base_reference(self) -> tuple[str, str | None, str | None]:
        """(registered name, version or None, alias or None) of `model`."""
        name, version, alias = _REGISTERED.fullmatch(self.model).groups()
        return name, version, alias

    def curve_key(self) -> str:
        """A short hash of everything that shapes the loss curve (not where or how it is logged)."""
        values = self.model_dump(mode="json", exclude={
            "output_dir", "checkpoint_every", "keep_checkpoints", "resume", "export_every_checkpoint", "alias",
            "experiment", "log_every", "threads", "launcher", "env_manager",
        })
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def load_train_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainRecipe:
    """A recipe file (optional) with overrides on top; problems are one-line `ConfigError`s."""
    return load_recipe(path, overrides or {}, TrainRecipe)


def train_recipe(**values: Any) -> TrainRecipe:
    """Build a recipe from keyword values, with the same one-line errors as a file."""
    return build_recipe(TrainRecipe, values)
