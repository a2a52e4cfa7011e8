"""The MLflow UI as a researcher sees it, in Debian's headless Chromium (Playwright, no downloaded
browser): the experiment's runs in the model-training view, two eval runs side by side, a run's
generated images and its per-sample table, the registered model with its `champion` alias, the
versions' benchmark scores (on their logged models and in their descriptions), and the
comparison run's links to the runs it compared. Screenshots go to
`ci-artifacts/screenshots/` (kept by CI); every page is asserted on, not only photographed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import _forget_mlflow_state
from tests.ui_helpers import (
    browser_page,
    compare_values,
    mlflow_ui,
    open_page,
    require_chromium,
    screenshot,
    scroll_compare_metrics,
    wait_for_text,
)
from umm_harness.runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, MODEL_TRAINING_VIEW

pytestmark = pytest.mark.slow

LIMIT = 18
MODEL = "janus-pro-tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_janus_dir):
    """Two evaluations of two registered versions of the tiny Janus-Pro (v1: seed-0 weights, v2:
    seed-1 weights), v1 aliased `champion` and v2 `challenger`, in a SQLite store."""
    require_chromium()
    from model_flavors.janus import build_tiny
    from umm_harness.compare import CompareRecipe, compare
    from umm_harness.config import EvalRecipe
    from umm_harness.evaluate import evaluate
    from umm_harness.model_registry import logged_model_id
    from umm_harness.runs import where_to_look

    root = tmp_path_factory.mktemp("ui_store")
    home = root / "umm_home"
    shutil.copytree(tiny_janus_dir, home / "tiny" / "janus-pro")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UMM_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        _forget_mlflow_state()
        mlflow.set_tracking_uri(uri)
        first = evaluate(EvalRecipe(limit=LIMIT, threads=1, experiment="umm-eval"))
        variant = root / "janus-pro-variant"
        build_tiny(variant, seed=1)
        second = evaluate(EvalRecipe(model=str(variant), register_as=MODEL, limit=LIMIT, threads=1,
                                     experiment="umm-eval"))
        client = MlflowClient()
        assert (first.model_version, second.model_version) == ("1", "2")
        client.set_registered_model_alias(MODEL, "champion", "1")
        client.set_registered_model_alias(MODEL, "challenger", "2")
        comparison = compare(CompareRecipe(versions=["1", "2"], limit=LIMIT, bootstrap=100, experiment="umm-eval"))
        assert set(comparison.eval_runs.values()) == {first.run_id, second.run_id}  # reused, not rerun
        printed = where_to_look(first.run_id, MODEL, "1")
        experiment = client.get_experiment_by_name("umm-eval")
        children = {}
        for summary in (first, second):
            (child,) = client.search_runs([experiment.experiment_id],
                                          f"tags.mlflow.parentRunId = '{summary.run_id}'")
            children[summary.run_id] = child
        info = {
            "uri": uri, "root": root, "experiment_id": experiment.experiment_id,
            "parents": [first.run_id, second.run_id],
            "children": [children[first.run_id], children[second.run_id]],
            "comparison": comparison, "printed": printed,
            "model_ids": {v: logged_model_id(MODEL, v) for v in ("1", "2")},
            "scores": {v: {m.key: m.value for m in client.get_logged_model(logged_model_id(MODEL, v)).metrics}
                       for v in ("1", "2")},
        }
        _forget_mlflow_state()
    with mlflow_ui(uri, root) as url:
        info["url"] = url
        yield info


def test_experiment_page_lists_both_eval_runs(store):
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}/runs", "umm-eval")
        runs = page.get_by_text(f"{MODEL} × shapes", exact=True)
        runs.first.wait_for()
        page.wait_for_function("() => document.body.innerText.includes('matching runs')")
        assert runs.count() == 2
        text = page.inner_text("body")
        assert re.search(r"\b5 matching runs\b", text), text[-500:]  # 2 parents + 2 children + 1 comparison
        assert "v1" in text and "v2" in text  # the Models column: each run's registered version
        screenshot(page, "01_experiment_runs")


def test_compare_page_lines_up_the_metric_keys_of_two_eval_runs(store):
    a, b = store["children"]
    ids = json.dumps([a.info.run_id, b.info.run_id], separators=(",", ":"))
    with browser_page(height=1500) as page:
        open_page(page, f"{store['url']}/#/compare-runs?runs={ids}&experiments=[\"{store['experiment_id']}\"]",
                  "Run details")
        order = re.search(r"Run ID:\s+([0-9a-f]{32})\s+([0-9a-f]{32})", page.inner_text("body"))
        assert order, "the run ID row is missing"
        columns = [a if run_id == a.info.run_id else b for run_id in order.groups()]
        assert {c.info.run_id for c in columns} == {a.info.run_id, b.info.run_id}

        assert set(a.data.metrics) == set(b.data.metrics)  # the same keys on both sides
        keys = sorted(a.data.metrics)
        assert {"shapes/understanding_acc", "shapes/generation_overall", "shapes/num_samples"} <= set(keys)
        for key in keys:
            shown = compare_values(page, key)
            assert len(shown) == 2, (key, shown)
            for run, cell in zip(columns, shown):
                expected = run.data.metrics[key]
                shown_value = float(cell.replace(",", ""))
                assert shown_value == pytest.approx(expected, rel=1e-3, abs=1e-6), (key, cell, expected)
        # The two runs evaluated different weights: at least one number differs, side by side.
        assert any(a.data.metrics[k] != b.data.metrics[k] for k in keys)
        # The page scrolls inside its own container: fold the plots away and bring the metrics up.
        page.get_by_text("Visualizations", exact=True).first.click()
        page.get_by_text("Run details", exact=True).first.scroll_into_view_if_needed()
        scroll_compare_metrics(page, "top")
        screenshot(page, "02_compare_runs")
        scroll_compare_metrics(page, "end")
        page.locator('a[title="Plot chart"]', has_text="shapes/understanding_acc").first.wait_for()
        screenshot(page, "02b_compare_runs_more_metrics")


def _pixel_sums_in_browser(page) -> list[int]:
    return page.evaluate("""() => {
        const img = [...document.images].find(i => i.src.startsWith('blob:') && i.naturalWidth > 0);
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        const sums = [0, 0, 0];
        for (let i = 0; i < data.length; i += 4) { sums[0] += data[i]; sums[1] += data[i + 1]; sums[2] += data[i + 2]; }
        return [img.naturalWidth, img.naturalHeight, ...sums];
    }""")


def test_a_runs_generated_images_load(store):
    child = store["children"][0]
    local = Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="images/shapes",
                                                     tracking_uri=store["uri"]))
    files = sorted(p.name for p in local.iterdir())
    assert len(files) >= 10
    with browser_page() as page:
        base = f"{store['url']}/#/experiments/{store['experiment_id']}/runs/{child.info.run_id}/artifacts"
        for name in (files[0], files[len(files) // 2], files[-1]):
            page.goto("about:blank")  # a full load each time: a hash change alone keeps the old selection
            open_page(page, f"{base}/images/shapes/{name}", f"images/shapes/{name}")
            page.wait_for_function(
                "() => [...document.images].some(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
            width, height, *sums = _pixel_sums_in_browser(page)
            with Image.open(local / name) as png:
                pixels = np.asarray(png.convert("RGB"), dtype=np.int64)
            assert (width, height) == (pixels.shape[1], pixels.shape[0])
            # The pixels on screen are the artifact's pixels (not a placeholder or a broken image).
            assert sums == pytest.approx(pixels.sum(axis=(0, 1)).tolist(), rel=0.01)
            if name == files[0]:
                # All the generated images are listed in the artifact tree beside it.
                for other in files:
                    assert page.get_by_text(other, exact=True).count() >= 1, other
                screenshot(page, "03_run_images")


def test_a_runs_per_sample_table(store):
    child = store["children"][0]
    jsonl = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="samples/shapes.jsonl",
                                                tracking_uri=store["uri"])
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines()]
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}/runs/{child.info.run_id}"
                        "/artifacts/samples/shapes_table.json")
        table = page.get_by_role("table").first
        table.wait_for()
        headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
        assert {"sample_id", "category", "prompt", "score", "status"} <= set(headers), headers
        shown_rows = table.get_by_role("row")
        assert shown_rows.count() >= 1 + min(len(rows), 10)  # header + a page of samples
        text = table.inner_text()
        for row in rows[:5]:
            assert row["sample_id"] in text and row["prompt"] in text, row["sample_id"]
        screenshot(page, "04_sample_table")


def test_registered_model_page_shows_versions_and_the_champion_alias(store):
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/models/{MODEL}", "Version 1")
        wait_for_text(page, "Version 2")
        # (by the row's start: a description may mention another version)
        v1 = page.get_by_role("row", name=re.compile(r"^Version 1\b"))
        v2 = page.get_by_role("row", name=re.compile(r"^Version 2\b"))
        assert "champion" in v1.inner_text() and "challenger" not in v1.inner_text()
        assert "challenger" in v2.inner_text() and "champion" not in v2.inner_text()
        assert "umm.weights_digest" in page.inner_text("body")
        screenshot(page, "05_registered_model")


def test_the_printed_link_opens_the_experiment_in_the_model_training_view(store):
    assert MlflowClient(store["uri"]).get_experiment(store["experiment_id"]).tags[EXPERIMENT_KIND_TAG] == \
        MODEL_TRAINING_KIND
    # What `umm eval` / `make eval` prints: the `mlflow ui` command, then the run's address.
    (address,) = [line.split("open ", 1)[1] for line in store["printed"] if " then open " in line]
    run_id = store["parents"][0]
    assert address.endswith(f"#/experiments/{store['experiment_id']}/runs/{run_id}{MODEL_TRAINING_VIEW}")
    with browser_page() as page:
        open_page(page, store["url"] + "/" + address.split("/", 3)[3], f"{MODEL} × shapes")
        assert run_id in page.inner_text("body")
        # The experiment itself, through the same view: its runs table, the model-training side bar.
        page.goto("about:blank")
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}{MODEL_TRAINING_VIEW}")
        page.wait_for_url(re.compile(r".*/runs\?.*workflowType=machine_learning"))
        page.wait_for_function("() => document.body.innerText.includes('matching runs')")
        nav = page.inner_text("body")
        assert "Models" in nav and "Evaluation runs" not in nav and "Sessions" not in nav  # not the GenAI bar
        screenshot(page, "06_model_training_view")


def _as_shown(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest form: 0, 0.25, 0.4637...)."""
    return str(int(value)) if value == int(value) else repr(value)


def test_logged_models_show_each_versions_scores_side_by_side(store):
    v1, v2 = store["scores"]["1"], store["scores"]["2"]
    assert {"shapes/understanding_acc", "shapes/generation_overall"} <= set(v1) & set(v2)
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}/models{MODEL_TRAINING_VIEW}",
                  "shapes/understanding_acc")
        rows = page.get_by_role("row")
        for version, scores in (("1", v1), ("2", v2)):
            row = rows.filter(has_text=f"v{version}").first
            row.wait_for()
            assert "shapes" in row.inner_text()  # the benchmark is the metrics' dataset
            assert _as_shown(scores["shapes/understanding_acc"]) in row.inner_text(), row.inner_text()
        screenshot(page, "07_logged_models_scores")
        page.goto("about:blank")
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}/models/{store['model_ids']['2']}"
                        f"{MODEL_TRAINING_VIEW}", "shapes/understanding_acc")
        text = page.inner_text("body")
        for key in ("shapes/understanding_acc", "shapes/generation_overall"):
            assert key in text
        assert _as_shown(v2["shapes/understanding_acc"]) in text
        screenshot(page, "08_logged_model_metrics")


def test_a_version_page_says_its_lineage_scores_and_deltas(store):
    comparison = store["comparison"]
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/models/{MODEL}/versions/2", "Version 2")
        page.get_by_text("Against version 1 on shapes", exact=False).first.wait_for()
        text = page.inner_text("body")
        assert "Evaluated as registered from" in text
        assert f"eval run {store['parents'][1]}" in text and "shapes/understanding_acc" in text
        assert f"comparison run {comparison.run_id}" in text
        screenshot(page, "09_model_version_description")


def test_the_comparison_run_links_the_runs_it_compared(store):
    comparison = store["comparison"]
    with browser_page() as page:
        open_page(page, f"{store['url']}/#/experiments/{store['experiment_id']}/runs/{comparison.run_id}"
                        f"{MODEL_TRAINING_VIEW}", "Evaluation runs compared:")
        more = page.get_by_text("Show more", exact=True)
        if more.count():
            more.first.click()
        for run_id in comparison.eval_runs.values():
            link = page.get_by_role("link", name=f"eval run {run_id}")
            assert link.get_attribute("href").endswith(f"/runs/{run_id}"), link.get_attribute("href")
        screenshot(page, "10_comparison_links")
        first = store["parents"][0]
        link = page.get_by_role("link", name=f"eval run {first}")
        assert link.get_attribute("target") == "_blank", link.evaluate("a => a.outerHTML")  # descriptions open a tab
        with page.context.expect_page() as opened:
            link.click()
        run_page = opened.value
        run_page.wait_for_function(f"() => location.hash.includes('/runs/{first}')")
        run_page.get_by_role("heading", name=f"{MODEL} × shapes").first.wait_for()
        assert first in run_page.inner_text("body")
