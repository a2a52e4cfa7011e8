"""`train(recipe)`: post-train a registered model and register the result as its next version.

The steps, in order:
1. check the recipe's base model is registered, and for IRG stage 2 that it is a stage-1 version
   (else `ConfigError`, before any run starts);
2. with `nproc > 1`, relaunch as N ranks (`training.launch`) and return rank 0's result;
3. load the base version, turn the benchmark's train split into tensors (`training.data`);
4. wrap the model for the method (`sft` / `lora` / `reca` / `irg` / `unicot`) and its loss terms, start DeepSpeed,
   resume from the last checkpoint of this recipe if there is one;
5. step, logging per-step metrics in batches (rank 0), checkpointing every `checkpoint_every`;
6. export the weights into the flavor and register a new version (`training.export`).

Tracking (rank 0 only): the run logs the flattened recipe as `recipe.*` params, the resolved
recipe as `recipe.yaml`, the training data as an MLflow dataset input (digest + size),
`train/*` metrics per step, and tags linking it to the base and the new version. Under
`mlflow run` it logs into the run in `MLFLOW_RUN_ID`; a resumed training re-attaches to the
run it was interrupted in.

Checkpoints live in `output_dir` (default `$UMM_HOME/train/<name>-v<base>-<method>-<recipe key>`,
so re-running an interrupted recipe finds them). Re-running a recipe that already finished
returns its registered version without training again (`resume: false` starts over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from tqdm import tqdm

import umm_harness
from model_flavors import flavor
from training import data as train_data
from training import engine as train_engine
from training import export, irg, lora, reca, sft, unicot
from training.ema import Ema
from training.objectives import TrainingModule
from training.recipe import TrainRecipe
from umm_harness.core.home import umm_home
from umm_harness.config import flatten
from umm_harness.core.errors import ConfigError
from umm_harness.core.file_lock import exclusive
from umm_harness.core.training import Trainable
from umm_harness.model_registry import DIGEST_TAG
from umm_harness.runner import progress_enabled
from umm_harness.runs import start_top_level_run, take_project_run
from umm_harness.tracking import git_commit, log_batch

log = logging.getLogger(__name__)

METHODS = {"sft": sft, "lora": lora, "reca": reca, "irg": irg, "unicot": unicot}
WORKER_ENV = "UMM_TRAIN_WORKER"  # set by `training.launch` in the processes it starts
_DONE_FILE = "export.json"
_RECIPE_FILE = "recipe.json"


@dataclass
class TrainResult:
    run_id: str
    registered_name: str
    version: str | None  # None when the training stopped before the end (`stop_after_step`)
    parent_version: str
    losses: list[float]  # per optimizer step, the whole curve (resumed runs included)
    seconds: float  # wall time of this call
    steps: int  # optimizer steps completed
    train_seconds: float = 0.0  # time spent in optimizer steps in this call
    dataset_digest: str = ""
    dataset_size: int = 0
    weights_digest: str | None = None
    checkpoint_dir: str = ""
    resumed_from_step: int = 0
    reused: bool = False  # this recipe had finished before: its version was returned as is
    backbone: Any = field(default=None, repr=False, compare=False)  # the trained model (in-process runs)

    @property
    def model_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.version else None

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("backbone")
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainResult:
        return cls(**values)


# -- the base model ------------------------------------------------------------------------


def check_base(recipe: TrainRecipe) -> export.BaseVersion:
    """The registered version the recipe starts from, or a one-line `ConfigError`."""
    name, version, alias = recipe.base_reference()
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        reason = exc.message.splitlines()[0] if exc.message else type(exc).__name__
        raise ConfigError(f"base model '{recipe.model}' is not registered ({reason}); "
                          "register it first, e.g. with `umm eval`") from None
    if recipe.method == "irg":
        irg.check_parent(recipe, mv)
    return export.BaseVersion(name, str(mv.version), mv.tags.get(DIGEST_TAG) or str(mv.source))


def _logged_env_manager(base: export.BaseVersion) -> str:
    """Where the base version runs when the recipe does not say: what it was logged with."""
    mlmodel = mlflow.artifacts.download_artifacts(f"models:/{base.name}/{base.version}/MLmodel")
    return flavor.flavor_conf(Path(mlmodel).parent).get("env_manager") or "local"


def default_output_dir(recipe: TrainRecipe, base: export.BaseVersion) -> Path:
    key = hashlib.sha256(f"{recipe.curve_key()}:{base.identity}".encode()).hexdigest()[:12]
    return umm_home() / "train" / f"{base.name}-v{base.version}-{recipe.method}-{key}"


# -- entry point ---------------------------------------------------------------------------


def train(recipe: TrainRecipe, *, stop_after_step: int | None = None) -> TrainResult:
    """Post-train `recipe.model` and register the result; see the module docstring.

    `stop_after_step` stops (as a preemption would) after that many optimizer steps, without
    exporting; calling `train` again with the same recipe resumes from the last checkpoint.
    """
    base = check_base(recipe)
    if os.environ.get(WORKER_ENV) == "1":  # a rank the launcher below started: it holds the lock
        return _train_in_process(recipe, base, stop_after_step)
    recipe = recipe.model_copy(update={"env_manager": recipe.env_manager or _logged_env_manager(base)})
    # One training per checkpoint folder at a time: a second identical one waits, then reuses the result.
    output_dir = Path(recipe.output_dir or default_output_dir(recipe, base)).expanduser().resolve()
    with exclusive(output_dir.with_name(output_dir.name + ".lock"),
                   waiting=f"another training is using {output_dir}; waiting for it to finish"):
        if recipe.env_manager != "local":
            from training.launch import launch_in_environment

            return launch_in_environment(recipe, stop_after_step=stop_after_step)
        if recipe.nproc > 1:
            from training.launch import launch_workers

            return launch_workers(recipe, stop_after_step=stop_after_step)
        return _train_in_process(recipe, base, stop_after_step)


def _previous_result(output_dir: Path, base: export.BaseVersion) -> TrainResult | None:
    """The result of this recipe's finished training, if its version is still registered."""
    done = output_dir / _DONE_FILE
    if not done.is_file():
        return None
    result = TrainResult.from_json(json.loads(done.read_text()))
    try:
        mv = MlflowClient().get_model_version(base.name, result.version)
    except MlflowException:
        return None
    if result.run_id != mv.tags.get("umm.train_run_id") and result.weights_digest != mv.tags.get(DIGEST_TAG):
        return None  # the version is another model's now
    result.reused, result.seconds, result.train_seconds = True, 0.0, 0.0
    return result


def _check_same_recipe(output_dir: Path, recipe: TrainRecipe) -> None:
    """Resuming another recipe's checkpoints would splice two different loss curves."""
    written = output_dir / _RECIPE_FILE
    if not written.is_file() or not any(output_dir.glob("step*")):
        return
    try:
        previous = TrainRecipe.model_validate_json(written.read_text())
    except ValueError:
        return
    if previous.curve_key() != recipe.curve_key():
        raise ConfigError(f"output_dir '{output_dir}' holds checkpoints of a different recipe; "
                          "use another output_dir, or resume: false to start over there")


def _train_in_process(recipe: TrainRecipe, base: export.BaseVersion, stop_after_step: int | None) -> TrainResult:
    threads = torch.get_num_threads()
    # ZeRO-3 swaps its own torch.nn.functional.linear in for the rest of the process ("until
    # manually reset"), which changes the numerics of everything after it: put it back.
    linear = torch.nn.functional.linear
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    try:
        with train_engine.process_env():
            return _train_session(recipe, base, stop_after_step)
    finally:
        torch.set_num_threads(threads)
        torch.nn.functional.linear = linear


def _train_session(recipe: TrainRecipe, base: export.BaseVersion, stop_after_step: int | None) -> TrainResult:
    started = time.perf_counter()
    device = train_engine.resolve_device(recipe)
    dist_info = train_engine.setup_distributed(device)
    output_dir = Path(recipe.output_dir or default_output_dir(recipe, base)).expanduser().resolve()

    if recipe.resume:
        previous = _previous_result(output_dir, base)
        if previous is not None:
            log.info("this recipe already trained %s version %s; returning it (resume: false retrains)",
                     base.name, previous.version)
            if os.environ.get("MLFLOW_RUN_ID") and dist_info.is_main:  # say so in the run `mlflow run` made
                MlflowClient().set_tag(os.environ["MLFLOW_RUN_ID"], "umm.reused_train_run", previous.run_id)
                MlflowClient().set_tag(os.environ["MLFLOW_RUN_ID"], "umm.model_version", previous.version)
            return previous
        _check_same_recipe(output_dir, recipe)
    _barrier()
    if dist_info.is_main:
        if not recipe.resume and output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / _DONE_FILE).unlink(missing_ok=True)
        (output_dir / _RECIPE_FILE).write_text(recipe.model_dump_json(indent=1))
    _barrier()

    with tempfile.TemporaryDirectory(prefix="umm-train-") as workdir:
        base_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=base.uri, dst_path=workdir))
        backbone = flavor.load_local(base_dir)
        objectives = recipe.active_objectives()
        _check_trainable(backbone, objectives, recipe.method)
        examples = train_data.load_examples(recipe, backbone.native_image_size)
        frame = train_data.dataset_frame(examples)
        dataset_digest = train_data.dataset_digest(frame)
        sets = train_data.encode(backbone, examples, recipe)
        terms = {name: term for name, term in recipe.loss_terms().items() if name in sets}

        method = METHODS[recipe.method]
        torch.manual_seed(recipe.seed)  # adapter initialisation (LoRA) is random
        model = method.prepare(backbone, recipe)
        module = TrainingModule(model, backbone, terms, cfg_dropout=recipe.cfg_dropout)
        engine = train_engine.initialize(module, recipe, device)
        client_state = train_engine.load_latest(engine, output_dir, dist_info) if recipe.resume else None
        start_step = int(client_state["step"]) if client_state else 0
        losses = list(client_state.get("losses", []))[:start_step] if client_state else []
        ema = Ema(engine.module.model, recipe.ema, (client_state or {}).get("ema")) if recipe.ema else None
        if start_step:
            log.info("resuming from %s at step %d", output_dir, start_step)

        tracker = _Tracker(recipe, base, dist_info.is_main, (client_state or {}).get("mlflow_run_id"))
        tracker.start(frame, dataset_digest, output_dir, start_step)
        result = TrainResult(
            run_id=tracker.run_id, registered_name=base.name, version=None, parent_version=base.version,
            losses=losses, seconds=0.0, steps=start_step, dataset_digest=dataset_digest,
            dataset_size=len(frame), checkpoint_dir=str(output_dir), resumed_from_step=start_step,
        )
        try:
            for record in _with_progress(train_engine.steps(engine, sets, recipe, dist_info, start_step), recipe,
                                         start_step, dist_info.is_main):
                result.losses.append(record.loss)
                result.steps = record.step
                result.train_seconds += record.seconds
                if ema is not None:
                    ema.update(engine.module.model)
                tracker.step(record)
                final = record.step == recipe.steps
                if final or (recipe.checkpoint_every and record.step % recipe.checkpoint_every == 0):
                    tracker.flush()
                    train_engine.save_checkpoint(
                        engine, output_dir, record.step,
                        {"losses": result.losses, "mlflow_run_id": tracker.run_id, "recipe_key": recipe.curve_key()},
                        recipe.keep_checkpoints, dist_info, rank_state={"ema": ema.shadow} if ema is not None else None,
                    )
                    if recipe.export_every_checkpoint and not final:
                        _export(engine, method, base_dir, recipe, base, tracker, dataset_digest, record.step,
                                final=False, dist_info=dist_info, ema=ema)
                if stop_after_step is not None and record.step >= stop_after_step and not final:
                    tracker.finish("KILLED", result)
                    result.seconds = time.perf_counter() - started
                    return result
            if start_step >= recipe.steps:
                log.info("the last checkpoint is already at step %d: exporting it", start_step)
            version, digest, trained = _export(engine, method, base_dir, recipe, base, tracker, dataset_digest,
                                               recipe.steps, final=True, dist_info=dist_info, ema=ema)
        except BaseException as exc:
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", result)
            raise
        result.version, result.weights_digest = version, digest
        result.seconds = time.perf_counter() - started
        if dist_info.is_main:
            # stages 0-2 keep whole parameters: the trained module itself (with its adapters, for lora),
            # unless the export is the EMA of its weights
            if recipe.zero_stage < 3 and ema is None:
                backbone.model = engine.module.trained.eval()
                backbone.info = trained.info
                trained = backbone
            result.backbone = trained
            (output_dir / _DONE_FILE).write_text(json.dumps(result.to_json(), indent=1))
        tracker.finish("FINISHED", result)
        return result


def _with_progress(records: Iterator[train_engine.StepRecord], recipe: TrainRecipe, start_step: int,
                   is_main: bool) -> Iterator[train_engine.StepRecord]:
    """The step records, shown as a bar with the loss (on the main rank, at a terminal, not under CI):
    it appears before the first step, which may be a long one."""
    with tqdm(total=recipe.steps, initial=start_step, desc=f"train ({recipe.method})", unit="step",
              mininterval=0, disable=not (is_main and progress_enabled())) as bar:  # every step is drawn
        for record in records:
            bar.set_postfix(loss=f"{record.loss:.4f}", refresh=False)
            bar.update()
            yield record


def _check_trainable(backbone, objectives: dict[str, float], method: str) -> None:
    """Methods reach a model only through the training contract: refuse one that does not speak it."""
    if not isinstance(backbone, Trainable):
        raise ConfigError(f"backbone '{backbone.key}' cannot be post-trained here: it does not implement the "
                          "training contract (umm_harness.core.training.Trainable)")
    missing = sorted(set(objectives) - backbone.objectives)
    if missing:
        raise ConfigError(f"method '{method}': backbone '{backbone.key}' has no '{missing[0]}' loss "
                          f"(it has: {', '.join(sorted(backbone.objectives))})")


def _barrier() -> None:
    import deepspeed.comm as dist

    if dist.is_initialized():
        dist.barrier()


def _export(engine, method, base_dir: Path, recipe: TrainRecipe, base: export.BaseVersion, tracker: _Tracker,
            dataset_digest: str, step: int, *, final: bool, dist_info, ema: Ema | None = None,
            ) -> tuple[str | None, str | None, Any]:
    state = export.gather_state(engine.module.model, recipe.zero_stage, dist_info.is_main, ema)
    version = digest = exported = None
    if dist_info.is_main:
        exported = export.rebuild(method, state, base_dir, recipe, base)
        version, digest = export.register(exported, base=base, recipe=recipe, run_id=tracker.run_id,
                                          dataset_digest=dataset_digest, step=step, final=final)
        log.info("registered %s version %s (step %d)", base.name, version, step)
        if final:
            tracker.tags({"umm.model_name": base.name, "umm.model_version": version,
                          "umm.model_uri": f"models:/{base.name}/{version}"})
    _barrier()
    engine.module.train()
    return version, digest, exported


# -- tracking ------------------------------------------------------------------------------


class _Tracker:
    """MLflow on rank 0 (a no-op elsewhere): one active run, metrics buffered and sent in batches."""

    def __init__(self, recipe: TrainRecipe, base: export.BaseVersion, enabled: bool, resumed_run_id: str | None):
        self.recipe, self.base, self.enabled = recipe, base, enabled
        self.resumed_run_id = resumed_run_id
        self.run_id = ""
        self._buffer: list[Metric] = []
        self._since_flush = 0
        self._logged_until = 0  # steps a resumed run already holds (replayed, they repeat those values)

    def start(self, frame, dataset_digest: str, output_dir: Path, start_step: int) -> None:
        if not self.enabled:
            return
        self.run_id = self._open_run().info.run_id
        recipe = self.recipe
        existing = MlflowClient().get_run(self.run_id).data.params
        if start_step:
            history = MlflowClient().get_metric_history(self.run_id, "train/loss")
            self._logged_until = max((m.step for m in history), default=0)
        params = flatten(recipe.model_dump(mode="json"), "recipe.")
        params.update({"train.base_version": self.base.version, "train.dataset_size": str(len(frame)),
                       "train.dataset_digest": dataset_digest})
        params = {k: v for k, v in params.items() if k not in existing}  # a resumed run has them already
        log_batch(params=params, tags={
            "umm.stage": "train", "umm.method": recipe.method, "umm.base_model": self.base.uri,
            "umm.parent_version": self.base.version, "umm.model_name": self.base.name,
            "umm.dataset_digest": dataset_digest, "umm.seed": str(recipe.seed),
            "umm.git_commit": git_commit(), "umm.harness_version": umm_harness.__version__,
            "umm.checkpoint_dir": str(output_dir), "umm.resumed_from_step": str(start_step),
            **export.method_tags(recipe),
            "umm.env_manager": recipe.env_manager or "local", "umm.python_prefix": sys.prefix,
        })
        if not existing:
            mlflow.log_dict(recipe.model_dump(mode="json"), "recipe.yaml")
            name = f"{recipe.data.benchmark}-{recipe.data.split}"
            dataset = mlflow.data.from_pandas(frame, name=name, digest=dataset_digest[:16])
            mlflow.log_input(dataset, context="training")

    def _open_run(self):
        run_name = f"{self.base.name} v{self.base.version} · {self.recipe.method}"
        project_run = take_project_run()  # under `mlflow run`: the run it created for us
        if project_run:
            return start_top_level_run(run_name, run_id=project_run)
        if self.resumed_run_id:
            try:
                MlflowClient().get_run(self.resumed_run_id)
                return mlflow.start_run(run_id=self.resumed_run_id, nested=mlflow.active_run() is not None)
            except MlflowException:
                log.warning("the interrupted run %s is not in this store; starting a new run", self.resumed_run_id)
        return start_top_level_run(run_name, self.recipe.experiment)

    def tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            log_batch(tags=tags)

    def step(self, record: train_engine.StepRecord) -> None:
        if not self.enabled or record.step <= self._logged_until:
            return
        now = int(time.time() * 1000)
        self._buffer += [Metric(key, float(value), now, record.step) for key, value in record.metrics().items()]
        self._since_flush += 1
        if self._since_flush >= self.recipe.log_every:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._buffer:
            return
        client = MlflowClient()
        for start in range(0, len(self._buffer), 1000):  # MLflow's limit per log_batch
            client.log_batch(self.run_id, metrics=self._buffer[start:start + 1000])
        self._buffer, self._since_flush = [], 0

    def finish(self, status: str, result: TrainResult) -> None:
        if not self.enabled or not self.run_id:
            return
        try:
            self.flush()
            summary = {"train/final_loss": result.losses[-1]} if result.losses else {}
            summary.update({"train/steps_completed": result.steps, "train/seconds": result.train_seconds})
            now = int(time.time() * 1000)
            MlflowClient().log_batch(self.run_id, metrics=[Metric(k, float(v), now, result.steps)
                                                           for k, v in summary.items()])
        finally:
            mlflow.end_run(status)
