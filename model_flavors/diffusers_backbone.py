"""Pure generators and instruction editors from diffusers, as baselines next to the UMMs.

Any text-to-image `DiffusionPipeline` (SD3, FLUX, Sana, OmniGen v1, Qwen-Image, ...) loads by
hub id or folder and answers `generation`; instruction-editing pipelines (InstructPix2Pix,
FLUX.1 Kontext, Qwen-Image-Edit, OmniGen v1) answer `editing`. An instance's capabilities come
from its pipeline class, so asking a text-to-image pipeline to edit (or an editing-only
pipeline to generate) raises `UnsupportedTask` before any work; nothing here understands.

Per-sample seeds: every request gets its own CPU `torch.Generator` (diffusers takes a list,
one per prompt), so a sample's initial noise does not depend on its batch neighbours and is the
same on CPU and GPU. One pipeline call takes one step count, guidance and size, so a batch is
split into groups of requests that agree on them.

Defaults: the model card's settings for the published checkpoints in `HUB_PRESETS`, otherwise
the pipeline's own `__call__` defaults (its documented behaviour). Image size left unset means
the pipeline's native size; the resolved params report the size actually produced.
Sampling-only knobs (`temperature`, `max_new_tokens`) do not exist for diffusion pipelines and
are dropped from the resolved params.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from umm_harness.core.backbone import Backbone, ModelInfo, require_safetensors
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Convention:
    """How one pipeline class names its inputs."""

    image_arg: str = "image"  # the editing input
    guidance_arg: str = "guidance_scale"  # the text CFG scale
    image_guidance_arg: str | None = None  # the image CFG scale (editing), if the pipeline has one
    edits: bool = False  # instruction editing
    generates: bool = True  # text-to-image
    image_placeholder: str | None = None  # prompt prefix per input image, `{i}` = 1-based index


CONVENTIONS: dict[str, Convention] = {
    "StableDiffusionInstructPix2PixPipeline": Convention(image_guidance_arg="image_guidance_scale", edits=True,
                                                         generates=False),
    "StableDiffusionXLInstructPix2PixPipeline": Convention(image_guidance_arg="image_guidance_scale", edits=True,
                                                           generates=False),
    "FluxKontextPipeline": Convention(edits=True),
    "QwenImagePipeline": Convention(guidance_arg="true_cfg_scale"),
    "QwenImageEditPipeline": Convention(guidance_arg="true_cfg_scale", edits=True, generates=False),
    "QwenImageEditPlusPipeline": Convention(guidance_arg="true_cfg_scale", edits=True, generates=False),
    "OmniGenPipeline": Convention(image_arg="input_images", image_guidance_arg="img_guidance_scale", edits=True,
                                  image_placeholder="<img><|image_{i}|></img>"),
}
# Pipelines that need an input image but do not follow instructions: not a UMM baseline.
_NOT_BASELINES = ("Img2Img", "Inpaint", "Upscale", "ControlNet", "Video", "Audio")

# Model-card settings of published checkpoints, per task (fields left None use the pipeline's).
HUB_PRESETS: dict[str, dict[str, InferenceParams]] = {
    "stabilityai/stable-diffusion-3.5-large": {"generation": InferenceParams(steps=28, guidance_scale=3.5)},
    "stabilityai/stable-diffusion-3-medium-diffusers": {"generation": InferenceParams(steps=28, guidance_scale=7.0)},
    "black-forest-labs/FLUX.1-dev": {"generation": InferenceParams(steps=50, guidance_scale=3.5)},
    "black-forest-labs/FLUX.1-schnell": {"generation": InferenceParams(steps=4, guidance_scale=0.0)},
    "black-forest-labs/FLUX.1-Kontext-dev": {"editing": InferenceParams(guidance_scale=2.5)},
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": {"generation": InferenceParams(steps=20, guidance_scale=4.5)},
    "Qwen/Qwen-Image": {"generation": InferenceParams(steps=50, guidance_scale=4.0)},
    "Qwen/Qwen-Image-Edit": {"editing": InferenceParams(steps=50, guidance_scale=4.0)},
    "Shitao/OmniGen-v1-diffusers": {"generation": InferenceParams(steps=50, guidance_scale=2.5),
                                    "editing": InferenceParams(steps=50, guidance_scale=2.0, image_guidance_scale=1.6)},
    "timbrooks/instruct-pix2pix": {"editing": InferenceParams(steps=10, guidance_scale=7.5, image_guidance_scale=1.0)},
}


def convention_for(pipeline_class: type) -> Convention:
    name = pipeline_class.__name__
    if name in CONVENTIONS:
        return CONVENTIONS[name]
    if any(part in name for part in _NOT_BASELINES):
        raise ConfigError(f"diffusers pipeline {name} is neither text-to-image nor instruction editing; "
                          f"the 'diffusers' backbone runs those two kinds only")
    return Convention()


def pipeline_capabilities(pipeline_class: type) -> frozenset[TaskKind]:
    convention = convention_for(pipeline_class)
    kinds: set[TaskKind] = set()
    if convention.generates:
        kinds.add("generation")
    if convention.edits:
        kinds.add("editing")
    return frozenset(kinds)


class DiffusersBackbone(Backbone):
    key: ClassVar[str] = "diffusers"
    # What the family can do; each instance narrows this to its pipeline's (see module docstring).
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"generation", "editing"})
    per_instance_capabilities: ClassVar[bool] = True  # the pipeline's class decides
    route: ClassVar[str] = "diffusers"
    requires: ClassVar[tuple[str, ...]] = ("diffusers>=0.35",)
    pip_requirements: ClassVar[tuple[str, ...]] = ("diffusers>=0.35",)  # beyond the flavor's base requirements
    hub_ids: ClassVar[tuple[str, ...]] = tuple(HUB_PRESETS)
    notes: ClassVar[str] = "text-to-image pipelines generate, instruction-editing pipelines edit"

    def __init__(self, pipeline: Any, info: ModelInfo):
        self.pipeline = pipeline
        self.info = info
        self.convention = convention_for(type(pipeline))
        self.capabilities = pipeline_capabilities(type(pipeline))  # instance attribute: this pipeline's
        self._call = inspect.signature(type(pipeline).__call__).parameters
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)  # the runner shows its own progress


    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32",
             device: str = "cpu", allow_pickle: bool = False) -> DiffusersBackbone:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        require_safetensors(source, allow_pickle)
        from diffusers import DiffusionPipeline

        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; both accept torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = DiffusionPipeline.from_pretrained(source, revision=revision, torch_dtype=_DTYPES[dtype],
                                                         use_safetensors=not allow_pickle)
        pipeline = pipeline.to(device)
        return cls(pipeline, ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype))

    def save_pretrained(self, path: Path) -> None:
        self.pipeline.save_pretrained(path)

    def default_params(self, task: TaskKind) -> InferenceParams:
        def default(name: str | None) -> Any:
            if name is None or name not in self._call:
                return None
            value = self._call[name].default
            return None if value is inspect.Parameter.empty else value

        defaults = InferenceParams(
            seed=0,
            steps=default("num_inference_steps"),
            guidance_scale=default(self.convention.guidance_arg),
            image_guidance_scale=default(self.convention.image_guidance_arg) if task == "editing" else None,
        )
        preset = HUB_PRESETS.get(self.info.source, {}).get(task)
        return preset.merged_over(defaults) if preset else defaults

    # -- inference -----------------------------------------------------------------------

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        return self._run("generation", requests)

    def edit(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("editing")
        return self._run("editing", requests)

    def _resolve(self, task: TaskKind, request: InferenceRequest) -> InferenceParams:
        params = request.params.merged_over(self.default_params(task))
        drop: dict[str, Any] = {"temperature": None, "max_new_tokens": None}
        if task == "generation":
            drop["image_guidance_scale"] = None
        elif request.params.image_guidance_scale is not None and self.convention.image_guidance_arg is None:
            raise ValueError(f"{type(self.pipeline).__name__} has no image guidance; leave image_guidance_scale unset")
        if params.image_size is not None:
            # Latent pixels per image pixel, ×2 where a transformer packs 2×2 latent patches (SD3, FLUX).
            multiple = int(getattr(self.pipeline, "vae_scale_factor", 1) or 1)
            multiple *= 2 if getattr(self.pipeline, "transformer", None) is not None else 1
            if params.image_size % multiple:
                raise ValueError(f"{type(self.pipeline).__name__} needs image_size to be a multiple of {multiple}; "
                                 f"got {params.image_size}")
        if task == "editing" and len(request.images) > 1 and self.convention.image_placeholder is None:
            raise ValueError(f"{type(self.pipeline).__name__} edits one image per request; got {len(request.images)}")
        return params.model_copy(update=drop)

    def _run(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        start = time.perf_counter()
        params = [self._resolve(task, r) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for index, (request, p) in enumerate(zip(requests, params)):
            sizes = tuple(image.size for image in request.images) if task == "editing" else ()
            key = (p.steps, p.guidance_scale, p.image_guidance_scale, p.image_size, sizes)
            groups.setdefault(key, []).append(index)
        images: list[Image.Image | None] = [None] * len(requests)
        for indices in groups.values():
            outputs = self._call_pipeline(task, [requests[i] for i in indices], [params[i] for i in indices])
            for i, image in zip(indices, outputs):
                images[i] = image
        elapsed = (time.perf_counter() - start) / len(requests)
        results = []
        for image, p in zip(images, params):
            size = p.image_size if p.image_size is not None else (image.width if image.width == image.height else None)
            results.append(InferenceResult(images=[image], params=p.model_copy(update={"image_size": size}),
                                           elapsed_s=elapsed))
        return results

    def call_arguments(self, task: TaskKind, requests: Sequence[InferenceRequest],
                       params: Sequence[InferenceParams]) -> dict[str, Any]:
        """The keyword arguments of one pipeline call for requests that share steps, guidance and size."""
        first = params[0]
        convention = self.convention
        prompts = [r.prompt or "" for r in requests]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "generator": [torch.Generator(device="cpu").manual_seed(p.seed) for p in params],
            "output_type": "pil",
        }
        if first.steps is not None:
            kwargs["num_inference_steps"] = first.steps
        if first.guidance_scale is not None and convention.guidance_arg in self._call:
            kwargs[convention.guidance_arg] = first.guidance_scale
        if first.image_size is not None:
            kwargs["height"] = kwargs["width"] = first.image_size
        if task == "editing":
            if convention.image_placeholder is not None:
                kwargs["prompt"] = [
                    " ".join(convention.image_placeholder.format(i=k + 1) for k in range(len(r.images))) + " " + text
                    for r, text in zip(requests, prompts)
                ]
                kwargs[convention.image_arg] = [list(r.images) for r in requests]
            else:
                kwargs[convention.image_arg] = [r.images[0] for r in requests]
            if first.image_guidance_scale is not None and convention.image_guidance_arg:
                kwargs[convention.image_guidance_arg] = first.image_guidance_scale
        unknown = [name for name in kwargs if name not in self._call and "kwargs" not in self._call]
        if unknown:
            raise ValueError(f"{type(self.pipeline).__name__}.__call__ takes no {', '.join(unknown)}")
        return kwargs

    @torch.inference_mode()
    def _call_pipeline(self, task: TaskKind, requests: Sequence[InferenceRequest],
                       params: Sequence[InferenceParams]) -> list[Image.Image]:
        output = self.pipeline(**self.call_arguments(task, requests, params))
        return [image.convert("RGB") for image in output.images]


# -- tiny pipelines for tests and the embedded default ---------------------------------------

_TINY_SIZE = 64


def _tiny_components(seed: int, unet_in_channels: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    )
    tokenizer.model_max_length = 16
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 32), latent_channels=4,
        layers_per_block=1, norm_num_groups=32, sample_size=_TINY_SIZE,
    )
    unet = UNet2DConditionModel(
        sample_size=_TINY_SIZE // 4, in_channels=unet_in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _save_tiny(pipeline: Any, path: Path) -> DiffusersBackbone:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone = DiffusersBackbone(pipeline, ModelInfo(backbone=DiffusersBackbone.key, source=str(path)))
    backbone.save_pretrained(path)
    return backbone


def build_tiny(path: Path, seed: int = 0) -> DiffusersBackbone:
    """A tiny random Stable-Diffusion-style text-to-image pipeline (64 px, UNet + VAE + CLIP text), saved at `path`."""
    from diffusers import StableDiffusionPipeline

    return _save_tiny(StableDiffusionPipeline(**_tiny_components(seed, unet_in_channels=4)), path)


def build_tiny_editing(path: Path, seed: int = 0) -> DiffusersBackbone:
    """A tiny random InstructPix2Pix pipeline (the UNet also sees the input image's latents), saved at `path`."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return _save_tiny(StableDiffusionInstructPix2PixPipeline(**_tiny_components(seed, unet_in_channels=8)), path)
