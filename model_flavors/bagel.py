"""BAGEL (ByteDance-Seed/BAGEL-7B-MoT): understanding, generation with text+image CFG, editing,
and the optional "think" mode, through code that lives outside transformers/diffusers.

Two routes, both real; the adapter owns everything on our side of each boundary:
request → `BagelCall` (model-card defaults, validation, image pre-processing, seed) → the
upstream call arguments or the HTTP payload → `InferenceResult`.

Route (a), `upstream`: the user's checkout of https://github.com/ByteDance-Seed/Bagel, named by
the `repo_path` option (recipe) or `UMM_BAGEL_REPO`, imported lazily. Written against commit
056b5fd51a88c1eb4547318609e25d40080fcf87 (2025-10-27, "Merge pull request #274") and its API:
`inferencer.InterleaveInferencer(model, vae_model, tokenizer, vae_transform, vit_transform,
new_token_ids).interleave_inference(input_lists, think, understanding_output,
max_think_token_n, do_sample, text_temperature, cfg_text_scale, cfg_img_scale, cfg_interval,
timestep_shift, num_timesteps, cfg_renorm_min, cfg_renorm_type, image_shapes)`, built the way
the repository's `inference.ipynb` builds it (`modeling.bagel`, `modeling.qwen2.Qwen2Tokenizer`,
`modeling.autoencoder.load_ae`, `data.transforms.ImageTransform`,
`data.data_utils.add_special_tokens`; weights `ema.safetensors`, `ae.safetensors`,
`llm_config.json`, `vit_config.json` of the checkpoint). A checkout at another commit is refused
(set `UMM_BAGEL_ANY_COMMIT=1` to try it anyway); the signature is checked either way. Upstream
runs one sample per call and draws noise from the global RNG, so requests run one at a time,
each after seeding every RNG with its own seed. Needs CUDA (flash-attn) and the checkout's
requirements.

Route (b), `engine`: a running vllm-omni server (`vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni`)
named by its URL as the model source (`http://host:port`); see `model_flavors.vllm_omni` for
the API version. The request's seed travels as the body's `seed`; a batch is sent as concurrent
requests, which the server batches.

Defaults (model card / the repository's notebook and app): generation CFG text 4.0, image 1.0,
interval [0.4, 1.0], renorm `global`, 50 steps, timestep shift 3.0, 1024 px; editing CFG text
4.0, image 2.0, interval [0.0, 1.0], renorm `text_channel`; understanding greedy, up to 512
tokens; think mode greedy, up to 1000 thinking tokens. (The repository's own GenEval script
applies CFG over the whole schedule, `cfg_interval=[0, 1]`; the adapter keeps the model card's.)
`think` is a backbone option (load option `think=True`) or per request (`metadata["think"]`).
In think mode the result's `text` holds the reasoning (generation/editing) or the reasoning and
the answer (understanding).

Weights are never copied: `save_pretrained` writes `umm_bagel.json`, a reference (route,
checkpoint or server URL, checkout path and commit) that `load` reads back.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol

from PIL import Image

from model_flavors import bagel_cpu
from model_flavors.bagel_training import BagelTraining
from model_flavors.environment import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from model_flavors.upstream_checkout import checkout_commit, same_code
from model_flavors.vllm_omni import VllmOmniClient, image_part, text_part
from umm_harness.core.backbone import Backbone, ModelInfo, Upstream
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind

log = logging.getLogger(__name__)

HUB_ID = "ByteDance-Seed/BAGEL-7B-MoT"
UPSTREAM_URL = "https://github.com/ByteDance-Seed/Bagel"
UPSTREAM_COMMIT = "056b5fd51a88c1eb4547318609e25d40080fcf87"
REFERENCE_FILE = "umm_bagel.json"
WEIGHTS_FILE = "ema.safetensors"  # the weights the notebook loads (EMA)
BUILD_FILE = "umm_bagel_build.json"  # a checkpoint that differs from what the notebook hard-codes (tiny builds)
COPY_LIMIT_BYTES = 1 << 30  # local checkpoints below this travel with a saved model; bigger ones by reference
REPO_ENV = "UMM_BAGEL_REPO"
ANY_COMMIT_ENV = "UMM_BAGEL_ANY_COMMIT"
SERVE_HINT = f"vllm serve {HUB_ID} --omni --port 8000"

LATENT_STRIDE = 16  # FLUX VAE ×8, latent patch 2
MAX_IMAGE_SIZE = 1024  # max_latent_size 64 × 16


@dataclass(frozen=True)
class CardSettings:
    """The sampler settings InferenceParams has no field for, per task (model card)."""

    cfg_interval: tuple[float, float]
    cfg_renorm_type: str
    cfg_renorm_min: float = 0.0
    timestep_shift: float = 3.0


CARD = {
    "generation": CardSettings((0.4, 1.0), "global"),
    "editing": CardSettings((0.0, 1.0), "text_channel"),
}
THINK_TOKENS = 1000
ANSWER_TOKENS = 512


@dataclass
class BagelCall:
    """One request, route-independent: what BAGEL is asked to do, with every setting resolved."""

    task: TaskKind
    prompt: str
    images: list[Image.Image]
    seed: int
    think: bool
    max_new_tokens: int | None  # answer (understanding) or thinking (think mode) budget
    temperature: float  # 0 = greedy
    cfg_text_scale: float | None = None
    cfg_img_scale: float | None = None
    num_timesteps: int | None = None
    image_size: int | None = None  # generation canvas (square)
    settings: CardSettings | None = None

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


def _fit(image: Image.Image, longest: int) -> Image.Image:
    scale = longest / max(image.size)
    if scale == 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


def translate(request: InferenceRequest, params: InferenceParams, think: bool) -> tuple[BagelCall, InferenceParams]:
    """`request` (with `params` already merged over the defaults) → a `BagelCall` and the resolved params."""
    task = request.task
    if task == "understanding":
        call = BagelCall(task, request.prompt or "", list(request.images), params.seed, think,
                         params.max_new_tokens, params.temperature or 0.0)
        resolved = params.model_copy(update={"guidance_scale": None, "image_guidance_scale": None, "steps": None,
                                             "image_size": None})
        return call, resolved
    images = list(request.images)
    if task == "generation":
        if params.image_size % LATENT_STRIDE or not LATENT_STRIDE <= params.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"bagel generates sides that are multiples of {LATENT_STRIDE} up to {MAX_IMAGE_SIZE}; "
                             f"got image_size={params.image_size}")
    elif params.image_size is not None:
        images = [_fit(image, params.image_size) for image in images]
    call = BagelCall(
        task, request.prompt or "", images, params.seed, think,
        params.max_new_tokens if think else None, (params.temperature or 0.0) if think else 0.0,
        cfg_text_scale=params.guidance_scale, cfg_img_scale=params.image_guidance_scale, num_timesteps=params.steps,
        image_size=params.image_size if task == "generation" else None, settings=CARD[task],
    )
    resolved = params if think else params.model_copy(update={"max_new_tokens": None, "temperature": None})
    return call, resolved


class BagelEngine(Protocol):
    route: str

    def run(self, calls: Sequence[BagelCall]) -> list[tuple[str | None, list[Image.Image]]]: ...

    def reference(self) -> dict[str, Any]: ...


# -- route (a): the upstream checkout ---------------------------------------------------------

_UPSTREAM_NAMES = {
    "inferencer": ["InterleaveInferencer"],
    "data.data_utils": ["add_special_tokens"],
    "modeling.autoencoder": ["load_ae", "AutoEncoder", "AutoEncoderParams"],
    "modeling.bagel": ["BagelConfig", "Bagel", "Qwen2Config", "Qwen2ForCausalLM", "SiglipVisionConfig",
                       "SiglipVisionModel"],
    "modeling.qwen2": ["Qwen2Tokenizer"],
}
_INTERLEAVE_ARGS = ("input_lists", "think", "understanding_output", "max_think_token_n", "do_sample",
                    "text_temperature", "cfg_text_scale", "cfg_img_scale", "cfg_interval", "timestep_shift",
                    "num_timesteps", "cfg_renorm_min", "cfg_renorm_type", "image_shapes")


def resolve_checkout(repo_path: str | Path | None) -> Path:
    """The BAGEL checkout to import from, checked for presence and commit."""
    chosen = repo_path or os.environ.get(REPO_ENV)
    how = (f"clone {UPSTREAM_URL}, `git checkout {UPSTREAM_COMMIT[:12]}`, install its requirements, then set "
           f"`repo_path` in the recipe or {REPO_ENV}=<checkout>; or serve BAGEL with vllm-omni (`{SERVE_HINT}`) "
           f"and pass its URL (http://host:port) as the model")
    if not chosen:
        raise ConfigError(f"bagel needs a checkout of the upstream repository and none is set: {how}")
    repo = Path(chosen).expanduser()
    if not repo.is_dir():
        raise ConfigError(f"bagel checkout '{repo}' does not exist: {how}")
    if not (repo / "inferencer.py").is_file() or not (repo / "modeling" / "bagel").is_dir():
        raise ConfigError(f"'{repo}' is not a checkout of {UPSTREAM_URL} (no inferencer.py / modeling/bagel): {how}")
    commit = checkout_commit(repo)
    if commit is None:
        log.warning("cannot tell which commit %s is (not a git checkout); the adapter was written against %s",
                    repo, UPSTREAM_COMMIT[:12])
    elif commit != UPSTREAM_COMMIT and os.environ.get(ANY_COMMIT_ENV) != "1":
        raise ConfigError(
            f"bagel checkout '{repo}' is at commit {commit[:12]}, but this adapter was written against "
            f"{UPSTREAM_COMMIT[:12]} (2025-10-27); run `git -C {repo} checkout {UPSTREAM_COMMIT[:12]}`, "
            f"or set {ANY_COMMIT_ENV}=1 to try this commit anyway"
        )
    return repo.resolve()


def import_upstream(repo: Path) -> SimpleNamespace:
    """The upstream names the adapter uses, imported from `repo` (put first on sys.path), with the
    CPU and transformers-5 fallbacks of `model_flavors.bagel_cpu` where they are needed."""
    for top in ("inferencer", "data", "modeling"):
        loaded = sys.modules.get(top)
        origin = getattr(loaded, "__file__", None) or "".join(getattr(loaded, "__path__", []) or [])
        if loaded is not None and not str(origin).startswith(str(repo)):
            if same_code(Path(origin), repo):  # another copy of the same code (a bundled checkout)
                continue
            raise ConfigError(f"a different module named '{top}' is already imported ({origin}); BAGEL's code "
                              f"uses that top-level name; run it in a process that has not imported it")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    api: dict[str, Any] = {}
    missing = []
    with bagel_cpu.upstream_import_window() as stand_in:
        for module_name, names in _UPSTREAM_NAMES.items():
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigError(
                    f"importing BAGEL's {module_name} from {repo} failed ({exc}); install the checkout's "
                    f"requirements (the adapter's: {', '.join(Bagel.pip_requirements)})"
                ) from None
            for name in names:
                if hasattr(module, name):
                    api[name] = getattr(module, name)
                else:
                    missing.append(f"{module_name}.{name}")
    if stand_in:
        log.info("flash-attn is not installed: BAGEL's attention runs on the SDPA stand-in (model_flavors.bagel_cpu)")
    if bagel_cpu.patch_for_transformers_5():
        log.info("transformers %s: BAGEL's qwen2 module got the 'default' RoPE initialiser back", transformers_version())
    if missing:
        raise ConfigError(f"BAGEL checkout {repo} lacks {', '.join(missing)}; the adapter was written against "
                          f"commit {UPSTREAM_COMMIT[:12]}")
    accepted = inspect.signature(api["InterleaveInferencer"].interleave_inference).parameters
    absent = [name for name in _INTERLEAVE_ARGS if name not in accepted]
    if absent:
        raise ConfigError(f"BAGEL checkout {repo}: InterleaveInferencer.interleave_inference takes no "
                          f"{', '.join(absent)}; the adapter was written against commit {UPSTREAM_COMMIT[:12]}")
    return SimpleNamespace(**api)


def transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


@dataclass(frozen=True)
class BuildSettings:
    """What the repository's notebook hard-codes for BAGEL-7B-MoT. A checkpoint that differs (a
    tiny build) says so in `umm_bagel_build.json`: its VAE's `AutoEncoderParams` (else FLUX's,
    through upstream's `load_ae`), the two image transforms (max side, min side, stride), and the
    generation size it is made for."""

    vae_params: dict[str, Any] | None = None
    vae_transform: tuple[int, int, int] = (1024, 512, 16)
    vit_transform: tuple[int, int, int] = (980, 224, 14)
    image_size: int = 1024
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70

    @classmethod
    def of(cls, checkpoint: Path) -> BuildSettings:
        file = checkpoint / BUILD_FILE
        if not file.is_file():
            return cls()
        try:
            fields = json.loads(file.read_text())
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{file}: not a BAGEL build description ({exc})") from None


def build_inferencer(api: SimpleNamespace, checkpoint: Path, dtype: str, device: str) -> Any:
    """A BAGEL checkpoint on one device, assembled from the upstream pieces as `inference.ipynb` does."""
    import torch
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    settings = BuildSettings.of(checkpoint)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    llm_config = api.Qwen2Config.from_json_file(str(checkpoint / "llm_config.json"))
    llm_config.qk_norm = True
    llm_config.tie_word_embeddings = False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    vit_config = api.SiglipVisionConfig.from_json_file(str(checkpoint / "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1  # BAGEL uses the penultimate SigLIP layer
    for config in (llm_config, vit_config):
        bagel_cpu.config_defaults(config)
    if settings.vae_params is None:
        vae_model, vae_config = api.load_ae(local_path=str(checkpoint / "ae.safetensors"))
    else:
        from safetensors.torch import load_file

        vae_config = api.AutoEncoderParams(**settings.vae_params)
        vae_model = api.AutoEncoder(vae_config)
        vae_model.load_state_dict(load_file(str(checkpoint / "ae.safetensors")))
    config = api.BagelConfig(
        visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=vit_config, vae_config=vae_config,
        vit_max_num_patch_per_side=settings.vit_max_num_patch_per_side, connector_act="gelu_pytorch_tanh",
        latent_patch_size=2, max_latent_size=settings.max_latent_size,
    )
    with init_empty_weights():
        language_model = api.Qwen2ForCausalLM(llm_config)
        vit_model = api.SiglipVisionModel(vit_config)
        model = api.Bagel(language_model, vit_model, config)
        model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config, meta=True)
    tokenizer = api.Qwen2Tokenizer.from_pretrained(str(checkpoint))
    tokenizer, new_token_ids, _ = api.add_special_tokens(tokenizer)
    model = load_checkpoint_and_dispatch(
        model, checkpoint=str(checkpoint / "ema.safetensors"), device_map={"": device}, dtype=torch_dtype,
        offload_buffers=True, force_hooks=True,
    ).eval()
    model = with_adapters(model, checkpoint)
    vae_model = vae_model.to(device).eval()  # its checkpoint dtype; upstream runs it under bf16 autocast
    return api.InterleaveInferencer(
        model=model, vae_model=vae_model, tokenizer=tokenizer,
        vae_transform=bagel_cpu.ImageTransform(*settings.vae_transform),
        vit_transform=bagel_cpu.ImageTransform(*settings.vit_transform), new_token_ids=new_token_ids,
    )


def with_adapters(model: Any, checkpoint: Path) -> Any:
    """`model` with the LoRA adapters saved beside its weights applied (peft's `adapter_config.json`
    and `adapter_model.safetensors`: a post-training that kept its adapters unmerged), else `model`.
    The adapters stay separate layers, computed beside the base weights as in training."""
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        return model
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"{checkpoint} holds LoRA adapters (kept unmerged), which need peft: "
                          "pip install 'umm-harness[train]' (or pip install peft)") from None
    weights = checkpoint / ADAPTER_WEIGHTS
    if not weights.is_file():  # never peft's pickle fallback (adapter_model.bin)
        raise ConfigError(f"{checkpoint} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: adapters load from "
                          "safetensors only")
    with_lora = get_peft_model(model, LoraConfig.from_pretrained(str(checkpoint)))
    set_peft_model_state_dict(with_lora, load_file(str(weights)))
    return with_lora.get_base_model().eval()


def seed_everything(seed: int) -> None:
    """Upstream draws from the global RNGs: seed all of them before each request."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class UpstreamEngine:
    inferencer: Any  # InterleaveInferencer (or anything with its interleave_inference)
    repo: str
    commit: str | None
    checkpoint: str
    device: str = "cpu"
    route: ClassVar[str] = "upstream"

    @staticmethod
    def arguments(call: BagelCall) -> tuple[list[Any], dict[str, Any]]:
        """`interleave_inference(input_lists, **kwargs)` for `call`: images first, then the prompt."""
        inputs: list[Any] = [*call.images, call.prompt]
        kwargs: dict[str, Any] = {"think": call.think, "understanding_output": call.task == "understanding",
                                  "do_sample": call.do_sample}
        if call.max_new_tokens is not None:
            kwargs["max_think_token_n"] = call.max_new_tokens
        if call.do_sample:
            kwargs["text_temperature"] = call.temperature
        if call.task != "understanding":
            settings = call.settings
            kwargs.update(cfg_text_scale=call.cfg_text_scale, cfg_img_scale=call.cfg_img_scale,
                          cfg_interval=list(settings.cfg_interval), timestep_shift=settings.timestep_shift,
                          num_timesteps=call.num_timesteps, cfg_renorm_min=settings.cfg_renorm_min,
                          cfg_renorm_type=settings.cfg_renorm_type)
            if call.image_size is not None:
                kwargs["image_shapes"] = (call.image_size, call.image_size)
        return inputs, kwargs

    def run(self, calls: Sequence[BagelCall]) -> list[tuple[str | None, list[Image.Image]]]:
        results = []
        for call in calls:  # upstream serves one sample per call
            inputs, kwargs = self.arguments(call)
            seed_everything(call.seed)
            with bagel_cpu.autocast_for(self.device):
                outputs = self.inferencer.interleave_inference(inputs, **kwargs)
            texts = [item for item in outputs if isinstance(item, str)]
            images = [item.convert("RGB") for item in outputs if isinstance(item, Image.Image)]
            results.append(("\n".join(texts) if texts else None, images))
        return results

    def reference(self) -> dict[str, Any]:
        return {"route": self.route, "checkpoint": self.checkpoint, "repo_path": self.repo, "commit": self.commit}


# -- route (b): a vllm-omni server --------------------------------------------------------------

@dataclass
class VllmOmniEngine:
    client: VllmOmniClient
    model: str
    route: ClassVar[str] = "engine"

    def payload(self, call: BagelCall) -> dict[str, Any]:
        """The `/v1/chat/completions` body for `call` (BAGEL prompt format of vllm-omni's BAGEL docs)."""
        body: dict[str, Any] = {"model": self.model, "seed": call.seed}
        if call.task == "understanding":
            text = ("<|im_start|>user\n" + "<|image_pad|>\n" * len(call.images) + call.prompt
                    + "<|im_end|>\n<|im_start|>assistant\n")
            body.update(modalities=["text"], max_tokens=call.max_new_tokens, temperature=call.temperature)
            if call.think:
                body.update(think=True, max_think_tokens=call.max_new_tokens, do_sample=call.do_sample)
        else:
            text = f"<|im_start|>{call.prompt}<|im_end|>"
            settings = call.settings
            body.update(
                modalities=["image"], num_inference_steps=call.num_timesteps, cfg_text_scale=call.cfg_text_scale,
                cfg_img_scale=call.cfg_img_scale, cfg_interval=list(settings.cfg_interval),
                cfg_renorm_type=settings.cfg_renorm_type, cfg_renorm_min=settings.cfg_renorm_min,
                timestep_shift=settings.timestep_shift, think=call.think,
            )
            if call.image_size is not None:
                body.update(height=call.image_size, width=call.image_size)
            if call.think:
                body.update(max_think_tokens=call.max_new_tokens, do_sample=call.do_sample)
                if call.do_sample:
                    body["text_temperature"] = call.temperature
        content = [text_part(text)] + [image_part(image) for image in call.images]
        body["messages"] = [{"role": "user", "content": content}]
        return body

    def run(self, calls: Sequence[BagelCall]) -> list[tuple[str | None, list[Image.Image]]]:
        replies = self.client.chat_many([self.payload(call) for call in calls])
        results = []
        for call, reply in zip(calls, replies):
            if call.task != "understanding" and not reply.images:
                raise RuntimeError(f"vllm-omni server at {self.client.url} returned no image for a {call.task} "
                                   f"request (text: {(reply.text or '')[:200]!r})")
            results.append((reply.text, reply.images))
        return results

    def reference(self) -> dict[str, Any]:
        return {"route": self.route, "server_url": self.client.url, "model": self.model}


# -- the backbone -------------------------------------------------------------------------------

class Bagel(BagelTraining, Backbone):
    key: ClassVar[str] = "bagel"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation", "editing"})
    route: ClassVar[str] = "upstream | engine"
    requires: ClassVar[tuple[str, ...]] = (
        f"upstream: a checkout of {UPSTREAM_URL} at {UPSTREAM_COMMIT[:12]} (CPU/SDPA fallback when flash-attn is "
        f"absent); engine: a running vllm-omni server",
    )
    hub_ids: ClassVar[tuple[str, ...]] = (HUB_ID,)
    notes: ClassVar[str] = "model source: a checkpoint (hub id/folder, route upstream) or http://host:port (vllm-omni)"
    # BAGEL's own environment: its requirements.txt pins, less what inference does not import
    # (decord, opencv, torchvision, gradio, wandb, ...), on the CPU torch wheel that installs here.
    # Its code also runs on the harness's transformers 5 (with the shims of bagel_cpu).
    pip_requirements: ClassVar[tuple[str, ...]] = (
        "torch==2.13.0", "transformers==4.49.0", "tokenizers>=0.21,<0.22", "accelerate>=0.34.0", "einops==0.8.1",
        "safetensors>=0.4.5", "huggingface_hub>=0.26,<1.0", "regex", "numpy", "requests>=2.31",
    )
    upstream: ClassVar[Upstream] = Upstream(repo=UPSTREAM_URL, commit=UPSTREAM_COMMIT)

    def __init__(self, engine: BagelEngine, info: ModelInfo, think: bool = False, image_size: int = MAX_IMAGE_SIZE):
        self.engine = engine
        self.info = info
        self.think = think
        self.image_size = image_size  # generation default: the size the checkpoint is made for
        self.repo_path = Path(engine.repo) if isinstance(engine, UpstreamEngine) else None

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None, think: bool = False,
             client_options: dict[str, Any] | None = None) -> Bagel:
        reference_file = Path(source) / REFERENCE_FILE
        if reference_file.is_file():
            reference = json.loads(reference_file.read_text())
            if reference.get("route") == "engine":
                info = ModelInfo(backbone=cls.key, source=source, dtype=dtype)
                return cls._from_server(reference["server_url"], info, think, reference.get("model"), client_options)
            repo = repo_path or os.environ.get(REPO_ENV) or reference.get("repo_path")
            checkpoint = reference["checkpoint"]
            if checkpoint == ".":  # the checkpoint travels with the reference (a tiny build, a saved model)
                checkpoint = str(Path(source).resolve())
            return cls._from_checkout(checkpoint, reference.get("revision"), repo, dtype, device,
                                      think or bool(reference.get("think")), info_source=source)
        if source.startswith(("http://", "https://")):
            return cls._from_server(source, ModelInfo(backbone=cls.key, source=source, dtype=dtype), think, None,
                                    client_options)
        return cls._from_checkout(source, revision, repo_path, dtype, device, think, info_source=source)

    @classmethod
    def _from_server(cls, url: str, info: ModelInfo, think: bool, model: str | None,
                     client_options: dict[str, Any] | None) -> Bagel:
        client = VllmOmniClient(url, **(client_options or {}))
        served = client.served_models(SERVE_HINT)
        if not served:
            raise ConfigError(f"the vllm-omni server at {client.url} serves no model")
        chosen = model if model in served else served[0]
        if "bagel" not in chosen.lower():
            log.warning("the vllm-omni server at %s serves %s, which does not look like BAGEL", client.url, chosen)
        return cls(VllmOmniEngine(client, chosen), info, think)

    @classmethod
    def _from_checkout(cls, checkpoint: str, revision: str | None, repo_path: str | Path | None, dtype: str,
                       device: str, think: bool, info_source: str) -> Bagel:
        repo = resolve_checkout(repo_path)
        api = import_upstream(repo)
        folder = Path(checkpoint)
        if folder.is_dir():
            checkpoint = str(folder.resolve())
        else:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(checkpoint, revision=revision))
        missing = [name for name in ("llm_config.json", "vit_config.json", "ae.safetensors", "ema.safetensors")
                   if not (folder / name).is_file()]
        if missing:
            raise ConfigError(f"{folder} is not a BAGEL checkpoint (missing {', '.join(missing)}); "
                              f"download {HUB_ID}")
        settings = BuildSettings.of(folder)
        if dtype == "float32" and settings.vae_params is None:
            log.warning("BAGEL in float32 needs ~60 GB; the model card runs it in bfloat16")
        inferencer = build_inferencer(api, folder, dtype, device)
        engine = UpstreamEngine(inferencer, str(repo), checkout_commit(repo), checkpoint, device)
        info = ModelInfo(backbone=cls.key, source=info_source, revision=revision, dtype=dtype)
        return cls(engine, info, think, image_size=settings.image_size)

    def save_pretrained(self, path: Path) -> None:
        """A local checkpoint under 1 GB (a tiny build) is copied beside the reference; anything
        bigger, a hub id or a server is recorded by reference only, never copied."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        reference = {**self.engine.reference(), "revision": self.info.revision, "think": self.think}
        folder = Path(reference.get("checkpoint") or "")
        if reference["route"] == "upstream" and folder.is_dir() and _size(folder) < COPY_LIMIT_BYTES:
            for file in folder.iterdir():
                if file.is_file() and file.name != REFERENCE_FILE:
                    shutil.copy2(file, path / file.name)
            reference["checkpoint"] = "."
        (path / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "understanding":
            return InferenceParams(seed=0, max_new_tokens=ANSWER_TOKENS, temperature=0.0)
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=4.0, image_guidance_scale=1.0, steps=50,
                                   image_size=self.image_size,
                                   max_new_tokens=THINK_TOKENS, temperature=0.0)
        return InferenceParams(seed=0, guidance_scale=4.0, image_guidance_scale=2.0, steps=50,
                               max_new_tokens=THINK_TOKENS, temperature=0.0)

    def calls(self, task: TaskKind,
              requests: Sequence[InferenceRequest]) -> tuple[list[BagelCall], list[InferenceParams]]:
        """Every request translated (and validated) before any is run."""
        self.check_supports(task)
        calls, resolved = [], []
        for request in requests:
            params = request.params.merged_over(self.default_params(task))
            think = bool(request.metadata.get("think", self.think))
            if task == "understanding" and think:
                params = params.model_copy(update={"max_new_tokens": request.params.max_new_tokens or THINK_TOKENS})
            call, used = translate(request, params, think)
            calls.append(call)
            resolved.append(used)
        return calls, resolved

    def _run(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        calls, resolved = self.calls(task, requests)
        start = time.perf_counter()
        outputs = self.engine.run(calls)
        elapsed = (time.perf_counter() - start) / len(requests)
        return [InferenceResult(text=text, images=images, params=p, elapsed_s=elapsed)
                for (text, images), p in zip(outputs, resolved)]

    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        return self._run("understanding", requests)

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        return self._run("generation", requests)

    def edit(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        return self._run("editing", requests)



def _size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
