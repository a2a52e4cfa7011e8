"""The whole post-training loop in one command: evaluate the base, post-train, register the new
version, evaluate it exactly like the base, compare, and promote when the gate holds."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from umm_harness.compare import Comparison
from umm_harness.config import EvalRecipe, load_recipe
from umm_harness.evaluate import evaluate
from umm_harness.promote import Decision, Gate, PromoteRecipe, promote
from umm_harness.runs import run_path, start_top_level_run, take_project_run
from umm_harness.tracking import log_batch

log = logging.getLogger(__name__)


class LoopRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "tiny:janus-pro"  # the base, as `umm eval` takes it (registered on first eval)
    suite: str = "shapes"
    seed: int = 0
    limit: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, ge=1)
    train_recipe: Path = Path("projects/train_shapes_sft.yaml")
    gate: Gate = Field(default_factory=Gate)
    bootstrap: int = Field(default=1000, ge=100)


@dataclass
class LoopResult:
    base_version: str
    new_version: str
    comparison: Comparison
    decision: Decision
    seconds: dict[str, float] = field(default_factory=dict)


def run_loop(recipe: LoopRecipe) -> LoopResult:
    from training.recipe import TrainRecipe
    from training.run import train

    project_run = take_project_run()  # under `mlflow run`: it becomes the loop's summary run
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base = evaluate(EvalRecipe(model=recipe.model, suite=recipe.suite, seed=recipe.seed, limit=recipe.limit,
                               batch_size=recipe.batch_size))
    seconds["eval_base"] = time.perf_counter() - start

    start = time.perf_counter()
    train_recipe = load_recipe(recipe.train_recipe, {"model": f"models:/{base.model_name}/{base.model_version}"},
                               TrainRecipe)
    trained = train(train_recipe)
    seconds["train"] = time.perf_counter() - start
    log.info("trained %s version %s in %.0f s", trained.registered_name, trained.version, seconds["train"])

    start = time.perf_counter()
    new = evaluate(EvalRecipe(model=f"models:/{trained.registered_name}/{trained.version}", suite=recipe.suite,
                              seed=recipe.seed, limit=recipe.limit, batch_size=recipe.batch_size))
    seconds["eval_new"] = time.perf_counter() - start

    start = time.perf_counter()
    decision = promote(PromoteRecipe(model_name=trained.registered_name, candidate=str(trained.version),
                                     gate=recipe.gate, suite=recipe.suite,
                                     seed=recipe.seed, limit=recipe.limit, batch_size=recipe.batch_size,
                                     bootstrap=recipe.bootstrap))
    seconds["compare_promote"] = time.perf_counter() - start
    result = LoopResult(base.model_version, str(trained.version), decision.comparison, decision, seconds)
    _log_summary(result, trained.registered_name, {"base evaluation": base.run_id, "training": trained.run_id,
                                                   "new evaluation": new.run_id,
                                                   "comparison": decision.comparison.run_id}, project_run)
    return result


def _log_summary(result: LoopResult, model_name: str, steps: dict[str, str | None], project_run: str | None) -> None:
    """One run that tells the loop's story: its outcome, step times, and a link to each step's run."""
    client = MlflowClient()
    verdict = "promoted to champion" if result.decision.promoted else "not promoted"
    lines = [f"Version {result.new_version} (from version {result.base_version}): {verdict}.", "",
             *(f"- {reason}" for reason in result.decision.reasons), "", "Runs:", ""]
    for label, run_id in steps.items():
        if run_id:
            lines.append(f"- {label}: [{run_id}]({run_path(client.get_run(run_id))})")
    name = f"{model_name} loop: v{result.base_version} → v{result.new_version}"
    with start_top_level_run(name, run_id=project_run):
        log_batch(metrics={f"seconds/{step}": value for step, value in result.seconds.items()},
                  tags={"umm.stage": "loop", "umm.loop_model_name": model_name,
                        "umm.base_version": result.base_version, "umm.new_version": result.new_version,
                        "umm.promoted": str(result.decision.promoted).lower(),
                        "mlflow.note.content": "\n".join(lines)})
