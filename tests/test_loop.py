"""The post-training loop with real versions: a trained challenger is promoted, a worse one is
refused with nothing changed, and the champion's history reads back."""

import pytest
from mlflow import MlflowClient

from umm_harness.cli import main
from umm_harness.loop import LoopRecipe, run_loop
from umm_harness.promote import Gate, PromoteRecipe, Requirement, history, promote
from tests.conftest import REPO

pytestmark = pytest.mark.slow

LIMIT = 120  # round-robin over the shapes categories: 48 understanding questions


def test_a_better_version_is_promoted_and_a_worse_one_refused(workspace, tmp_path, capsys):
    train_recipe = tmp_path / "train.yaml"
    train_recipe.write_text((REPO / "projects" / "train_shapes_sft.yaml").read_text().replace("steps: 600", "steps: 250")
                            .replace("checkpoint_every: 100", "checkpoint_every: 0"))
    gate = Gate(require=[Requirement.parse("shapes/understanding_acc >= champion + 0.02")], max_regression=0.01)
    result = run_loop(LoopRecipe(limit=LIMIT, train_recipe=train_recipe, gate=gate, bootstrap=300))

    client = MlflowClient()
    assert (result.base_version, result.new_version) == ("1", "2")
    assert result.decision.promoted, result.decision.reasons
    assert client.get_model_version_by_alias("janus-pro-tiny", "champion").version == 2
    gain = result.comparison.delta("shapes/understanding_acc", "2")
    assert gain.delta >= 0.15 and gain.low > 0.02
    # One run tells the loop's story, linking every step's run, in the experiment of the others.
    (story,) = client.search_runs(["0"], "tags.`umm.stage` = 'loop'")
    assert story.data.tags["umm.promoted"] == "true" and story.data.tags["umm.new_version"] == "2"
    assert f"/runs/{result.comparison.run_id})" in story.data.tags["mlflow.note.content"]
    for run_id in result.comparison.eval_runs.values():
        assert f"/runs/{run_id})" in story.data.tags["mlflow.note.content"]

    # Version 1 as the candidate against champion 2: refused, nothing changes.
    worse = promote(PromoteRecipe(candidate="1", gate=gate, limit=LIMIT, bootstrap=300))
    assert not worse.promoted and any(line.startswith("FAIL") for line in worse.reasons)
    assert client.get_model_version_by_alias("janus-pro-tiny", "champion").version == 2
    with pytest.raises(SystemExit) as exited:
        main(["promote", "--candidate", "1", "--limit", str(LIMIT)])
    assert exited.value.code == 1 and "refused" in capsys.readouterr().err

    (entry,) = history("janus-pro-tiny")
    assert (entry["champion"], entry["previous_champion"], entry["compared_against"]) == ("2", None, "1")
    assert client.get_run(entry["promotion_run"]).data.tags["umm.champion"] == "2"  # a real run
    capsys.readouterr()
    main(["promote", "--history"])
    (line,) = capsys.readouterr().out.splitlines()
    assert f"(no champion) -> v2  promotion run {entry['promotion_run']}, comparison run " in line
    assert entry["comparison_run"] in line and "None" not in line and "?" not in line
    assert client.get_model_version("janus-pro-tiny", "2").tags["umm.promoted_over"] == "None"
