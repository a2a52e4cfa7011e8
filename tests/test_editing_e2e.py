"""The editing suite end to end through `umm eval`: the tiny InstructPix2Pix pipeline edits the fixture
rows of GEdit-Bench (hub parquet schema) and ImgEdit-Bench (published layout), and a tiny chat VLM
behind a real `python -m tasks.judges.server` process judges them through the `openai` backend.

Both stages at once, then `--stage generate` and `--stage score` on that run: the score stage never
loads the model and gives the same numbers. The tiny judge's replies are random text, so every GEdit
reply takes the official fallback (a seeded 0–10 guess, counted) and every ImgEdit reply is dropped
(counted); the arithmetic itself is specified in test_editing_scoring.py. A backbone that cannot
edit (the tiny Janus-Pro) has every sample skipped, with the reason recorded.
"""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient

from tasks.judges.server import running
from tasks.judges.tiny import build_tiny_vision_judge
from tests.fixtures_editing import use_imgedit_stand_ins, write_gedit, write_imgedit
from tests.test_generation_e2e import _children, _run_id, umm_eval
from umm_harness.tracking import official

pytestmark = pytest.mark.slow

JUDGE_NAME = "tiny-vlm"


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    with running(build_tiny_vision_judge(folder / "vlm"), folder / "server.log", name=JUDGE_NAME) as url:
        yield url


def _recipe(workspace, judge_url, monkeypatch, **extra):
    data = workspace / "data"
    write_gedit(data)
    write_imgedit(data)
    use_imgedit_stand_ins(monkeypatch, data)
    recipe = {"model": "tiny:diffusers-ip2p", "suite": "editing", "seed": 7, "data_dir": str(data),
              "params": {"steps": 2},
              "judge": {"backend": "openai", "base_url": judge_url, "model": JUDGE_NAME, "max_tokens": 24},
              "task_options": {"gedit": {"input_area": 64 * 64}}, **extra}
    path = workspace / "eval_editing.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _metrics(run) -> dict[str, float]:
    return official({k.split("/", 1)[1]: v for k, v in run.data.metrics.items()})


def test_editing_suite_end_to_end_both_stages_and_score_only(workspace, judge_url, monkeypatch):
    recipe = _recipe(workspace, judge_url, monkeypatch)
    client = MlflowClient()

    together = _run_id(umm_eval("--recipe", str(recipe)))
    children = {run.data.tags["umm.benchmark"]: run for run in _children(client, together)["all"]}
    assert set(children) == {"gedit", "imgedit"}
    gedit, imgedit = _metrics(children["gedit"]), _metrics(children["imgedit"])
    # Every GEdit reply is unparsable: both parts of all four samples are guessed, and scored.
    assert gedit["judge_unparsable_sc"] == gedit["judge_unparsable_pq"] == 4 and gedit["missing_edits"] == 0
    assert {"en/full/color_alter/o", "cn/full/color_alter/o", "en/intersection/color_alter/o",
            "en/full/subject-remove/sc", "en/full/groups"} <= gedit.keys()
    assert "en/intersection/subject-remove/o" not in gedit  # that row is not in the intersection
    assert "en/o" not in gedit  # three of eleven groups: no headline, as the official NaN
    assert imgedit == {"judge_unparsable": 4.0, "missing_edits": 0.0}
    for name, run in children.items():
        assert run.data.tags["umm.scorer"].startswith(f"openai:{JUDGE_NAME}#max_tokens=24")
        listed = [a.path for a in client.list_artifacts(run.info.run_id, f"images/{name}")]
        edits = [p for p in listed if not p.endswith("_source.png")]
        assert len(edits) == 4 and sorted(p.replace(".png", "_source.png") for p in edits) == sorted(set(listed) - set(edits))
        samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert f"samples/{name}_edits.json" in samples
        table = json.loads(open(client.download_artifacts(run.info.run_id, f"samples/{name}_edits.json")).read())
        assert {"source", "edit", "instruction", "score"} <= set(table["columns"])
        assert all(cell["type"] == "image" for row in table["data"] for cell in row[-2:])

    generated = _run_id(umm_eval("--recipe", str(recipe), "--stage", "generate"))
    with monkeypatch.context() as patch:
        patch.setattr("umm_harness.evaluate.resolve_model", lambda *a, **k: pytest.fail("scoring loaded the model"))
        umm_eval("--recipe", str(recipe), "--stage", "score", "--from-run", generated)
    scored = {run.data.tags["umm.benchmark"]: run for run in _children(client, generated)["score"]}
    assert _metrics(scored["gedit"]) == pytest.approx(gedit) and _metrics(scored["imgedit"]) == imgedit


def test_a_backbone_that_cannot_edit_is_skipped_with_its_reason(workspace, judge_url, monkeypatch):
    recipe = _recipe(workspace, judge_url, monkeypatch, model="tiny:janus-pro", suite="imgedit", params={})
    run_id = _run_id(umm_eval("--recipe", str(recipe), "--stage", "generate"))
    client = MlflowClient()
    [child] = _children(client, run_id)["generate"]
    assert child.data.metrics["imgedit/skipped_samples"] == 4
    assert child.data.tags["umm.skipped"] == "backbone 'janus_pro' cannot do editing"
    rows = [json.loads(line) for line in open(client.download_artifacts(child.info.run_id, "samples/imgedit.jsonl"))]
    assert {(row["status"], row["reason"]) for row in rows} == {("skipped", "backbone 'janus_pro' cannot do editing")}


def test_the_editing_suite_on_a_tiny_upstream_editing_model(workspace, judge_url, monkeypatch):
    """BAGEL on its authors' code (tiny random weights, the ../shared/upstream snapshot) edits both
    benchmarks' fixture rows; generate and score as separate stages equal the one-go run."""
    import torch

    from tests.conftest import REPO

    torch.set_num_threads(1)
    monkeypatch.setenv("UMM_BAGEL_REPO", str(REPO.parent / "shared" / "upstream" / "bagel"))
    recipe = _recipe(workspace, judge_url, monkeypatch, model="tiny:bagel")
    client = MlflowClient()
    together = _run_id(umm_eval("--recipe", str(recipe)))
    children = {run.data.tags["umm.benchmark"]: run for run in _children(client, together)["all"]}
    assert set(children) == {"gedit", "imgedit"}
    for name, run in children.items():
        assert run.data.tags["umm.backbone"] == "bagel"
        assert run.data.metrics[f"{name}/missing_edits"] == 0
        edits = [a.path for a in client.list_artifacts(run.info.run_id, f"images/{name}")
                 if not a.path.endswith("_source.png")]
        assert len(edits) == 4

    generated = _run_id(umm_eval("--recipe", str(recipe), "--stage", "generate"))
    with monkeypatch.context() as patch:
        patch.setattr("umm_harness.evaluate.resolve_model", lambda *a, **k: pytest.fail("scoring loaded the model"))
        umm_eval("--recipe", str(recipe), "--stage", "score", "--from-run", generated)
    scored = {run.data.tags["umm.benchmark"]: run for run in _children(client, generated)["score"]}
    for name in ("gedit", "imgedit"):
        assert _metrics(scored[name]) == pytest.approx(_metrics(children[name]))
