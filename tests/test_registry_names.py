"""Registered-model names as users type them: found again whatever they hold, refused before
any run when the registry (or a `models:/` URI, or a search filter) could not take them."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from umm_harness.cli import main
from umm_harness.compare import find_eval_run
from umm_harness.config import EvalRecipe
from umm_harness.core.errors import ConfigError
from umm_harness.evaluate import evaluate
from umm_harness.promote import history
from umm_harness.search_filters import quoted


@pytest.mark.parametrize("name", ["o'brien's janus", 'the "best" janus'])
def test_the_same_weights_under_a_name_with_a_quote_are_one_version_and_are_found(workspace, name, caplog):
    first = evaluate(EvalRecipe(limit=1, register_as=name))
    second = evaluate(EvalRecipe(limit=1, register_as=name))
    assert first.model_version == second.model_version == "1"
    assert [str(mv.version) for mv in MlflowClient().search_model_versions(f"name = {quoted(name)}")] == ["1"]
    assert find_eval_run(name, "1", "shapes", 0, 1) == second.run_id
    assert history(name) == []
    assert "Cannot retrieve experiment" not in caplog.text  # no promotion yet is not worth a warning


def test_a_value_with_both_quote_characters_cannot_be_searched_and_says_so():
    with pytest.raises(ConfigError, match="both"):
        quoted("it's \"x\"")


@pytest.mark.parametrize("name", ["team/janus", "janus@v2", "it's \"x\"", "two\nlines"])
def test_a_name_the_registry_would_refuse_is_one_line_before_any_run(workspace, capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--limit", "1", "--register-as", name])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("umm: error: registered model name ") and "\n" not in error, error
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []
