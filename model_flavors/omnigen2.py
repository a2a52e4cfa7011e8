"""OmniGen2 (VectorSpaceLab/OmniGen2, hub `OmniGen2/OmniGen2`): understanding, text-to-image and
instruction editing, on the authors' code.

The checkpoint is a diffusers-layout folder (`mllm/` Qwen2.5-VL, `transformer/`, `vae/`,
`scheduler/`, `processor/`). Qwen2.5-VL and `AutoencoderKL` are native (transformers,
diffusers); the diffusion transformer (`OmniGen2Transformer2DModel`), its flow-matching
scheduler and `OmniGen2Pipeline` come from the user's checkout (`repo_path` option or
UMM_OMNIGEN2_REPO), imported at run time; written against commit 0f72fa92564d (2025-07-05).
The adapter assembles the pipeline from the components itself, so no `trust_remote_code`.

- Generation and editing: `OmniGen2Pipeline.__call__`, one request per call with its own seeded
  generator. Defaults are the repository's `inference.py` / `example_*.sh`: 50 Euler steps,
  1024 px, text CFG 4.0 (editing: text 5.0, image 2.0), CFG over the whole schedule, the CLI's
  negative prompt, prompts up to 1024 tokens.
- Understanding: the Qwen2.5-VL `mllm` answers directly (`generate`, greedy), as the chat
  pipeline does for text turns, with a plain assistant system prompt; images go through
  `Qwen2VLImageProcessor`. `Qwen2_5_VLProcessor` itself needs torchvision (its video processor),
  which does not import beside the CPU torch here, so `TextImageProcessor` pairs the tokenizer
  with the image processor and expands `<|image_pad|>` the way the Qwen2-VL processor does; the
  generation pipeline only uses its `.tokenizer`.

Small local checkpoints are copied into a saved model; large ones and hub ids are recorded by
reference (`umm_omnigen2.json`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from PIL import Image

from model_flavors.upstream_checkout import checkout_commit, same_code
from umm_harness.core.backbone import Backbone, ModelInfo, Upstream
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind

log = logging.getLogger(__name__)

HUB_ID = "OmniGen2/OmniGen2"
UPSTREAM_URL = "https://github.com/VectorSpaceLab/OmniGen2"
UPSTREAM_COMMIT = "0f72fa92564d9f8ba76f53fcc3c05aca2372458f"
REPO_ENV = "UMM_OMNIGEN2_REPO"
ANY_COMMIT_ENV = "UMM_OMNIGEN2_ANY_COMMIT"
REFERENCE_FILE = "umm_omnigen2.json"
COMPONENTS = ("mllm", "transformer", "vae", "scheduler", "processor")
COPY_LIMIT_BYTES = 1 << 30
NEGATIVE_PROMPT = ("(((deformed))), blurry, over saturation, bad anatomy, disfigured, poorly drawn face, mutation, "
                   "mutated, (extra_limb), (ugly), (poorly drawn hands), fused fingers, messy drawing, broken legs "
                   "censor, censored, censor_bar")  # inference.py's --negative_prompt default
MAX_SEQUENCE_LENGTH = 1024  # inference.py passes max_sequence_length=1024
ANSWER_SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

_UPSTREAM_NAMES = {
    "omnigen2.pipelines.omnigen2.pipeline_omnigen2": "OmniGen2Pipeline",
    "omnigen2.models.transformers.transformer_omnigen2": "OmniGen2Transformer2DModel",
    "omnigen2.schedulers.scheduling_flow_match_euler_discrete": "FlowMatchEulerDiscreteScheduler",
}


def resolve_checkout(repo_path: str | Path | None) -> Path:
    """The OmniGen2 checkout to import from, checked for presence and commit."""
    chosen = repo_path or os.environ.get(REPO_ENV)
    how = (f"clone {UPSTREAM_URL}, `git checkout {UPSTREAM_COMMIT[:12]}`, then set `repo_path` in the recipe "
           f"(backbone_options) or {REPO_ENV}=<checkout>")
    if not chosen:
        raise ConfigError(f"omnigen2 needs a checkout of the upstream repository and none is set: {how}")
    repo = Path(chosen).expanduser()
    if not (repo / "omnigen2" / "pipelines" / "omnigen2").is_dir():
        raise ConfigError(f"'{repo}' is not a checkout of {UPSTREAM_URL} (no omnigen2/pipelines/omnigen2): {how}")
    commit = checkout_commit(repo)
    if commit is not None and commit != UPSTREAM_COMMIT and os.environ.get(ANY_COMMIT_ENV) != "1":
        raise ConfigError(f"omnigen2 checkout '{repo}' is at commit {commit[:12]}, but this adapter was written "
                          f"against {UPSTREAM_COMMIT[:12]}; check that commit out, or set {ANY_COMMIT_ENV}=1")
    return repo.resolve()


def import_upstream(repo: Path) -> SimpleNamespace:
    """OmniGen2's pipeline, transformer and scheduler classes, imported from `repo`."""
    loaded = sys.modules.get("omnigen2")
    origin = "".join(getattr(loaded, "__path__", []) or [])
    if loaded is not None and not origin.startswith(str(repo)) and not same_code(Path(origin), repo):
        raise ConfigError(f"a different 'omnigen2' package is already imported ({origin}); run OmniGen2 from "
                          f"{repo} in a process that has not imported it")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    api = {}
    for module_name, name in _UPSTREAM_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"importing OmniGen2's {module_name} from {repo} failed ({exc}); install its "
                              f"requirements ({', '.join(OmniGen2.pip_requirements)})") from None
        if not hasattr(module, name):
            raise ConfigError(f"OmniGen2 checkout {repo} lacks {module_name}.{name}; the adapter was written "
                              f"against commit {UPSTREAM_COMMIT[:12]}")
        api[name] = getattr(module, name)
    return SimpleNamespace(**api)


class TextImageProcessor:
    """A tokenizer and a Qwen2-VL image processor, doing what `Qwen2_5_VLProcessor` does for
    text and images: each `<|image_pad|>` becomes one token per merged patch of its image."""

    def __init__(self, tokenizer: Any, image_processor: Any):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, folder: Path) -> TextImageProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessor

        return cls(AutoTokenizer.from_pretrained(str(folder)), Qwen2VLImageProcessor.from_pretrained(str(folder)))

    def save_pretrained(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))
        self.image_processor.save_pretrained(str(folder))

    def __call__(self, text: str, images: Sequence[Image.Image] = ()) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        if images:
            pixels = self.image_processor(images=list(images), return_tensors="pt")
            inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
            merge = self.image_processor.merge_size ** 2
            pieces = text.split("<|image_pad|>")
            if len(pieces) - 1 != len(images):
                raise ValueError(f"{len(pieces) - 1} image placeholders for {len(images)} images")
            text = pieces[0] + "".join("<|image_pad|>" * int(grid.prod() // merge) + piece
                                       for grid, piece in zip(pixels["image_grid_thw"], pieces[1:]))
        inputs.update(self.tokenizer(text, return_tensors="pt"))
        return inputs


class OmniGen2(Backbone):
    key: ClassVar[str] = "omnigen2"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation", "editing"})
    route: ClassVar[str] = "upstream"
    requires: ClassVar[tuple[str, ...]] = (
        f"a checkout of {UPSTREAM_URL} at {UPSTREAM_COMMIT[:12]}", "diffusers>=0.35", "transformers>=5.0")
    hub_ids: ClassVar[tuple[str, ...]] = (HUB_ID,)
    notes: ClassVar[str] = "model source: a diffusers-layout checkpoint (hub id or folder); repo_path: the checkout"
    # The repository pins transformers==4.51.3 / torch 2.6 and leaves diffusers open; its inference
    # path runs on these releases (the harness's own), without torchvision, timm or flash-attn.
    pip_requirements: ClassVar[tuple[str, ...]] = (
        "torch==2.13.0", "transformers>=5.0,<6", "diffusers>=0.35,<0.43", "accelerate>=1.0", "einops>=0.8",
        "safetensors>=0.4", "huggingface_hub>=0.30",
    )
    upstream: ClassVar[Upstream] = Upstream(repo=UPSTREAM_URL, commit=UPSTREAM_COMMIT)

    def __init__(self, pipeline: Any, processor: TextImageProcessor, info: ModelInfo, checkpoint: str,
                 repo: Path, image_size: int = 1024):
        self.pipeline = pipeline
        self.processor = processor
        self.info = info
        self.checkpoint = checkpoint
        self.repo_path = repo
        self.image_size = image_size

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "bfloat16", device: str = "cuda",
             repo_path: str | Path | None = None) -> OmniGen2:
        import torch
        from diffusers import AutoencoderKL
        from transformers import Qwen2_5_VLForConditionalGeneration

        folder, reference = Path(source), {}
        if (folder / REFERENCE_FILE).is_file():
            reference = json.loads((folder / REFERENCE_FILE).read_text())
            if reference.get("checkpoint", ".") != ".":
                folder = Path(reference["checkpoint"])
        repo = resolve_checkout(repo_path or os.environ.get(REPO_ENV) or reference.get("repo_path"))
        api = import_upstream(repo)
        checkpoint = str(folder.resolve()) if folder.is_dir() else str(folder)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(folder), revision=revision))
        missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
        if missing:
            raise ConfigError(f"{folder} is not an OmniGen2 checkpoint (no {', '.join(missing)}/); "
                              f"download {HUB_ID}")
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        processor = TextImageProcessor.from_pretrained(folder / "processor")
        pipeline = api.OmniGen2Pipeline(
            transformer=api.OmniGen2Transformer2DModel.from_pretrained(str(folder / "transformer"),
                                                                       torch_dtype=torch_dtype, use_safetensors=True),
            vae=AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=torch_dtype, use_safetensors=True),
            scheduler=api.FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler")),
            mllm=Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder / "mllm"), dtype=torch_dtype,
                                                                    use_safetensors=True),
            processor=processor,
        ).to(device)
        pipeline.set_progress_bar_config(disable=bool(os.environ.get("CI")))
        info = ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype)
        return cls(pipeline, processor, info, checkpoint, repo, int(reference.get("image_size", 1024)))

    def save_pretrained(self, path: Path) -> None:
        """A local checkpoint under 1 GB travels with the model; anything bigger by reference."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = Path(self.checkpoint)
        reference = {"checkpoint": self.checkpoint, "repo_path": str(self.repo_path),
                     "commit": checkout_commit(self.repo_path), "image_size": self.image_size}
        if folder.is_dir() and _size(folder) < COPY_LIMIT_BYTES:
            for part in COMPONENTS:
                shutil.copytree(folder / part, path / part)
            shutil.copy2(folder / "model_index.json", path / "model_index.json")
            reference["checkpoint"] = "."
        (path / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "understanding":
            return InferenceParams(seed=0, max_new_tokens=512, temperature=0.0)
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=4.0, image_guidance_scale=1.0, steps=50,
                                   image_size=self.image_size)
        return InferenceParams(seed=0, guidance_scale=5.0, image_guidance_scale=2.0, steps=50)

    def _resolved(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceParams]:
        self.check_supports(task)
        return [request.params.merged_over(self.default_params(task)) for request in requests]

    def _draw(self, request: InferenceRequest, params: InferenceParams) -> Image.Image:
        import torch

        size = {"height": params.image_size, "width": params.image_size} if params.image_size else {}
        output = self.pipeline(
            prompt=request.prompt, negative_prompt=NEGATIVE_PROMPT, input_images=list(request.images) or None,
            num_inference_steps=params.steps, text_guidance_scale=params.guidance_scale,
            image_guidance_scale=params.image_guidance_scale, cfg_range=(0.0, 1.0),
            max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator("cpu").manual_seed(params.seed),
            output_type="pil", **size,
        )
        return output.images[0].convert("RGB")

    def _images(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        resolved = self._resolved(task, requests)
        results = []
        for request, params in zip(requests, resolved):
            start = time.perf_counter()
            image = self._draw(request, params)
            results.append(InferenceResult(images=[image], params=params, elapsed_s=time.perf_counter() - start))
        return results

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        return self._images("generation", requests)

    def edit(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        return self._images("editing", requests)

    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        import torch

        resolved = self._resolved("understanding", requests)
        mllm, tokenizer = self.pipeline.mllm, self.processor.tokenizer
        stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        results = []
        for request, params in zip(requests, resolved):
            start = time.perf_counter()
            text = (f"<|im_start|>system\n{ANSWER_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
                    + IMAGE_PLACEHOLDER * len(request.images) + (request.prompt or "")
                    + "<|im_end|>\n<|im_start|>assistant\n")
            inputs = {k: v.to(mllm.device) for k, v in self.processor(text, request.images).items()}
            torch.manual_seed(params.seed)
            sampled = bool(params.temperature)
            with torch.no_grad():
                ids = mllm.generate(**inputs, max_new_tokens=params.max_new_tokens, do_sample=sampled,
                                    temperature=params.temperature if sampled else None, eos_token_id=stop,
                                    pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            results.append(InferenceResult(text=answer.strip(), params=params,
                                           elapsed_s=time.perf_counter() - start))
        return results


def _size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
