"""A catalogue of bad input, by class:

1. malformed recipes (hypothesis: unknown keys, wrong types, out-of-range values, broken YAML)
   and bad flags → exit 2 and exactly one stderr line naming the field, nothing run;
2. corrupt and truncated images and dataset files → the sample is recorded as failed with its
   reason and the run goes on (a file that cannot be read at all is a one-line error instead);
3. huge and malformed `mlflow models serve` payloads → 4xx, the server keeps serving, its
   memory stays bounded;
4. unknown tasks and benchmarks;
5. unicode and path-like sample ids → artifact file names sanitised, nothing written outside
   the run's artifact folder and the cache.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import hypothesis.configuration
import mlflow
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from PIL import Image

from tasks import registry as task_registry
from tasks.base import Sample, Task
from tasks.judges.base import JudgeConfig
from tasks.shapes import ShapesTask
from tests.serving import registered_and_served
from umm_harness.cache import safe_name
from umm_harness.cli import main
from umm_harness.config import EvalRecipe
from umm_harness.evaluate import evaluate
from umm_harness.core.requests import InferenceParams

# Hypothesis keeps caches in ./.hypothesis by default: keep them out of the working tree.
hypothesis.configuration.set_hypothesis_home_dir(Path(os.environ.get("TMPDIR", "/tmp")) / "umm-hypothesis")
FUZZ = settings(max_examples=int(os.environ.get("UMM_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- 1. recipes and flags -----------------------------------------------------------------------

# Text that fits on one line: no character that str.splitlines() breaks on, no NUL.
_BREAKS = set("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00")
one_line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(_BREAKS)),
                        min_size=1, max_size=30)
letters = st.text(st.characters(whitelist_categories=("Lu", "Ll")), min_size=1, max_size=12)
not_int = st.one_of(letters, st.lists(st.integers(), max_size=3), st.dictionaries(letters, st.integers(), max_size=2),
                    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)))
not_str = st.one_of(st.lists(letters, max_size=3), st.dictionaries(letters, letters, max_size=2), st.integers(),
                    st.booleans())
not_mapping = st.one_of(st.integers(), letters, st.lists(st.integers(), max_size=3))

# (dotted field, strategy of invalid values) — every value is invalid for that field alone.
INVALID_FIELDS: list[tuple[str, st.SearchStrategy]] = [
    ("limit", st.one_of(not_int, st.integers(max_value=-1))),
    ("seed", not_int),
    ("threads", st.one_of(not_int, st.integers(max_value=0))),
    ("batch_size", st.one_of(st.integers(max_value=0), letters.filter(lambda s: s != "auto"),
                             st.lists(st.integers(), max_size=2))),
    ("model", st.one_of(not_str, st.text(" \t", min_size=0, max_size=3))),
    ("suite", st.one_of(not_str, st.text(" \t", min_size=0, max_size=3))),
    ("experiment", not_str),
    ("device", not_str),
    ("dtype", st.one_of(one_line_text.filter(lambda s: s not in ("float32", "bfloat16", "float16")), not_str)),
    ("stage", st.one_of(one_line_text.filter(lambda s: s not in ("all", "generate", "score")), not_str)),
    ("data_dir", st.one_of(one_line_text.map(lambda s: f"/no/such/dir/{s}"), st.lists(letters, max_size=2))),
    ("params", not_mapping),
    ("params.seed", not_int),
    ("params.guidance_scale", st.one_of(st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False), letters)),
    ("params.steps", st.one_of(st.integers(max_value=0), not_int)),
    ("params.max_new_tokens", st.one_of(st.integers(max_value=0), not_int)),
    ("params.temperature", st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False)),
    ("params.image_size", st.integers(max_value=7)),
    ("judge", not_mapping),
    ("judge.backend", one_line_text.filter(lambda s: s not in ("openai", "transformers", "vllm"))),
    ("judge.timeout_s", st.floats(max_value=0, allow_nan=False, allow_infinity=False)),
    ("judge.max_tokens", st.integers(max_value=0)),
    ("task_options", not_mapping),
]
EVAL_FIELDS = set(EvalRecipe.model_fields)
BASE = {"model": "tiny:janus-pro", "suite": "shapes", "limit": 2}


def _set(recipe: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    recipe = json.loads(json.dumps(recipe))
    head, _, rest = dotted.partition(".")
    if rest:
        recipe.setdefault(head, {})[rest] = value
    else:
        recipe[head] = value
    return recipe


def _run(capsys, *args: str) -> tuple[int, list[str]]:
    """The CLI's own `main` in this process: (exit code, the stderr lines that are not DeepSpeed's)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "real_accelerator" not in line]
    return exited.value.code, lines


def _assert_one_line(code: int, lines: list[str], *fragments: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("umm: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _nothing_ran(workspace: Path) -> None:
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    assert runs == [], [r.info.run_name for r in runs]
    assert not (workspace / "umm_home" / "cache").exists()


@st.composite
def invalid_eval_recipes(draw) -> tuple[dict[str, Any], str]:
    field, values = draw(st.sampled_from(INVALID_FIELDS))
    return _set(BASE, field, draw(values)), field


@FUZZ
@given(case=invalid_eval_recipes())
def test_an_eval_recipe_with_one_bad_field_is_one_line_naming_it(workspace, capsys, case):
    recipe, field = case
    path = workspace / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    code, lines = _run(capsys, "eval", "--recipe", str(path))
    _assert_one_line(code, lines, str(path), f"field '{field}")
    _nothing_ran(workspace)


KNOWN_AT = {"": EVAL_FIELDS, "params.": set(InferenceParams.model_fields), "judge.": set(JudgeConfig.model_fields)}


@FUZZ
@given(key=one_line_text.filter(lambda k: k.strip()), where=st.sampled_from(sorted(KNOWN_AT)),
       value=st.one_of(st.integers(), letters, st.none()))
def test_unknown_recipe_keys_are_named(workspace, capsys, key, where, value):
    assume(key not in KNOWN_AT[where])
    recipe = _set(BASE, where + key, value) if where else {**BASE, key: value}
    path = workspace / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    code, lines = _run(capsys, "eval", "--recipe", str(path))
    _assert_one_line(code, lines, f"field '{where}{key}': unknown field")
    _nothing_ran(workspace)


def _would_run(text: str) -> bool:
    """YAML that is a (possibly empty) mapping of known fields only: a valid recipe, so skip it."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return loaded is None or (isinstance(loaded, dict) and all(isinstance(k, str) and k in EVAL_FIELDS
                                                               for k in loaded))


@FUZZ
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["[1, 2", "{a: [", "- a\n- b", "model: [unclosed", ": :", "\t- x", "&a [*a]",
                                       "!!python/object:os.system ls", "a: !!binary ZZZ"])))
def test_any_broken_recipe_file_is_one_line(workspace, capsys, text):
    if _would_run(text):
        return
    path = workspace / "recipe.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    code, lines = _run(capsys, "eval", "--recipe", str(path))
    _assert_one_line(code, lines, str(path))
    _nothing_ran(workspace)


_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "fragment"), [
    # a billion values from a 700-byte file, inside a free-form mapping
    ("backbone_options:\n  " + _LAUGHS.replace("\n", "\n  ") + "all: *i\n", "more than 10000 values"),
    ("task_options:\n  shapes:\n" + "".join(f"    option_{i}: {i}\n" for i in range(600)),
     "field 'task_options': the recipe flattens to 6"),
    ("backbone_options:\n  " + "k" * 300 + ": 1\n", "MLflow param names hold at most 250"),
    ("backbone_options: " + "[" * 30 + "]" * 30 + "\n", "nested deeper than 20 levels"),
    ("model: tiny:janus-pro\n" + "# padding\n" * 120_000, "a recipe holds at most 1000000"),
])
def test_free_form_recipe_mappings_are_bounded_and_checked_before_any_run(workspace, capsys, text, fragment):
    path = workspace / "recipe.yaml"
    path.write_text(text)
    code, lines = _run(capsys, "eval", "--recipe", str(path))
    _assert_one_line(code, lines, fragment)
    _nothing_ran(workspace)


INT_FLAGS = ["--limit", "--seed", "--threads", "--max-new-tokens"]


@FUZZ
@given(flag=st.sampled_from(INT_FLAGS + ["--guidance-scale"]),
       value=one_line_text.filter(lambda s: not s.lstrip().startswith("-") and not _is_number(s)))
def test_a_non_numeric_flag_value_is_one_line_naming_the_flag(workspace, capsys, flag, value):
    code, lines = _run(capsys, "eval", flag, value)
    _assert_one_line(code, lines, flag)
    _nothing_ran(workspace)


@FUZZ
@given(flag_field=st.sampled_from([("--limit", "limit"), ("--threads", "threads"), ("--batch-size", "batch_size"),
                                   ("--max-new-tokens", "params.max_new_tokens")]),
       value=st.integers(max_value=-1))
def test_an_out_of_range_flag_is_one_line_naming_the_field(workspace, capsys, flag_field, value):
    flag, field = flag_field
    if flag != "--limit":
        value = min(value + 1, 0)  # 0 is already out of range for these
    code, lines = _run(capsys, "eval", flag, str(value))
    _assert_one_line(code, lines, field)
    _nothing_ran(workspace)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@FUZZ
@given(command=st.sampled_from(["compare", "promote"]),
       mutation=st.one_of(
           st.tuples(one_line_text.filter(lambda k: k.strip() and k not in
                                          {"model_name", "versions", "baseline", "suite", "seed", "limit", "batch_size",
                                           "data_dir", "bootstrap", "confidence", "experiment", "candidate", "gate"}),
                     st.integers()).map(lambda kv: (kv[0], kv[1], "unknown field")),
           st.integers(max_value=99).map(lambda v: ("bootstrap", v, "bootstrap")),
           st.floats(max_value=0.5, allow_nan=False, allow_infinity=False)
           .map(lambda v: ("confidence", v, "confidence")),
           st.integers(max_value=-1).map(lambda v: ("limit", v, "limit"))))
def test_compare_and_promote_recipes_name_the_bad_field(workspace, capsys, command, mutation):
    key, value, fragment = mutation
    path = workspace / "recipe.yaml"
    path.write_text(yaml.safe_dump({key: value}, allow_unicode=True))
    code, lines = _run(capsys, command, "--recipe", str(path))
    _assert_one_line(code, lines, f"field '{key}'", fragment)


@FUZZ
@given(mutation=st.one_of(
    st.integers(max_value=0).map(lambda v: ("steps", v)),
    st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(lambda v: ("lr", v)),
    st.integers(min_value=4, max_value=99).map(lambda v: ("zero_stage", v)),
    st.integers(max_value=-1).map(lambda v: ("zero_stage", v)),
    one_line_text.filter(lambda s: s not in ("sft", "lora", "reca")).map(lambda v: ("method", v)),
    one_line_text.filter(lambda s: not s.startswith("models:/")).map(lambda v: ("model", v)),
    st.integers().map(lambda v: ("no_such_option", v))))
def test_train_recipes_name_the_bad_field(mutation):
    pytest.importorskip("deepspeed")
    from training.recipe import train_recipe
    from umm_harness.core.errors import ConfigError

    key, value = mutation
    with pytest.raises(ConfigError) as error:
        train_recipe(**{key: value})
    message = str(error.value)
    assert len(message.splitlines()) == 1 and f"field '{key}'" in message, message


@pytest.mark.parametrize("args", [
    ["eval", "--data-dir", "no\nsuch dir"],
    ["eval", "--model", "x\ny"],
    ["eval", "--recipe", "RECIPE"],
])
def test_line_breaks_in_names_still_give_one_line(workspace, capsys, args):
    (workspace / "recipe.yaml").write_text(yaml.safe_dump({"bad\nkey": 1}))
    args = [str(workspace / "recipe.yaml") if a == "RECIPE" else a for a in args]
    code, lines = _run(capsys, *args)
    _assert_one_line(code, lines)


# -- 2. corrupt images and dataset files --------------------------------------------------------


def _png(size=(32, 32), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _bad_image_inputs(folder: Path) -> dict[str, Any]:
    """One unusable image of each kind, as a task might hand it over (bytes, base64, path)."""
    png = _png()
    corrupt_middle = bytearray(_png((64, 64), "blue"))
    corrupt_middle[60:120] = os.urandom(60)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.png").write_text("not an image")
    return {
        "truncated_bytes": png[: len(png) // 2],
        "empty_bytes": b"",
        "header_only": png[:8],
        "garbage_base64": base64.b64encode(os.urandom(200)).decode(),
        "not_base64": "data:image/png;base64,@@@@",
        "corrupt_idat": bytes(corrupt_middle),
        "bomb": _decompression_bomb(),
    }


def _decompression_bomb() -> bytes:
    """A small PNG that claims more pixels than PIL's limit (PIL refuses it)."""
    buf = io.BytesIO()
    Image.new("1", (14000, 14000)).save(buf, format="PNG")  # a few KB compressed, 196 Mpx
    return buf.getvalue()


class ShapesWithBadImages(Task):
    """The shapes suite; the first understanding samples get one unusable image each."""

    name = "shapes_bad_images"

    def __init__(self, data_dir=None):
        super().__init__(data_dir)
        self.inner = ShapesTask()
        self.bad = _bad_image_inputs(Path(data_dir))  # the recipe's data_dir: a scratch folder

    def samples(self) -> list[Sample]:
        samples = self.inner.samples()
        understanding = [s for s in samples if s.request.task == "understanding"]
        generation = [s for s in samples if s.request.task == "generation"]
        bad = [Sample.build(id=f"{sample.id}-{kind}", category=sample.category, references=sample.references,
                            task="understanding", prompt=sample.request.prompt, images=[image])
               for (kind, image), sample in zip(self.bad.items(), understanding)]
        return bad + understanding[len(bad): len(bad) + 3] + generation[:2]

    def score(self, sample, outputs):
        return self.inner.score(sample, outputs)

    def aggregate(self, samples, records):
        return self.inner.aggregate(samples, records)


def test_corrupt_and_truncated_images_fail_their_sample_and_the_run_goes_on(workspace, monkeypatch):
    monkeypatch.setitem(task_registry.TASKS, "shapes_bad_images", "tests.test_bad_inputs:ShapesWithBadImages")
    kinds = _bad_image_inputs(workspace)
    summary = evaluate(EvalRecipe(suite="shapes_bad_images", threads=1, batch_size=8, data_dir=workspace))
    result = summary.results["shapes_bad_images"]
    bad_ids = {s.id for s in result.samples if any(s.id.endswith(f"-{kind}") for kind in kinds)}
    assert len(bad_ids) == len(kinds)
    assert set(result.failed) == bad_ids
    for sample_id, reason in result.failed.items():
        assert reason.startswith("images[0]: "), reason
    assert len(result.records) == len(result.samples) - len(bad_ids)  # every other sample scored
    (child,) = MlflowClient().search_runs(
        [MlflowClient().get_run(summary.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{summary.run_id}'")
    assert child.data.metrics["shapes_bad_images/failed_samples"] == len(bad_ids)
    rows = [json.loads(line) for line in Path(mlflow.artifacts.download_artifacts(
        run_id=child.info.run_id, artifact_path="samples/shapes_bad_images.jsonl")).read_text().splitlines()]
    failed_rows = {r["sample_id"]: r for r in rows if r["status"] == "failed"}
    assert set(failed_rows) == bad_ids and all(r["reason"] == result.failed[i] for i, r in failed_rows.items())


@pytest.mark.parametrize("kind", ["truncated.png", "text.png"])
def test_an_unreadable_image_file_fails_only_its_sample(workspace, kind):
    _bad_image_inputs(workspace)
    sample = Sample.build(id="x", category="c", task="understanding", prompt="What is it?",
                          images=[str(workspace / kind)])
    assert sample.request is None and sample.error.startswith("images[0]: ")


def test_a_corrupt_row_in_a_dataset_fails_that_sample_only(workspace):
    from tests.fixtures_hub import write_mme

    rows = write_mme(workspace / "data")  # its last row's image bytes are not an image
    summary = evaluate(EvalRecipe(suite="mme", data_dir=workspace / "data", threads=1))
    result = summary.results["mme"]
    assert len(result.samples) == len(rows) and len(result.failed) == 1
    (reason,) = result.failed.values()
    assert "images[0]" in reason and "not a readable image" in reason
    assert len(result.records) == len(rows) - 1


def test_a_tampered_published_benchmark_file_is_one_line_naming_it(workspace, capsys):
    source = Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval"
    if not source.is_dir():
        pytest.skip(f"{source} (the published GenEval prompt files) is not there")
    import shutil

    copy = workspace / "geneval"
    shutil.copytree(source, copy)
    metadata = copy / "prompts" / "evaluation_metadata.jsonl"
    metadata.write_bytes(metadata.read_bytes()[:5000])  # a download cut short
    code, lines = _run(capsys, "eval", "--suite", "geneval", "--data-dir", str(copy), "--limit", "2")
    # The file is checked when the benchmark first reads it, after the model is loaded and
    # registered, so MLflow's own "registered model" lines come before the error line.
    errors = [line for line in lines if line.startswith("umm: error: ")]
    _assert_one_line(code, errors, str(metadata), "is not the published", "git blob")
    assert lines[-1] == errors[0]


def test_a_truncated_dataset_shard_is_one_line_naming_it(workspace, capsys):
    from tests.fixtures_hub import write_mme

    write_mme(workspace / "data")
    (shard,) = (workspace / "data").rglob("*.parquet")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, lines = _run(capsys, "eval", "--suite", "mme", "--data-dir", str(workspace / "data"))
    _assert_one_line(code, lines, str(shard))


# -- 4. unknown tasks ---------------------------------------------------------------------------


@FUZZ
@given(name=st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="_-"), min_size=1,
                    max_size=20).filter(lambda s: s not in task_registry.TASKS and s not in task_registry.SUITES))
def test_an_unknown_benchmark_or_suite_is_one_line(workspace, capsys, name):
    code, lines = _run(capsys, "eval", "--suite", name)
    _assert_one_line(code, lines, "unknown suite")
    _nothing_ran(workspace)


def test_an_unsupported_task_kind_is_one_line(workspace, capsys):
    Image.new("RGB", (8, 8)).save(workspace / "a.png")
    code, lines = _run(capsys, "infer", "--task", "editing", "--prompt", "bluer", "--image", str(workspace / "a.png"))
    _assert_one_line(code, lines, "cannot do 'editing'")
    code, lines = _run(capsys, "infer", "--task", "teleport", "--prompt", "x")
    _assert_one_line(code, lines, "--task")


# -- 5. unicode and path-like sample ids --------------------------------------------------------

NASTY_IDS = [
    "../../etc/passwd", "a/b", "a_b", "/abs/path", "..", ".", "C:\\windows\\win.ini", "🦄 emoji id",
    "ünïcödé-名前", "x" * 300, "with\nnewline", "nul\x00byte", "$(rm -rf ~)", "..\\..\\up", " spaced ",
]


class ShapesWithNastyIds(Task):
    """The first shapes samples (understanding and generation) renamed to hostile ids."""

    name = "shapes_nasty_ids"

    def __init__(self, data_dir=None):
        super().__init__(data_dir)
        self.inner = ShapesTask()

    def samples(self) -> list[Sample]:
        samples = self.inner.samples()
        understanding = [s for s in samples if s.request.task == "understanding"]
        generation = [s for s in samples if s.request.task == "generation"]
        picked = [x for pair in zip(understanding, generation) for x in pair][: len(NASTY_IDS)]
        return [s.model_copy(update={"id": nasty}) for s, nasty in zip(picked, NASTY_IDS)]

    def score(self, sample, outputs):
        return self.inner.score(sample, outputs)

    def aggregate(self, samples, records):
        return self.inner.aggregate(samples, records)


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_path_like_and_unicode_sample_ids_cannot_escape_the_artifact_folder(workspace, monkeypatch):
    monkeypatch.setitem(task_registry.TASKS, "shapes_nasty_ids", "tests.test_bad_inputs:ShapesWithNastyIds")
    outside = workspace.parent
    before_outside = {p for p in outside.iterdir()}
    before = _all_files(workspace)
    passwd = Path("/etc/passwd").stat().st_mtime_ns if Path("/etc/passwd").exists() else None

    summary = evaluate(EvalRecipe(suite="shapes_nasty_ids", threads=1, batch_size=4))
    result = summary.results["shapes_nasty_ids"]
    assert {s.id for s in result.samples} == set(NASTY_IDS) and not result.failed

    client = MlflowClient()
    (child,) = client.search_runs([client.get_run(summary.run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary.run_id}'")
    artifact_root = Path(child.info.artifact_uri.removeprefix("file://")).resolve()
    parent_root = Path(client.get_run(summary.run_id).info.artifact_uri.removeprefix("file://")).resolve()
    models_root = (workspace / "mlruns" / child.info.experiment_id / "models").resolve()  # the logged model
    cache_root = (workspace / "umm_home" / "cache").resolve()
    # Every new file is the store (and its first-use lock), the child's or the parent's artifacts, the
    # logged model or the cache.
    allowed = [artifact_root, parent_root, models_root, cache_root]
    store = {(workspace / "mlflow.db").resolve(), (workspace / "mlflow.db.lock").resolve()}
    for path in _all_files(workspace) - before:
        resolved = path.resolve()
        assert resolved in store or any(
            resolved.is_relative_to(root) for root in allowed), path
    assert {p for p in outside.iterdir()} == before_outside  # nothing next to the workspace
    if passwd is not None:
        assert Path("/etc/passwd").stat().st_mtime_ns == passwd

    images = sorted(p.name for p in (artifact_root / "images" / "shapes_nasty_ids").iterdir())
    generation_ids = [s.id for s in result.samples if s.request.task == "generation"]
    expected = sorted(f"{safe_name(i)}_{k}.png" for i in generation_ids for k in range(2))
    assert images == expected
    for name in images:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.isascii()
        assert len(name) < 120
    assert len(set(safe_name(i) for i in NASTY_IDS)) == len(NASTY_IDS)  # no two ids share a file
    # The records keep the ids exactly as the benchmark gave them.
    jsonl = artifact_root / "samples" / "shapes_nasty_ids.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rows) == sorted(NASTY_IDS)


@FUZZ
@given(sample_id=st.text(max_size=200))
def test_safe_name_is_a_plain_file_name_for_any_id(sample_id):
    name = safe_name(sample_id)
    assert name and len(name) <= 80 + 9
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert name.isascii() and name.isprintable()


# -- 3. serve payloads ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_janus):
    """`mlflow models serve` of the tiny Janus-Pro on 127.0.0.1 (its own store)."""
    with registered_and_served(tiny_janus, "janus-pro-tiny", tmp_path_factory.mktemp("serve_bad")) as served:
        yield served


def _rss_mb(process: subprocess.Popen) -> float:
    import psutil

    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _good(url: str):
    import requests

    response = requests.post(f"{url}/invocations", timeout=120, json={
        "dataframe_records": [{"task": "generation", "prompt": "a photo of a red circle", "images": []}],
        "params": {"seed": 3}})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["images"][0]


SCENE = base64.b64encode(_png((64, 64), "red")).decode()
JSON = {"Content-Type": "application/json"}
BAD_PAYLOADS: list[tuple[str, bytes | str, dict[str, str], int | None, str | None]] = [
    # (what, body, headers, expected status or None for any 4xx, a fragment the message must hold)
    ("not json", b"this is not json", JSON, 400, None),
    ("truncated json", b'{"dataframe_records": [{"task": "gen', JSON, 400, None),
    ("empty body", b"", JSON, 400, None),
    ("wrong content type", json.dumps({"dataframe_records": []}), {"Content-Type": "text/plain"}, 415, None),
    ("a json array", b"[1, 2, 3]", JSON, 400, None),
    ("records not a list", json.dumps({"dataframe_records": "x"}), JSON, 400, None),
    ("unknown top-level key", json.dumps({"rows": [{"task": "generation"}]}), JSON, 400, None),
    ("unknown task", json.dumps({"dataframe_records": [{"task": "teleport", "prompt": "x", "images": []}]}), JSON,
     400, "task"),
    ("unsupported task", json.dumps({"dataframe_records": [{"task": "editing", "prompt": "bluer",
                                                            "images": [SCENE]}]}), JSON, 400, "editing"),
    ("missing task column", json.dumps({"dataframe_records": [{"prompt": "x", "images": []}]}), JSON, 400, None),
    ("images not a list", json.dumps({"dataframe_records": [{"task": "understanding", "prompt": "q",
                                                             "images": SCENE}]}), JSON, None, None),
    ("images hold numbers", json.dumps({"dataframe_records": [{"task": "understanding", "prompt": "q",
                                                               "images": [1, 2]}]}), JSON, None, None),
    ("image not base64", json.dumps({"dataframe_records": [{"task": "understanding", "prompt": "q",
                                                            "images": ["not*base64"]}]}), JSON, 400, "images[0]"),
    ("image is a server path", json.dumps({"dataframe_records": [{"task": "understanding", "prompt": "q",
                                                                  "images": ["/etc/passwd"]}]}), JSON, 400, None),
    ("empty generation prompt", json.dumps({"dataframe_records": [{"task": "generation", "prompt": "",
                                                                   "images": []}]}), JSON, 400, "prompt"),
    ("bad param type", json.dumps({"dataframe_records": [{"task": "generation", "prompt": "x", "images": []}],
                                   "params": {"seed": "abc"}}), JSON, 400, None),
    ("negative guidance", json.dumps({"dataframe_records": [{"task": "generation", "prompt": "x", "images": []}],
                                      "params": {"guidance_scale": -1.0}}), JSON, 400, "guidance_scale"),
    ("one bad row among 5000", json.dumps({"dataframe_records": [{"task": "generation", "prompt": f"p{i}",
                                                                  "images": []} for i in range(4999)]
                                           + [{"task": "teleport", "prompt": "x", "images": []}]}), JSON, 400,
     "row 4999"),
]


def test_malformed_serve_payloads_are_4xx_and_the_server_keeps_serving(served):
    import requests

    url, process = served
    reference = _good(url)
    for what, body, headers, status, fragment in BAD_PAYLOADS:
        response = requests.post(f"{url}/invocations", data=body, headers=headers, timeout=120)
        if status is None:
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
        else:
            assert response.status_code == status, (what, response.status_code, response.text[:300])
        if fragment:
            assert fragment in response.json()["message"], (what, response.json()["message"][:300])
        assert process.poll() is None, f"the server died on: {what}"
    assert _good(url) == reference  # still serving, the same answer


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_BODIES = {
    # MLflow's scoring server parses the body with `json.loads` outside its error handling: past
    # Python's recursion limit that is a RecursionError, answered 500 by MLflow 3.17 itself; the
    # flavor's loader turns it into a 400 (`model_flavors.flavor`).
    "records 50,000 deep": '{"dataframe_records": ' + _nested(50_000) + "}",
    "instances 5,000 deep": '{"instances": ' + _nested(5_000) + "}",
    "a prompt 2,000 deep": '{"inputs": [{"task": "generation", "prompt": ' + _nested(2_000) + ', "images": []}]}',
    # below the limit the body parses, and the row is refused by name
    "images 900 deep": '{"dataframe_records": [{"task": "understanding", "prompt": "q", "images": '
                       + _nested(900) + "}]}",
    "row params 900 deep": '{"inputs": [{"task": "generation", "prompt": "x", "images": [], "params": '
                           + _nested(900) + "}]}",
    "params 900 deep": '{"dataframe_records": [{"task": "generation", "prompt": "x", "images": []}], "params": '
                       '{"seed": ' + _nested(900) + "}}",
}


@pytest.mark.parametrize("what", DEEP_BODIES)
def test_a_deeply_nested_json_body_is_a_4xx_and_the_server_survives(served, what):
    import requests

    url, process = served
    response = requests.post(f"{url}/invocations", data=DEEP_BODIES[what].encode(), headers=JSON, timeout=120)
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
    assert process.poll() is None and _good(url)


def test_a_20mb_payload_is_refused_and_memory_stays_bounded(served):
    import requests

    url, process = served
    _good(url)
    baseline = _rss_mb(process)
    huge_image = base64.b64encode(os.urandom(15 * 2**20)).decode()  # 20 MB of base64, not an image
    huge_text = "a" * (20 * 2**20)
    payloads = [
        ("20 MB image", {"dataframe_records": [{"task": "understanding", "prompt": "q", "images": [huge_image]}]}),
        ("20 MB of junk in an unknown key", {"dataframe_records": [{"task": "teleport", "prompt": "x", "images": []}],
                                             "junk": huge_text}),
        ("20 MB prompt with a bad param", {"dataframe_records": [{"task": "generation", "prompt": huge_text,
                                                                  "images": []}], "params": {"steps": 0}}),
    ]
    peaks = []
    for what, payload in payloads:
        for _ in range(3):  # repeated: a leak would grow with every request
            body = json.dumps(payload)
            assert len(body) >= 20 * 10**6
            response = requests.post(f"{url}/invocations", data=body, headers=JSON, timeout=300)
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
            assert process.poll() is None, f"the server died on: {what}"
            peaks.append(_rss_mb(process))
    _good(url)
    after = _rss_mb(process)
    print(f"serve RSS: {baseline:.0f} MB before, {after:.0f} MB after 9 requests of 20 MB "
          f"(per request: {', '.join(f'{p:.0f}' for p in peaks)})")
    # A 20 MB body costs a few copies while it is parsed; nothing may pile up request after request.
    assert after - baseline < 400
    assert peaks[-1] - peaks[2] < 150
