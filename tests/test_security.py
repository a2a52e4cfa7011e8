"""Security defaults:

- no backbone, scorer or judge asks transformers/diffusers for remote code (`trust_remote_code`)
  unless a recipe names it: checked in the source (AST) and by recording every `from_pretrained`
  while the tiny backbones load;
- weights come from safetensors: a checkpoint folder holding only a pickle (`pytorch_model.bin`)
  is refused with a clear message;
- the `mlflow models serve` / `mlflow ui` / `mlflow server` examples in README.md and the Makefile
  bind 127.0.0.1, and a served model never reads a file path it is sent;
- API keys and tokens read from the environment (UMM_JUDGE_API_KEY, OPENAI_API_KEY, HF_TOKEN)
  never reach the tracking store: an evaluation with a judge that needs the key is run, and every
  param, tag, metric name and artifact of it, and the store's raw files, are searched for them.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.conftest import REPO

SOURCE_DIRS = ["model_flavors", "tasks", "training", "umm_harness"]


def _python_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts)


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _callee(node: ast.Call) -> str:
    return ast.unparse(node.func)


# -- trust_remote_code ----------------------------------------------------------------------------


def test_no_source_passes_trust_remote_code_except_from_an_option_of_that_name():
    offenders = []
    for path in _python_files():
        text = path.read_text()
        for node in _calls(path):
            for keyword in node.keywords:
                if keyword.arg == "trust_remote_code":
                    value = keyword.value
                    # Allowed: False, or passed through from a recipe/option that is itself named so.
                    if (isinstance(value, ast.Constant) and value.value is False) or \
                            "trust_remote_code" in ast.unparse(value):
                        continue
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:120]}")
                if keyword.arg is None and isinstance(keyword.value, ast.Dict):  # f(**{"trust_remote_code": True})
                    for key in keyword.value.keys:
                        if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                            offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
        for match in re.finditer(r"[\"']trust_remote_code[\"']\s*[:\]]\s*(?:=\s*)?True", text):
            offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert offenders == []


@pytest.fixture
def recorded_loads(monkeypatch):
    """Every `from_pretrained` call of transformers' models, processors, tokenizers and configs, and
    of diffusers' pipelines and models, with its keyword arguments."""
    import transformers
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

    calls: list[tuple[str, dict]] = []
    targets = [PreTrainedModel, ProcessorMixin, PreTrainedTokenizerBase, PretrainedConfig,
               transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoProcessor,
               transformers.AutoModel, transformers.AutoModelForCausalLM]
    try:
        import diffusers

        targets += [diffusers.DiffusionPipeline, diffusers.ModelMixin]
    except ImportError:
        pass
    for cls in targets:
        original = cls.__dict__.get("from_pretrained")
        if original is None:
            continue
        function = original.__func__

        def recording(klass, *args, __function=function, **kwargs):
            calls.append((f"{klass.__name__}.from_pretrained", dict(kwargs)))
            return __function(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    return calls


def test_loading_every_tiny_backbone_never_asks_for_remote_code(tmp_path, recorded_loads, monkeypatch):
    from model_flavors.registry import TINY_BUILDERS, backbone_class, infer_backbone, tiny_builder

    upstream = REPO.parent / "shared" / "upstream"  # the checkouts the upstream-code backbones run on
    for variable, folder in (("UMM_BAGEL_REPO", "bagel"), ("UMM_OMNIGEN2_REPO", "omnigen2"),
                             ("UMM_MMADA_REPO", "mmada"), ("UMM_SHOW_O_REPO", "show-o")):
        monkeypatch.setenv(variable, str(upstream / folder))
    loaded = []
    for name in TINY_BUILDERS:
        folder = tmp_path / name
        try:
            tiny_builder(name)(folder, seed=0)
        except ImportError as exc:  # an optional model library that is not installed
            print(f"skipped tiny '{name}': {exc}")
            continue
        backbone_class(infer_backbone(str(folder))).load(str(folder), device="cpu")
        loaded.append(name)
    assert "janus-pro" in loaded
    assert recorded_loads, "no from_pretrained call was seen"
    asked = [(name, kwargs) for name, kwargs in recorded_loads if kwargs.get("trust_remote_code")]
    assert asked == []
    print(f"{len(recorded_loads)} from_pretrained calls while loading {loaded}: none with trust_remote_code")


def test_the_tiny_judge_loads_without_remote_code(tmp_path, recorded_loads):
    from tasks.judges.tiny import build_tiny_judge
    from tasks.judges.transformers_backend import TransformersJudge

    TransformersJudge(str(build_tiny_judge(tmp_path / "judge", seed=0)))
    assert recorded_loads and not [c for c in recorded_loads if c[1].get("trust_remote_code")]


# -- safetensors, not pickle ----------------------------------------------------------------------


@pytest.fixture
def pickle_only_janus(tiny_janus_dir, tmp_path) -> Path:
    """The tiny Janus-Pro with its weights as a pickle (`pytorch_model.bin`) and no safetensors."""
    from safetensors.torch import load_file

    folder = tmp_path / "janus-pickle"
    shutil.copytree(tiny_janus_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_janus_refuses_a_pickle_only_checkpoint(pickle_only_janus, monkeypatch):
    from model_flavors.janus import JanusPro

    loaded_pickles = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded_pickles.append(a) or real_load(*a, **k))
    with pytest.raises(Exception, match="safetensors"):
        JanusPro.load(str(pickle_only_janus))
    assert loaded_pickles == []  # the pickle was never opened


def test_a_pickle_only_checkpoint_is_a_one_line_error_naming_safetensors(workspace, pickle_only_janus, capsys):
    from umm_harness.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", str(pickle_only_janus), "--limit", "2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umm: error: ")]
    assert exited.value.code == 2 and len(lines) == 1
    assert "safetensors" in lines[0] and "pytorch_model.bin" in lines[0]


def test_the_diffusers_backbone_refuses_pickle_weights(tmp_path):
    pytest.importorskip("diffusers")
    from model_flavors.diffusers_backbone import DiffusersBackbone, build_tiny

    tiny = build_tiny(tmp_path / "sd", seed=0)
    folder = tmp_path / "sd-pickle"
    tiny.pipeline.save_pretrained(folder, safe_serialization=False)
    assert list(folder.rglob("*.bin")), "the fixture should hold pickle weights"
    with pytest.raises(Exception, match="safetensors"):
        DiffusersBackbone.load(str(folder))


# Model classes (not tokenizers, processors or configs) loaded with from_pretrained must say
# use_safetensors=True, or `not allow_pickle` (pickles only when a recipe asks for them by name).
_NOT_MODELS = re.compile(r"(Tokenizer|Processor|Config|Scheduler)\b")


def _unsafe_model_loads() -> list[str]:
    found = []
    for path in _python_files():
        for node in _calls(path):
            callee = _callee(node)
            if not callee.endswith(".from_pretrained") or _NOT_MODELS.search(callee):
                continue
            owner = callee.removesuffix(".from_pretrained")
            if owner in ("cls", "GenEvalDetector") or owner.endswith("Detector"):
                continue  # our own classmethods, not a weights load
            keywords = {k.arg: k.value for k in node.keywords}
            safe = keywords.get("use_safetensors")
            if isinstance(safe, ast.Constant) and safe.value is True:
                continue
            if (isinstance(safe, ast.UnaryOp) and isinstance(safe.op, ast.Not)
                    and isinstance(safe.operand, ast.Name) and safe.operand.id == "allow_pickle"):
                continue
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {callee}")
    return found


def test_the_backbones_that_load_transformers_models_ask_for_safetensors():
    unsafe = [line for line in _unsafe_model_loads() if line.startswith(("model_flavors/janus", "model_flavors/emu3"))]
    assert unsafe == []


def test_every_model_load_asks_for_safetensors():
    assert _unsafe_model_loads() == []


# -- serving and examples bind 127.0.0.1 -------------------------------------------------------------


def _commands(text: str) -> list[str]:
    """`mlflow ui|server|models serve` command lines (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines()
            if re.search(r"\bmlflow(\s+models)?\s+(ui|server|serve)\b", line) and "#" not in line.split("mlflow")[0]]


@pytest.mark.parametrize("document", ["README.md", "Makefile", "MLproject"])
def test_documented_mlflow_servers_bind_127_0_0_1(document):
    path = REPO / document
    if not path.exists():
        pytest.skip(f"{document} is not in the repository")
    for command in _commands(path.read_text()):
        host = re.search(r"--host[ =](\S+)", command)
        assert "0.0.0.0" not in command and "::" not in command.split("--host")[-1][:8], command
        # `mlflow ui` / `mlflow server` / `models serve` default to 127.0.0.1; an explicit host must be it too.
        if host:
            assert host.group(1).strip("'\"") in ("127.0.0.1", "localhost"), command
        if re.search(r"models\s+serve", command):
            assert host and host.group(1) == "127.0.0.1", f"{document}: serve examples need --host 127.0.0.1: {command}"


def test_the_tracking_server_script_binds_127_0_0_1():
    source = (REPO / "umm_harness" / "tracking_server.py").read_text()
    assert '"--host", "127.0.0.1"' in source and "listen_addresses=127.0.0.1" in source
    assert "0.0.0.0" not in source


def test_a_served_model_never_reads_a_server_side_path(tiny_janus, tmp_path):
    from PIL import Image

    from model_flavors.flavor import UmmPyfuncModel

    secret_image = tmp_path / "private.png"
    Image.new("RGB", (64, 64), "red").save(secret_image)
    frame = pd.DataFrame([{"task": "understanding", "prompt": "Describe it.", "images": [str(secret_image)]}])
    with pytest.raises(MlflowException, match="images"):
        UmmPyfuncModel(tiny_janus).predict(frame)


# -- secrets never reach the tracking store ----------------------------------------------------------

SECRETS = {
    "UMM_JUDGE_API_KEY": "sk-umm-judge-SECRET-7f3a9c",
    "OPENAI_API_KEY": "sk-openai-SECRET-51d0e2",
    "HF_TOKEN": "hf_SECRET_token_c4b8e1",
    "HUGGING_FACE_HUB_TOKEN": "hf_SECRET_hubtoken_90aa",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-SECRET-pw-31",
}


@pytest.fixture(scope="module")
def served_judge(tmp_path_factory):
    """The tiny judge behind the local OpenAI-compatible server, which demands the judge key."""
    from tasks.judges.server import running
    from tasks.judges.tiny import build_tiny_judge

    folder = build_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0)
    with running(folder, tmp_path_factory.mktemp("judge_server") / "server.log", name="tiny-judge",
                 api_key=SECRETS["UMM_JUDGE_API_KEY"]) as url:
        yield url


def _all_text_of_run(client: MlflowClient, run_id: str, into: Path) -> str:
    run = client.get_run(run_id)
    parts = [json.dumps(run.data.params), json.dumps(run.data.tags), " ".join(run.data.metrics),
             run.info.run_name or ""]
    for inp in run.inputs.dataset_inputs if run.inputs else []:
        parts.append(str(inp))
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(into / run_id)))
    for file in local.rglob("*"):
        if file.is_file():
            parts.append(file.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_api_keys_and_tokens_from_the_environment_are_never_logged(workspace, served_judge, monkeypatch):
    from tests.test_mm_vet import write_mmvet
    from umm_harness.config import EvalRecipe
    from umm_harness.evaluate import evaluate

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    write_mmvet(workspace / "data")
    recipe = EvalRecipe(suite="shapes,mm_vet", limit=4, threads=1, data_dir=workspace / "data",
                        judge={"backend": "openai", "base_url": served_judge, "model": "tiny-judge"})
    summary = evaluate(recipe)
    assert "mm_vet/overall" in summary.metrics  # the judge was reached, so the key was used

    client = MlflowClient()
    parent = client.get_run(summary.run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.run_id}'")
    assert len(children) == 2
    texts = [_all_text_of_run(client, run.info.run_id, workspace / "downloads")
             for run in [parent, *children]]
    for mv in client.search_model_versions("name = 'janus-pro-tiny'"):
        full = client.get_model_version(mv.name, mv.version)
        texts.append(json.dumps(full.tags) + (full.description or "") + full.source)
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{mv.name}/{mv.version}",
                                                         dst_path=str(workspace / "downloads" / "model")))
        texts += [f.read_bytes().decode("utf-8", "replace") for f in local.rglob("*") if f.is_file()]
    for experiment in client.search_experiments():
        texts.append(json.dumps(experiment.tags))
    everything = "\n".join(texts)
    assert "recipe.judge.base_url" in everything  # the judge config itself is logged ...
    for name, secret in SECRETS.items():
        assert secret not in everything, f"{name} leaked into the run"  # ... its key never

    # And not anywhere in the store's files (database, artifacts), nor in the harness's caches.
    for root in [workspace / "mlflow.db", workspace / "mlruns", workspace / "umm_home"]:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            data = file.read_bytes()
            for name, secret in SECRETS.items():
                assert secret.encode() not in data, f"{name} found in {file}"
