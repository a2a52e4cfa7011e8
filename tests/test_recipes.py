"""Every recipe shipped in projects/ validates against the model of the command that reads it."""

from pathlib import Path

import pytest

from tests.conftest import REPO
from tasks.registry import check_task_options, suite_benchmarks
from umm_harness.compare import CompareRecipe
from umm_harness.config import EvalRecipe, load_recipe
from umm_harness.loop import LoopRecipe
from umm_harness.promote import PromoteRecipe

KINDS = {"eval": EvalRecipe, "compare": CompareRecipe, "promote": PromoteRecipe, "loop": LoopRecipe}


def _kind(path: Path):
    prefix = path.stem.split("_", 1)[0]
    if prefix == "train":
        from training.recipe import TrainRecipe

        return TrainRecipe
    return KINDS[prefix]


@pytest.mark.parametrize("path", sorted((REPO / "projects").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipe_is_valid(path):
    recipe = load_recipe(path, {}, _kind(path))
    if isinstance(recipe, EvalRecipe):
        benchmarks = suite_benchmarks(recipe.suite)
        for name, options in recipe.task_options.items():
            assert name in benchmarks, f"task_options for '{name}', which the suite does not run"
            check_task_options(name, options)


def test_a_judge_block_is_validated_with_the_recipe(tmp_path):
    from umm_harness.core.errors import ConfigError

    recipe = tmp_path / "eval_bad_judge.yaml"
    recipe.write_text("suite: mm_vet\njudge:\n  backend: telepathy\n")
    with pytest.raises(ConfigError, match="field 'judge.backend'"):
        load_recipe(recipe, {})
