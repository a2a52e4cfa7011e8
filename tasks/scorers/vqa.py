"""VQA models: what DPG-Bench asks every question of every tile.

A VQA model has an `id` and `answer(images, questions) -> list[str]`, one short answer per
(image, question) pair. The official model, mPLUG-large VQA (modelscope
`damo/mplug_visual-question-answering_coco_large_en`), is not in transformers; the default here
is BLIP's VQA model (`Salesforce/blip-vqa-capfilt-large`, `BlipForQuestionAnswering`): like
mPLUG-large it is a ViT-L image encoder with a generative answer decoder fine-tuned on VQA v2,
and it answers in lower-case VQA style ("yes", "no", "2"), which DPG-Bench's exact
`answer == "yes"` rule expects. `ChatVQA` puts any vision judge (`tasks/judges/vision.py`: a
local chat VLM or one behind an endpoint) behind the same interface, asking for a one-word
answer and normalising the reply to VQA style (lower-case, trailing punctuation removed); the
raw reply is kept too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from tasks.judges.base import JudgeConfig, judge_config, judge_id
from tasks.judges.vision import VisionRequest, make_vision_judge
from umm_harness.core.errors import ConfigError

DEFAULT_VQA = "Salesforce/blip-vqa-capfilt-large"
VQA_SUFFIX = " Answer with one word."


def vqa_style(reply: str) -> str:
    """A chat reply as a VQA answer: first line, lower-case, surrounding space and end punctuation removed."""
    first = (reply or "").strip().splitlines()[0] if (reply or "").strip() else ""
    return re.sub(r"[\s.!?,;:]+$", "", first.strip().lower())


class BlipVQA:
    """BLIP's VQA model (`BlipForQuestionAnswering`): generated short answers, greedy."""

    def __init__(self, model: str | Any = DEFAULT_VQA, revision: str | None = None, *, processor: Any = None,
                 device: str | None = None, batch_size: int = 16, max_new_tokens: int = 10, name: str | None = None):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str):
            from transformers import BlipForQuestionAnswering, BlipProcessor

            self.model_name = model
            processor = processor or BlipProcessor.from_pretrained(model, revision=revision)
            model = BlipForQuestionAnswering.from_pretrained(model, revision=revision, use_safetensors=True)
        else:
            self.model_name = name or type(model).__name__
        self.revision = revision
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    @property
    def id(self) -> str:
        return judge_id("blip-vqa", self.model_name, self.revision)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        import torch

        answers: list[str] = []
        for start in range(0, len(questions), self.batch_size):
            batch_images = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            batch_questions = list(questions[start : start + self.batch_size])
            inputs = self.processor(images=batch_images, text=batch_questions, return_tensors="pt", padding=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            answers += [text.strip() for text in self.processor.batch_decode(out, skip_special_tokens=True)]
        return answers


class ChatVQA:
    """A vision judge (chat VLM) as a VQA model: one-word answers, normalised to VQA style."""

    def __init__(self, judge: Any, suffix: str = VQA_SUFFIX, max_tokens: int = 8):
        self.judge = judge
        self.suffix = suffix
        self.max_tokens = max_tokens
        self.last_raw: list[str] = []

    @property
    def id(self) -> str:
        return f"chat-vqa:{self.judge.id}"

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        requests = [VisionRequest(q + self.suffix, (image,)) for image, q in zip(images, questions)]
        self.last_raw = self.judge.chat(requests, self.max_tokens, 0.0)
        return [vqa_style(reply) for reply in self.last_raw]


def make_vqa(spec: Any = None, *, revision: str | None = None, device: str | None = None) -> Any:
    """A VQA model from: an object with `answer`, None (BLIP default), a hub id / folder (BLIP),
    or a judge config dict/`JudgeConfig` (a chat VLM asked through `ChatVQA`)."""
    if spec is not None and hasattr(spec, "answer"):
        return spec
    if spec is None or isinstance(spec, str):
        return BlipVQA(spec or DEFAULT_VQA, revision, device=device)
    if isinstance(spec, dict | JudgeConfig):
        return ChatVQA(make_vision_judge(spec))
    raise ConfigError(f"vqa: expected a hub id, a judge config or a VQA object, got {type(spec).__name__}")


def vqa_scorer_id(spec: Any = None, revision: str | None = None) -> str:
    """The id `make_vqa(spec)` will have, without loading it."""
    if spec is not None and hasattr(spec, "id"):
        return str(spec.id)
    if spec is None or isinstance(spec, str):
        return judge_id("blip-vqa", spec or DEFAULT_VQA, revision)
    config = judge_config(spec) if isinstance(spec, dict) else spec
    return f"chat-vqa:{judge_id(config.backend, config.model or '<server default>', config.revision)}"
