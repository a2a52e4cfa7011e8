"""Backbones that run only on their authors' code, where that code does not run on this kind of
machine yet: Show-o2, JanusFlow, TokenFlow, DeepGen, Emu3.5 and Ovis-U1.

Each adapter is the part of a backbone that does not depend on running the model: capabilities,
hub ids, the model card's / repository's inference defaults, the translation of a request into
the upstream entry point's arguments (with its checks), the checkout and pins it needs, and a
precise statement of what blocks it here and what a user with a GPU runs instead. `load()`
checks what it can (the checkout, the opt-ins), then refuses with that statement: nothing here
pretends to generate. Facts and sources: ../shared/RESEARCH-WAVE2.md section A.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from model_flavors.upstream_checkout import UpstreamCheckout
from umm_harness.core.backbone import Backbone
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, TaskKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskCard:
    """One task's official defaults: the ones InferenceParams has a field for, the upstream
    argument each field becomes, and the settings it has no field for (sampler, negative prompt, ...)."""

    params: InferenceParams
    arguments: dict[str, str]  # InferenceParams field → upstream argument name
    fixed: dict[str, Any] = field(default_factory=dict)
    image_sizes: tuple[int, ...] = ()  # generation sizes the checkpoint supports; () = any
    max_images: int = 1  # input images per request (understanding / editing)


class UpstreamOnly(Backbone):
    """The shared behaviour; subclasses are data."""

    route: ClassVar[str] = "upstream"
    status: ClassVar[str] = "blocked here"
    cards: ClassVar[dict[TaskKind, TaskCard]]
    upstream: ClassVar[UpstreamCheckout]
    blocked_here: ClassVar[str]
    gpu_run: ClassVar[str]
    upstream_pins: ClassVar[tuple[str, ...]]  # the repository's own pins: an environment for it starts here

    @classmethod
    def translate(cls, request: InferenceRequest) -> dict[str, Any]:
        """The upstream entry point's keyword arguments for `request`, defaults filled in, checked."""
        if request.task not in cls.capabilities:
            raise ValueError(f"{cls.key} cannot do '{request.task}' (it supports: {', '.join(sorted(cls.capabilities))})")
        card = cls.cards[request.task]
        params = request.params.merged_over(card.params)
        if request.task == "generation" and card.image_sizes and params.image_size not in card.image_sizes:
            raise ValueError(f"{cls.key} generates {' or '.join(f'{s}px' for s in card.image_sizes)} images; "
                             f"got image_size={params.image_size}")
        if len(request.images) > card.max_images:
            raise ValueError(f"{cls.key} takes at most {card.max_images} input image(s) for {request.task}; "
                             f"got {len(request.images)}")
        arguments = {name: getattr(params, fieldname) for fieldname, name in card.arguments.items()
                     if getattr(params, fieldname) is not None}
        return {"prompt": request.prompt or "", "num_images": len(request.images), **card.fixed, **arguments}

    def default_params(self, task: TaskKind) -> InferenceParams:
        return self.cards[task].params

    @classmethod
    def blocked(cls) -> ConfigError:
        return ConfigError(f"{cls.key} does not run here: {cls.blocked_here} On a machine with a GPU: {cls.gpu_run}")

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None) -> UpstreamOnly:
        cls.upstream.resolve(repo_path)  # a missing or mismatched checkout is the first thing to fix
        raise cls.blocked()

    def save_pretrained(self, path: Path) -> None:  # never reached: load() refuses
        raise self.blocked()

    def _refuse(self, requests: Sequence[InferenceRequest]) -> list:
        for request in requests:
            self.translate(request)
        raise self.blocked()

    understand = generate = edit = _refuse


class ShowO2(UpstreamOnly):
    key: ClassVar[str] = "show_o2"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    hub_ids: ClassVar[tuple[str, ...]] = ("showlab/show-o2-1.5B", "showlab/show-o2-1.5B-HQ", "showlab/show-o2-7B")
    notes: ClassVar[str] = "Qwen2.5 + flow matching in the Wan2.1 VAE latent; SigLIP for understanding"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="Show-o2", repo="https://github.com/showlab/Show-o", commit="45a5a2de01d1ebd10cd5864d29310a76476cdf23", markers=("show-o2/models/modeling_showo2_qwen2_5.py", "show-o2/inference_t2i.py"), env="UMM_SHOW_O_REPO")
    requires: ClassVar[tuple[str, ...]] = ("a checkout of showlab/Show-o (show-o2/)", "timm", "torchvision",
                                           "flash-attn (CUDA)")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch==2.5.1", "torchvision", "transformers==4.47.0",
                                               "diffusers==0.31.0", "timm", "einops==0.8.0", "flash-attn")
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=0, guidance_scale=7.5, steps=50, image_size=432),
                               {"guidance_scale": "guidance_scale", "steps": "num_inference_steps",
                                "image_size": "resolution", "seed": "seed"},
                               image_sizes=(432, 512, 1024)),
        "understanding": TaskCard(InferenceParams(seed=0, max_new_tokens=100, temperature=0.0),
                                  {"max_new_tokens": "max_new_tokens", "temperature": "temperature"}),
    }
    blocked_here: ClassVar[str] = (
        "show-o2/models imports timm, which imports torchvision, and torchvision does not load beside the CPU "
        "torch 2.13 wheel; its models/modeling_utils.py is a copy of an old diffusers ModelMixin that fails on "
        "diffusers>=0.35; its Wan2.1 VAE is a pickle (Wan2.1_VAE.pth) and the 7B config needs flash-attn.")
    gpu_run: ClassVar[str] = (
        "in a CUDA environment from show-o2/build_env.sh (torch 2.5.1, transformers 4.47.0, diffusers 0.31.0), "
        "`python inference_t2i.py config=configs/showo2_7b_demo_432x432.yaml` in the checkout's show-o2/.")


class JanusFlow(UpstreamOnly):
    key: ClassVar[str] = "janus_flow"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    hub_ids: ClassVar[tuple[str, ...]] = ("deepseek-ai/JanusFlow-1.3B",)
    notes: ClassVar[str] = "rectified flow in the SDXL VAE latent (stabilityai/sdxl-vae, bf16)"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="JanusFlow", repo="https://github.com/deepseek-ai/Janus", commit="1daa72fa409002d40931bd7b36a9280362469ead", markers=("janus/janusflow/models/modeling_vlm.py",), env="UMM_JANUS_REPO")
    requires: ClassVar[tuple[str, ...]] = ("a checkout of deepseek-ai/Janus", "attrdict", "timm", "torchvision")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch>=2.0.1", "torchvision", "transformers>=4.38.2", "timm>=0.9.16",
                                               "accelerate", "sentencepiece", "attrdict", "einops", "diffusers")
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=0, guidance_scale=2.0, steps=30, image_size=384),
                               {"guidance_scale": "cfg_weight", "steps": "num_inference_steps", "seed": "seed"},
                               fixed={"sampler": "rectified-flow Euler", "latent": (4, 48, 48), "vae": "stabilityai/sdxl-vae"},
                               image_sizes=(384,)),
        "understanding": TaskCard(InferenceParams(seed=0, max_new_tokens=512, temperature=0.0),
                                  {"max_new_tokens": "max_new_tokens"}, fixed={"do_sample": False}),
    }
    blocked_here: ClassVar[str] = (
        "janus/janusflow imports attrdict, whose only release (2.0.1) fails on Python>=3.10 "
        "(`from collections import Mapping`); uvit.py and the image processor import torchvision, which does "
        "not load beside the CPU torch 2.13 wheel; siglip_vit.py imports timm (torchvision again).")
    gpu_run: ClassVar[str] = (
        "`pip install -e .` in the checkout on Python 3.8/3.9 with a CUDA torch, then the README's JanusFlow "
        "generation example (30 steps, cfg_weight 2.0, 384 px) and `inference.py`-style chat for understanding.")


class TokenFlow(UpstreamOnly):
    key: ClassVar[str] = "tokenflow"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"generation"})
    hub_ids: ClassVar[tuple[str, ...]] = ("ByteFlow-AI/TokenFlow-t2i",)
    notes: ClassVar[str] = "next-scale AR over a dual-codebook tokenizer (ByteFlow-AI/TokenFlow, a .pt pickle)"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="TokenFlow", repo="https://github.com/ByteFlow-AI/TokenFlow", commit="9812da01c0695f4989060cc4eea053715e9e4441", markers=("t2i/llava_t2i",), env="UMM_TOKENFLOW_REPO")
    requires: ClassVar[tuple[str, ...]] = ("a checkout of ByteFlow-AI/TokenFlow", "transformers 4.43", "torchvision")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch==2.1.2", "torchvision==0.16.2", "transformers==4.43.4",
                                               "accelerate==0.31.0", "timm==1.0.9", "setuptools<81")
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=0, guidance_scale=7.5, temperature=1.0, image_size=256),
                               {"guidance_scale": "cfg", "seed": "seed"},
                               fixed={"loop": 1, "topk_list": [600], "topp_list": [0.6], "max_text_tokens": 128,
                                      "attn_implementation": "eager",
                                      "negative_prompt": "lowres, bad anatomy, bad hands, text, error, missing "
                                      "fingers, extra digit, fewer digits, cropped, worst quality, low quality, "
                                      "normal quality, jpeg artifacts, signature, watermark, username, blurry."},
                               image_sizes=(256,)),
    }
    blocked_here: ClassVar[str] = (
        "t2i/llava_t2i imports pkg_resources (gone from current setuptools) and a vendored Llama written for "
        "transformers 4.43; its tokenizer checkpoint is a pickle (tokenflow_clipb_32k_enhanced.pt); torchvision "
        "does not load beside the CPU torch 2.13 wheel. (Output size 256 px is the paper's, unverified in code.)")
    gpu_run: ClassVar[str] = (
        "in a CUDA environment with t2i/requirements.txt, `bash t2i/scripts/run_t2i.sh` (cfg 7.5, loop 1: "
        "top-k 600, top-p 0.6).")


class DeepGen(UpstreamOnly):
    key: ClassVar[str] = "deepgen"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"generation", "editing"})
    hub_ids: ClassVar[tuple[str, ...]] = ("deepgenteam/DeepGen-1.0-diffusers", "deepgenteam/DeepGen-1.0")
    notes: ClassVar[str] = "Qwen2.5-VL-3B conditioning an SD3.5-style 2B DiT (Kontext-style reference tokens)"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="DeepGen", repo="https://github.com/deepgenteam/deepgen", commit="e6cb0c262611caebf2bf1c39e86be2f9ed636ebe", markers=("src/models", "configs/models/deepgen.py"), env="UMM_DEEPGEN_REPO")
    requires: ClassVar[tuple[str, ...]] = ("the hub pipeline script (trust_remote_code) or the checkout's xtuner "
                                           "route", "flash-attn (CUDA)")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch==2.8.0", "torchvision==0.23.0", "transformers==4.56.1",
                                               "diffusers==0.35.2", "accelerate==1.10.1", "mmengine==0.10.6",
                                               "xtuner==0.2.0", "flash_attn==2.8.3")
    _NEGATIVE = ("blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, damaged "
                 "details, artifacts, glitch, noise, pixelated, grainy, compression artifacts, bad composition, "
                 "wrong proportion, incomplete editing, unfinished, unedited areas.")
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=42, guidance_scale=4.0, steps=50, image_size=512),
                               {"guidance_scale": "cfg_scale", "steps": "num_steps", "image_size": "height",
                                "seed": "seed"}, fixed={"cfg_prompt": ""}),
        "editing": TaskCard(InferenceParams(seed=42, guidance_scale=4.0, steps=50, image_size=512),
                            {"guidance_scale": "cfg_scale", "steps": "num_steps", "image_size": "height",
                             "seed": "seed"}, fixed={"cfg_prompt": _NEGATIVE}),
    }
    blocked_here: ClassVar[str] = (
        "its diffusers pipeline (deepgen_pipeline.py) exists only on the model hub, which is not reachable "
        "here; the checkout's own route needs xtuner/mmengine, flash-attn 2.8 and torchvision (CUDA torch 2.8).")
    gpu_run: ClassVar[str] = (
        "`DiffusionPipeline.from_pretrained('deepgenteam/DeepGen-1.0-diffusers', trust_remote_code=True)` "
        "(512 px, cfg 4.0, 50 steps), or the checkout's `scripts/evaluation/gedit.py` for editing.")


class Emu3p5(UpstreamOnly):
    key: ClassVar[str] = "emu3_5"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation", "editing"})
    hub_ids: ClassVar[tuple[str, ...]] = ("BAAI/Emu3.5", "BAAI/Emu3.5-Image")
    notes: ClassVar[str] = "34B next-token model over IBQ image tokens (BAAI/Emu3.5-VisionTokenizer); editing = x2i"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="Emu3.5", repo="https://github.com/baaivision/Emu3.5", commit="8fcf1da48f9c5252fe0a0b8dc842e07b6efcd745", markers=("src/emu3p5/modeling_emu3.py", "configs/example_config_t2i.py"), env="UMM_EMU3_5_REPO")
    requires: ClassVar[tuple[str, ...]] = ("a checkout of baaivision/Emu3.5", "transformers==4.48.2",
                                           "its patched vLLM 0.11 (CUDA) for speed")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch>=2.6.0", "torchvision>=0.15.0", "transformers==4.48.2",
                                               "accelerate>=0.20.0", "vllm==0.11.0")
    _IMAGE_SAMPLING = {"image_top_k": 5120, "image_top_p": 1.0, "image_temperature": 1.0,
                       "text_top_k": 1024, "text_top_p": 0.9, "use_differential_sampling": True,
                       "unconditional_type": "no_text", "image_area": 1048576, "aspect_ratio": "default"}
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=6666, guidance_scale=5.0, max_new_tokens=5120, temperature=1.0),
                               {"guidance_scale": "classifier_free_guidance", "max_new_tokens": "max_new_tokens",
                                "seed": "seed"}, fixed={"task_type": "t2i", **_IMAGE_SAMPLING}),
        "editing": TaskCard(InferenceParams(seed=6666, guidance_scale=5.0, max_new_tokens=5120, temperature=1.0),
                            {"guidance_scale": "classifier_free_guidance", "max_new_tokens": "max_new_tokens",
                             "seed": "seed"}, fixed={"task_type": "x2i", **_IMAGE_SAMPLING}, max_images=4),
        "understanding": TaskCard(InferenceParams(seed=6666, max_new_tokens=1024, temperature=1.0),
                                  {"max_new_tokens": "max_new_tokens", "temperature": "text_temperature"},
                                  fixed={"task_type": "howto", "text_top_k": 1024, "text_top_p": 0.9}),
    }
    blocked_here: ClassVar[str] = (
        "src/emu3p5 is written for transformers 4.48 (it imports is_torch_fx_available, removed in 5.x, and "
        "reads rope_scaling['type'], which 5.x rewrites); the checkpoint's model_type 'Emu3' collides with "
        "transformers' own Emu3; the fast route is upstream's patched vLLM 0.11, which needs CUDA and runs "
        "in-process (inference_vllm.py), not as a server this adapter could call; the model is 34B (68 GB bf16).")
    gpu_run: ClassVar[str] = (
        "in the checkout, with requirements/vllm.txt and `python src/patch/apply.py`: "
        "`python inference_vllm.py --cfg configs/example_config_t2i.py` (x2i: example_config_x2i.py), "
        "or `python inference.py --cfg ...` on transformers 4.48.2.")


class OvisU1(UpstreamOnly):
    key: ClassVar[str] = "ovis_u1"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation", "editing"})
    route: ClassVar[str] = "hub remote code"
    hub_ids: ClassVar[tuple[str, ...]] = ("AIDC-AI/Ovis-U1-3B",)
    notes: ClassVar[str] = "Ovis VLM + MMDiT decoder; its modelling code lives only on the hub (trust_remote_code)"
    upstream: ClassVar[UpstreamCheckout] = UpstreamCheckout(name="Ovis-U1", repo="https://github.com/AIDC-AI/Ovis-U1", commit="dccf5eb36a725dba482ea506b586362ee2b0a01e", markers=("test_txt_to_img.py",), env="UMM_OVIS_U1_REPO")
    requires: ClassVar[tuple[str, ...]] = ("trust_remote_code: true (opt-in)", "transformers==4.51.3",
                                           "diffusers==0.31.0")
    upstream_pins: ClassVar[tuple[str, ...]] = ("torch==2.4.0", "transformers==4.51.3", "diffusers==0.31.0")
    cards: ClassVar[dict[TaskKind, TaskCard]] = {
        "generation": TaskCard(InferenceParams(seed=42, guidance_scale=5.0, steps=50, image_size=1024),
                               {"guidance_scale": "txt_cfg", "steps": "num_steps", "image_size": "height",
                                "seed": "seed"}),
        "editing": TaskCard(InferenceParams(seed=42, guidance_scale=6.0, image_guidance_scale=1.5, steps=50),
                            {"guidance_scale": "txt_cfg", "image_guidance_scale": "img_cfg", "steps": "num_steps",
                             "seed": "seed"}),
        "understanding": TaskCard(InferenceParams(seed=42, max_new_tokens=1024, temperature=0.0),
                                  {"max_new_tokens": "max_new_tokens"}, fixed={"do_sample": False}),
    }
    blocked_here: ClassVar[str] = (
        "its modelling code is only on the model hub (no class in transformers or in its GitHub repository), "
        "and the hub is not reachable here, so there is no code to run or read.")
    gpu_run: ClassVar[str] = (
        "with hub access, `AutoModelForCausalLM.from_pretrained('AIDC-AI/Ovis-U1-3B', trust_remote_code=True)`, "
        "then the model card's generate_condition / generate_img calls (T2I 1024 px, 50 steps, txt_cfg 5; "
        "editing img_cfg 1.5, txt_cfg 6).")

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None, trust_remote_code: bool = False) -> OvisU1:
        """Remote code runs only on an explicit, per-model opt-in (`backbone_options: {trust_remote_code:
        true}`); runs made with it are tagged `umm.trust_remote_code=true`."""
        if not trust_remote_code:
            raise ConfigError(f"{cls.key} runs code downloaded from the model hub ({source}); that executes "
                              f"arbitrary code, so it needs an explicit opt-in: backbone_options: "
                              f"{{trust_remote_code: true}}")
        log.warning("%s: trust_remote_code is on: code from %s will run in this process", cls.key, source)
        raise cls.blocked()


BLOCKED: tuple[type[UpstreamOnly], ...] = (ShowO2, JanusFlow, TokenFlow, DeepGen, Emu3p5, OvisU1)
