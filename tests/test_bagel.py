"""BAGEL: request translation, both routes' call arguments, seeding, and every error path.

The real upstream code runs in tests/test_bagel_upstream.py (a tiny random-weight BAGEL). Here
the error paths and call arguments are exercised against stand-ins:
- route (a), the upstream checkout: a *stand-in checkout* (the module layout and the
  `InterleaveInferencer.interleave_inference` signature of ByteDance-Seed/Bagel at the pinned
  commit, no model code) for the import and commit checks, and a recording stand-in inferencer
  for the calls;
- route (b), vllm-omni: a *stand-in server* (a real HTTP process on 127.0.0.1, not vllm-omni)
  speaking the documented `/v1/models` and `/v1/chat/completions` API.
"""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from model_flavors import bagel as bagel_module
from model_flavors.bagel import (
    ANY_COMMIT_ENV,
    REPO_ENV,
    UPSTREAM_COMMIT,
    Bagel,
    UpstreamEngine,
    VllmOmniEngine,
    checkout_commit,
    import_upstream,
    resolve_checkout,
    translate,
)
from model_flavors.vllm_omni import VllmOmniClient, VllmOmniError
from umm_harness.core.backbone import ModelInfo, UnsupportedTask
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest

INFO = ModelInfo(backbone="bagel", source="ByteDance-Seed/BAGEL-7B-MoT", dtype="bfloat16")


def _image(color: str = "red", size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def _generation(prompt: str = "a red circle", **params) -> InferenceRequest:
    return InferenceRequest(task="generation", prompt=prompt, params=params)


def _editing(prompt: str = "make it blue", **params) -> InferenceRequest:
    return InferenceRequest(task="editing", prompt=prompt, images=[_image()], params=params)


def _question(prompt: str = "What colour is it?", images: int = 1, **params) -> InferenceRequest:
    return InferenceRequest(task="understanding", prompt=prompt, images=[_image()] * images, params=params)


# -- the stand-in inferencer (route a) ----------------------------------------------------------

class RecordingInferencer:
    """Answers like InterleaveInferencer.interleave_inference, drawing its "noise" from the global RNG."""

    def __init__(self):
        self.calls = []

    def interleave_inference(self, input_lists, **kwargs):
        self.calls.append((input_lists, kwargs))
        noise = int(torch.randint(0, 256, (1,)).item())
        if kwargs["understanding_output"]:
            return [f"answer {noise}"]
        height, width = kwargs.get("image_shapes") or input_lists[0].size[::-1]
        outputs = ["<think>a plan</think>"] if kwargs["think"] else []
        return outputs + [Image.new("RGB", (width, height), (noise, 0, 0))]


@pytest.fixture
def upstream():
    inferencer = RecordingInferencer()
    return Bagel(UpstreamEngine(inferencer, "/checkout", UPSTREAM_COMMIT, "/weights"), INFO), inferencer


# -- translation ----------------------------------------------------------------------------------

def test_generation_defaults_follow_the_model_card(upstream):
    model, inferencer = upstream
    result = model.generate([_generation(seed=7)])[0]
    inputs, kwargs = inferencer.calls[-1]
    assert inputs == ["a red circle"]
    assert kwargs == {
        "think": False, "understanding_output": False, "do_sample": False, "cfg_text_scale": 4.0, "cfg_img_scale": 1.0,
        "cfg_interval": [0.4, 1.0], "timestep_shift": 3.0, "num_timesteps": 50, "cfg_renorm_min": 0.0,
        "cfg_renorm_type": "global", "image_shapes": (1024, 1024),
    }
    assert result.images[0].size == (1024, 1024) and result.text is None
    p = result.params
    assert (p.seed, p.guidance_scale, p.image_guidance_scale, p.steps, p.image_size) == (7, 4.0, 1.0, 50, 1024)
    assert p.max_new_tokens is None and p.temperature is None  # no thinking, no text sampling


def test_editing_defaults_and_overrides(upstream):
    model, inferencer = upstream
    result = model.edit([_editing(seed=3, guidance_scale=5.5, steps=20)])[0]
    inputs, kwargs = inferencer.calls[-1]
    assert isinstance(inputs[0], Image.Image) and inputs[1] == "make it blue"
    assert (kwargs["cfg_text_scale"], kwargs["cfg_img_scale"], kwargs["num_timesteps"]) == (5.5, 2.0, 20)
    assert kwargs["cfg_interval"] == [0.0, 1.0] and kwargs["cfg_renorm_type"] == "text_channel"
    assert "image_shapes" not in kwargs  # upstream sizes the output from the input image
    assert result.images[0].size == (64, 48) and result.params.image_size is None


def test_understanding_is_greedy_with_an_answer_budget(upstream):
    model, inferencer = upstream
    result = model.understand([_question(images=2, max_new_tokens=12)])[0]
    inputs, kwargs = inferencer.calls[-1]
    assert len(inputs) == 3 and inputs[-1] == "What colour is it?"
    assert kwargs == {"think": False, "understanding_output": True, "do_sample": False, "max_think_token_n": 12}
    assert result.text.startswith("answer ") and result.params.guidance_scale is None
    model.understand([_question(temperature=0.7)])
    assert inferencer.calls[-1][1]["do_sample"] is True and inferencer.calls[-1][1]["text_temperature"] == 0.7
    assert inferencer.calls[-1][1]["max_think_token_n"] == 512


def test_think_mode_per_request_or_per_backbone(upstream):
    model, inferencer = upstream
    thought = model.generate([InferenceRequest(task="generation", prompt="a car made of cars",
                                               metadata={"think": True})])[0]
    kwargs = inferencer.calls[-1][1]
    assert kwargs["think"] is True and kwargs["max_think_token_n"] == 1000 and kwargs["do_sample"] is False
    assert thought.text == "<think>a plan</think>" and thought.images
    assert thought.params.max_new_tokens == 1000
    model.think = True
    model.understand([_question()])
    assert inferencer.calls[-1][1]["think"] is True and inferencer.calls[-1][1]["max_think_token_n"] == 1000


def test_seeds_are_per_sample_not_per_batch(upstream):
    model, _ = upstream
    batch = model.generate([_generation(seed=1, image_size=32), _generation(seed=2, image_size=32)])
    alone = model.generate([_generation(seed=2, image_size=32)])
    assert batch[1].images[0].tobytes() == alone[0].images[0].tobytes()
    assert batch[0].images[0].tobytes() != batch[1].images[0].tobytes()


def test_invalid_requests_fail_before_anything_runs(upstream):
    model, inferencer = upstream
    with pytest.raises(ValueError, match="multiples of 16 up to 1024"):
        model.generate([_generation(seed=1), _generation(image_size=1000)])
    with pytest.raises(ValueError, match="multiples of 16 up to 1024"):
        model.generate([_generation(image_size=2048)])
    assert inferencer.calls == []


def test_editing_image_size_scales_the_input_keeping_its_aspect():
    request = InferenceRequest(task="editing", prompt="x", images=[_image(size=(400, 200))])
    defaults = Bagel(None, INFO).default_params("editing")
    call, used = translate(request, request.params.model_copy(update={"image_size": 512}).merged_over(defaults), False)
    assert call.images[0].size == (512, 256) and used.image_size == 512


def test_capabilities_are_all_three():
    assert Bagel.capabilities == frozenset({"understanding", "generation", "editing"})
    info = Bagel.describe()
    assert info["route"] == "upstream | engine" and "ByteDance-Seed/BAGEL-7B-MoT" in info["hub_ids"]
    model = Bagel(None, INFO)
    model.capabilities = frozenset({"understanding"})  # e.g. an understanding-only deployment
    with pytest.raises(UnsupportedTask):
        model.run([_generation()])


# -- the upstream checkout: presence, commit, API -------------------------------------------------

STAND_IN_FILES = {
    "inferencer.py": """
        class InterleaveInferencer:  # stand-in: the signature of ByteDance-Seed/Bagel at the pinned commit
            def __init__(self, model, vae_model, tokenizer, vae_transform, vit_transform, new_token_ids):
                self.parts = (model, vae_model, tokenizer, vae_transform, vit_transform, new_token_ids)

            def interleave_inference(self, input_lists, think=False, understanding_output=False,
                                     max_think_token_n=1000, do_sample=False, text_temperature=0.3,
                                     cfg_text_scale=3.0, cfg_img_scale=1.5, cfg_interval=[0.4, 1.0],
                                     timestep_shift=3.0, num_timesteps=50, cfg_renorm_min=0.0,
                                     cfg_renorm_type="global", image_shapes=(1024, 1024), enable_taylorseer=False):
                raise NotImplementedError("stand-in checkout")
    """,
    "data/__init__.py": "",
    "data/data_utils.py": "def add_special_tokens(tokenizer):\n    return tokenizer, {}, 0\n",
    "modeling/__init__.py": "",
    "modeling/autoencoder.py": ("def load_ae(local_path=None):\n    return None, None\n"
                                "class AutoEncoder: pass\nclass AutoEncoderParams: pass\n"),
    "modeling/bagel/__init__.py": "".join(f"class {name}: pass\n" for name in (
        "BagelConfig", "Bagel", "Qwen2Config", "Qwen2ForCausalLM", "SiglipVisionConfig", "SiglipVisionModel")),
    "modeling/qwen2/__init__.py": "class Qwen2Tokenizer: pass\n",
    "requirements.txt": "",
}


def write_checkout(root: Path, commit: str = UPSTREAM_COMMIT, packed: bool = True) -> Path:
    for name, text in STAND_IN_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    if packed:
        (root / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    else:
        (root / ".git" / "refs" / "heads").mkdir(parents=True)
        (root / ".git" / "refs" / "heads" / "main").write_text(commit + "\n")
    return root


@pytest.fixture
def clean_imports(monkeypatch):
    """Forget the stand-in checkout's top-level modules (inferencer, data, modeling) after the test."""
    before = set(sys.modules)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("inferencer", "data", "modeling"):
            del sys.modules[name]


def test_commit_is_read_from_loose_and_packed_refs_and_detached_heads(tmp_path):
    assert checkout_commit(write_checkout(tmp_path / "packed")) == UPSTREAM_COMMIT
    assert checkout_commit(write_checkout(tmp_path / "loose", commit="a" * 40, packed=False)) == "a" * 40
    detached = write_checkout(tmp_path / "detached")
    (detached / ".git" / "HEAD").write_text("b" * 40 + "\n")
    assert checkout_commit(detached) == "b" * 40
    assert checkout_commit(tmp_path) is None


def test_a_missing_checkout_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv(REPO_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"none is set: clone https://github.com/ByteDance-Seed/Bagel") as caught:
        resolve_checkout(None)
    assert REPO_ENV in str(caught.value) and "vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_checkout(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is not a checkout of https://github.com/ByteDance-Seed/Bagel"):
        resolve_checkout(tmp_path)


def test_a_checkout_at_another_commit_is_refused_with_the_fix(tmp_path, monkeypatch):
    repo = write_checkout(tmp_path / "bagel", commit="c" * 40)
    monkeypatch.delenv(ANY_COMMIT_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"at commit cccccccccccc, but this adapter was written against "
                                          f"{UPSTREAM_COMMIT[:12]}") as caught:
        resolve_checkout(repo)
    assert f"git -C {repo} checkout {UPSTREAM_COMMIT[:12]}" in str(caught.value) and ANY_COMMIT_ENV in str(caught.value)
    monkeypatch.setenv(ANY_COMMIT_ENV, "1")
    assert resolve_checkout(repo) == repo.resolve()
    monkeypatch.setenv(REPO_ENV, str(write_checkout(tmp_path / "pinned")))
    assert resolve_checkout(None) == (tmp_path / "pinned").resolve()


def test_upstream_api_is_imported_lazily_and_checked(tmp_path, clean_imports):
    repo = write_checkout(tmp_path / "bagel")
    assert "inferencer" not in sys.modules
    api = import_upstream(resolve_checkout(repo))
    assert api.InterleaveInferencer.__module__ == "inferencer" and api.load_ae(local_path=None) == (None, None)


def test_an_upstream_api_that_drifted_is_named(tmp_path, clean_imports):
    repo = write_checkout(tmp_path / "bagel")
    (repo / "modeling" / "qwen2" / "__init__.py").write_text("")
    text = (repo / "inferencer.py").read_text().replace("cfg_renorm_type=\"global\", ", "")
    (repo / "inferencer.py").write_text(text)
    with pytest.raises(ConfigError, match=r"lacks modeling\.qwen2\.Qwen2Tokenizer"):
        import_upstream(repo)
    (repo / "modeling" / "qwen2" / "__init__.py").write_text("class Qwen2Tokenizer: pass\n")
    for name in [n for n in sys.modules if n.split(".")[0] in ("inferencer", "data", "modeling")]:
        del sys.modules[name]
    with pytest.raises(ConfigError, match="interleave_inference takes no cfg_renorm_type"):
        import_upstream(repo)


def test_missing_upstream_requirements_are_named(tmp_path, clean_imports):
    repo = write_checkout(tmp_path / "bagel")
    (repo / "modeling" / "autoencoder.py").write_text("import flash_attn_that_is_not_installed\n")
    with pytest.raises(ConfigError, match=r"importing BAGEL's modeling\.autoencoder .* install the checkout's "
                                          r"requirements"):
        import_upstream(repo)


def test_a_big_checkpoint_is_saved_by_reference_only(tmp_path, clean_imports, monkeypatch):
    repo = write_checkout(tmp_path / "bagel")
    weights = tmp_path / "BAGEL-7B-MoT"
    weights.mkdir()
    built = []

    def build(api, folder, dtype, device):
        built.append((folder, dtype, device))
        return RecordingInferencer()

    monkeypatch.setattr(bagel_module, "build_inferencer", build)
    monkeypatch.setattr(bagel_module, "COPY_LIMIT_BYTES", 0)  # as if the folder held the 14B weights
    with pytest.raises(ConfigError, match="is not a BAGEL checkpoint .*ema.safetensors"):
        Bagel.load(str(weights), repo_path=repo)
    for name in ("llm_config.json", "vit_config.json", "ae.safetensors", "ema.safetensors"):
        (weights / name).write_text("")
    model = Bagel.load(str(weights), repo_path=repo, dtype="bfloat16", device="cuda:1")
    assert built == [(weights, "bfloat16", "cuda:1")] and model.engine.route == "upstream"
    assert model.generate([_generation(seed=4, image_size=32)])[0].images[0].size == (32, 32)

    model.save_pretrained(tmp_path / "ref")
    reference = json.loads((tmp_path / "ref" / "umm_bagel.json").read_text())
    assert reference == {"route": "upstream", "checkpoint": str(weights), "repo_path": str(repo.resolve()),
                         "commit": UPSTREAM_COMMIT, "revision": None, "think": False}
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["umm_bagel.json"]  # no weights copied
    again = Bagel.load(str(tmp_path / "ref"), dtype="bfloat16")
    assert again.engine.checkpoint == str(weights) and len(built) == 2


# -- the stand-in vllm-omni server (route b) ------------------------------------------------------

STAND_IN_SERVER = textwrap.dedent('''
    """A stand-in for a vllm-omni server (NOT vllm-omni): the documented BAGEL chat API, answered
    with synthetic images whose colour encodes the request's seed."""
    import base64, io, json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from PIL import Image

    LOG = sys.argv[1]

    def png(image):
        buf = io.BytesIO(); image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                served = [{"id": "ByteDance-Seed/BAGEL-7B-MoT", "object": "model"}]
                return self.reply(200, {"object": "list", "data": served})
            self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return self.reply(404, {"detail": "Not Found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            text = content[0]["text"]
            images = [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
                      for part in content if part["type"] == "image_url"]
            logged = dict(body, messages=[{"role": "user", "content": [
                part if part["type"] == "text" else {"type": "image_url", "size": list(img.size)}
                for part, img in zip(content, [None] + images)]}])
            with open(LOG, "a") as handle:
                handle.write(json.dumps(logged) + "\\n")
            if "PLEASE FAIL" in text:
                return self.reply(400, {"object": "error", "message": "stand-in refused: bad prompt", "code": 400})
            if "PLEASE SLEEP" in text:
                time.sleep(3)
            seed = body.get("seed") or 0
            if body.get("modalities") == ["text"]:
                answer = f"answer to {text!r} with seed {seed}"
                return self.reply(200, {"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
            width, height = (body["width"], body["height"]) if "width" in body else images[0].size
            image = Image.new("RGB", (width, height), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
            choices = [{"index": 0, "message": {"role": "assistant", "content": [
                {"type": "image_url", "image_url": {"url": png(image)}}]}, "finish_reason": "stop"}]
            if body.get("think"):
                choices.insert(0, {"index": 0, "message": {"role": "assistant", "content": "<think>a plan</think>"}})
            self.reply(200, {"object": "chat.completion", "choices": choices})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')


@pytest.fixture(scope="module")
def stand_in_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-omni") / "requests.jsonl"
    log.touch()
    process = subprocess.Popen([sys.executable, "-c", STAND_IN_SERVER, str(log)], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    port = int(process.stdout.readline())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/v1/models", timeout=2).status_code != 200:
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.1)
    yield url, log
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=10)


def _last_requests(log: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()[-n:]]


def test_engine_route_generation_payload_and_per_sample_seeds(stand_in_server):
    url, log = stand_in_server
    model = Bagel.load(url)
    assert isinstance(model.engine, VllmOmniEngine) and model.engine.model == "ByteDance-Seed/BAGEL-7B-MoT"
    results = model.generate([_generation("a red circle", seed=1, image_size=64),
                              _generation("two blue squares", seed=2, image_size=64)])
    first, second = sorted(_last_requests(log, 2), key=lambda body: body["seed"])
    assert first == {
        "model": "ByteDance-Seed/BAGEL-7B-MoT", "seed": 1, "modalities": ["image"], "num_inference_steps": 50,
        "cfg_text_scale": 4.0, "cfg_img_scale": 1.0, "cfg_interval": [0.4, 1.0], "cfg_renorm_type": "global",
        "cfg_renorm_min": 0.0, "timestep_shift": 3.0, "think": False, "height": 64, "width": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "<|im_start|>a red circle<|im_end|>"}]}],
    }
    assert second["messages"][0]["content"][0]["text"] == "<|im_start|>two blue squares<|im_end|>"
    assert [r.images[0].getpixel((0, 0)) for r in results] == [(37, 91, 53), (74, 182, 106)]  # seed-coded colours
    assert results[0].images[0].size == (64, 64) and results[0].text is None


def test_engine_route_editing_and_understanding_payloads(stand_in_server):
    url, log = stand_in_server
    model = Bagel.load(url)
    edited = model.edit([_editing(seed=5)])[0]
    body = _last_requests(log, 1)[0]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "<|im_start|>make it blue<|im_end|>"},
                                              {"type": "image_url", "size": [64, 48]}]
    assert (body["cfg_img_scale"], body["cfg_interval"], body["cfg_renorm_type"]) == (2.0, [0.0, 1.0], "text_channel")
    assert "height" not in body and edited.images[0].size == (64, 48)

    answer = model.understand([_question("Is it red?", images=2, seed=9)])[0]
    body = _last_requests(log, 1)[0]
    assert body["modalities"] == ["text"] and body["max_tokens"] == 512 and body["temperature"] == 0.0
    assert body["messages"][0]["content"][0]["text"] == (
        "<|im_start|>user\n<|image_pad|>\n<|image_pad|>\nIs it red?<|im_end|>\n<|im_start|>assistant\n")
    assert "cfg_text_scale" not in body and answer.text.endswith("with seed 9")


def test_engine_route_think_mode_returns_the_reasoning(stand_in_server):
    url, log = stand_in_server
    model = Bagel.load(url, think=True)
    result = model.generate([_generation(seed=3, image_size=32)])[0]
    body = _last_requests(log, 1)[0]
    assert body["think"] is True and body["max_think_tokens"] == 1000 and body["do_sample"] is False
    assert result.text == "<think>a plan</think>" and result.images[0].size == (32, 32)


def test_engine_route_errors_name_what_to_do(stand_in_server, tmp_path):
    url, _ = stand_in_server
    model = Bagel.load(url)
    with pytest.raises(VllmOmniError, match="refused the request: HTTP 400: stand-in refused: bad prompt"):
        model.generate([_generation("PLEASE FAIL", image_size=32)])
    slow = Bagel.load(url, client_options={"timeout_s": 0.5})
    with pytest.raises(VllmOmniError, match=r"did not answer within 0.5 s \(raise UMM_VLLM_OMNI_TIMEOUT"):
        slow.generate([_generation("PLEASE SLEEP", image_size=32)])
    with pytest.raises(ConfigError, match=r"no vllm-omni server answers at http://127\.0\.0\.1:9 .*"
                                          r"vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni"):
        Bagel.load("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="did not return an OpenAI model list|answered HTTP 404"):
        VllmOmniClient(url + "/nothing").served_models("x")


def test_engine_route_as_a_flavor_model_reloads_the_same_server(stand_in_server, tmp_path, monkeypatch):
    from model_flavors import flavor

    url, _ = stand_in_server
    model = Bagel.load(url)
    flavor.save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "weights" / "umm_bagel.json").read_text())["server_url"] == url
    loaded = flavor.load_local(tmp_path / "m")
    assert loaded.engine.client.url == url
    out = flavor.UmmPyfuncModel(loaded).predict(
        __import__("pandas").DataFrame([{"task": "generation", "prompt": "a cat"}]), params={"seed": 2,
                                                                                             "image_size": 32})
    image = Image.open(io.BytesIO(base64.b64decode(out["images"].iloc[0][0])))
    assert np.asarray(image)[0, 0].tolist() == [74, 182, 106]


def test_default_params_are_valid_inference_params():
    model = Bagel(None, INFO)
    for task in ("understanding", "generation", "editing"):
        assert isinstance(model.default_params(task), InferenceParams)
