"""`umm promote`: move the `champion` alias only when the evaluation says so.

A gate is a list of requirements on deltas against the current champion (e.g.
`shapes/understanding_acc >= champion + 0.02`, judged on the lower bound of the paired
bootstrap interval) plus a bound on how much any metric may regress. Metrics are taken as
higher-is-better. A refused promotion changes nothing; an accepted one moves the alias, tags
the version and appends a line to the promotion log (one MLflow run per promotion in
experiment `umm-promotions`, each carrying the whole history so far as `promotion_log.jsonl`).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from umm_harness.compare import CompareRecipe, Comparison, compare
from umm_harness.core.errors import ConfigError
from umm_harness.runs import start_top_level_run
from umm_harness.search_filters import quoted
from umm_harness.tracking import log_batch

CHAMPION = "champion"
PROMOTIONS_EXPERIMENT = "umm-promotions"
_EXPRESSION = re.compile(r"^\s*(?P<metric>[\w./-]+)\s*>=\s*champion\s*(?:(?P<sign>[+-])\s*(?P<margin>[\d.]+))?\s*$")


class Requirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    min_delta: float = 0.0  # candidate − champion must be at least this
    judged_on: Literal["lower", "point"] = "lower"

    @classmethod
    def parse(cls, expression: str) -> Requirement:
        """`<metric> >= champion + <margin>` (the form the CLI and recipes accept as a string)."""
        match = _EXPRESSION.match(expression)
        if not match:
            raise ConfigError(f"gate '{expression}': expected '<metric> >= champion + <margin>'")
        margin = float(match["margin"] or 0.0)
        return cls(metric=match["metric"], min_delta=-margin if match["sign"] == "-" else margin)


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require: list[Requirement] = Field(
        default_factory=lambda: [Requirement(metric="shapes/understanding_acc", min_delta=0.02)]
    )
    max_regression: float | None = Field(default=0.01, ge=0)  # no metric worse by more than this
    regression_judged_on: Literal["lower", "point"] = "point"


class PromoteRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = "janus-pro-tiny"
    candidate: str = "challenger"  # a version number or an alias
    baseline: str | None = None  # default: the champion, else the candidate's parent version
    gate: Gate = Field(default_factory=Gate)
    suite: str = "shapes"
    seed: int = 0
    limit: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, ge=1)
    bootstrap: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)


@dataclass
class Decision:
    promoted: bool
    candidate: str
    champion: str  # the version compared against
    reasons: list[str]  # one line per requirement, "ok" or why not
    comparison: Comparison


def _version(client: MlflowClient, name: str, ref: str) -> str:
    try:
        if ref.isdigit():
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException:
        hint = "" if ref.isdigit() else "; post-train it first (`umm train` or `mlflow run . -e train` sets 'challenger')"
        raise ConfigError(f"registered model '{name}' has no version or alias '{ref}'{hint}") from None


def _baseline(client: MlflowClient, recipe: PromoteRecipe, candidate: str) -> str:
    if recipe.baseline:
        return _version(client, recipe.model_name, recipe.baseline)
    try:
        return str(client.get_model_version_by_alias(recipe.model_name, CHAMPION).version)
    except MlflowException:
        parent = client.get_model_version(recipe.model_name, candidate).tags.get("umm.parent_version")
        if parent:
            return parent
    raise ConfigError(f"'{recipe.model_name}' has no champion and version {candidate} no parent; pass --baseline")


def _judge(gate: Gate, comparison: Comparison, candidate: str) -> list[tuple[bool, str]]:
    deltas = {d.metric: d for d in comparison.deltas if d.version == candidate}
    verdicts = []
    for req in gate.require:
        d = deltas[req.metric]
        stat = d.low if req.judged_on == "lower" else d.delta
        verdicts.append((stat >= req.min_delta,
                         f"{req.metric}: delta {d.delta:+.4f} (CI [{d.low:+.4f}, {d.high:+.4f}]), "
                         f"{req.judged_on} {stat:+.4f} must be >= {req.min_delta:+.4f}"))
    if gate.max_regression is not None:
        worst = min(deltas.values(), key=lambda d: d.low if gate.regression_judged_on == "lower" else d.delta)
        stat = worst.low if gate.regression_judged_on == "lower" else worst.delta
        verdicts.append((stat >= -gate.max_regression,
                         f"largest regression: {worst.metric} {gate.regression_judged_on} {stat:+.4f} "
                         f"must be >= {-gate.max_regression:+.4f}"))
    return verdicts


def promote(recipe: PromoteRecipe) -> Decision:
    client = MlflowClient()
    try:
        client.get_registered_model(recipe.model_name)
    except MlflowException:
        raise ConfigError(f"registered model '{recipe.model_name}' does not exist; evaluate a model first "
                          "(`umm eval` or `mlflow run . -e eval`), then post-train it") from None
    candidate = _version(client, recipe.model_name, recipe.candidate)
    baseline = _baseline(client, recipe, candidate)
    if baseline == candidate:
        raise ConfigError(f"version {candidate} is already the version it would be compared against")
    comparison = compare(CompareRecipe(model_name=recipe.model_name, versions=[baseline, candidate],
                                       baseline=baseline, suite=recipe.suite, seed=recipe.seed, limit=recipe.limit,
                                       batch_size=recipe.batch_size, bootstrap=recipe.bootstrap,
                                       confidence=recipe.confidence))
    known = {d.metric for d in comparison.deltas}
    for req in recipe.gate.require:
        if req.metric not in known:
            raise ConfigError(f"gate metric '{req.metric}' is not in the eval runs; they have: {', '.join(sorted(known))}")
    verdicts = _judge(recipe.gate, comparison, candidate)
    decision = Decision(all(ok for ok, _ in verdicts), candidate, baseline,
                        [("ok   " if ok else "FAIL ") + text for ok, text in verdicts], comparison)
    if decision.promoted:
        _record(client, recipe, decision)
    return decision


def history(model_name: str) -> list[dict]:
    """Every promotion of `model_name`, oldest first; a name that is not registered is a `ConfigError`."""
    try:
        MlflowClient().get_registered_model(model_name)
    except MlflowException:
        raise ConfigError(f"registered model '{model_name}' does not exist") from None
    experiment = MlflowClient().get_experiment_by_name(PROMOTIONS_EXPERIMENT)
    if experiment is None:  # nothing promoted yet anywhere (searching by name would warn on the console)
        return []
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list",
                              filter_string=f"tags.`umm.model_name` = {quoted(model_name)}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="promotion_log.jsonl",
                                                   dst_path=tmp)
        return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _record(client: MlflowClient, recipe: PromoteRecipe, decision: Decision) -> None:
    try:
        previous = str(client.get_model_version_by_alias(recipe.model_name, CHAMPION).version)
    except MlflowException:
        previous = None
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_name": recipe.model_name,
             "champion": decision.candidate, "previous_champion": previous, "compared_against": decision.champion,
             "gate": recipe.gate.model_dump(), "reasons": decision.reasons,
             "comparison_run": decision.comparison.run_id}
    earlier = history(recipe.model_name)
    with start_top_level_run(f"{recipe.model_name}: v{previous} -> v{decision.candidate}", PROMOTIONS_EXPERIMENT) as run:
        entry["promotion_run"] = run.info.run_id  # before it is written: the log names every promotion's run
        log_batch(tags={"umm.model_name": recipe.model_name, "umm.champion": decision.candidate,
                        "umm.previous_champion": str(previous)})
        mlflow.log_text("".join(json.dumps(line) + "\n" for line in [*earlier, entry]), "promotion_log.jsonl")
    client.set_registered_model_alias(recipe.model_name, CHAMPION, decision.candidate)
    client.set_model_version_tag(recipe.model_name, decision.candidate, "umm.promoted_at", entry["time"])
    client.set_model_version_tag(recipe.model_name, decision.candidate, "umm.promoted_over", str(previous))
    client.set_model_version_tag(recipe.model_name, decision.candidate, "umm.promotion_run", entry["promotion_run"])
