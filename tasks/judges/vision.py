"""Vision judges: a judge that is shown images (WISE, UEval, Uni-MMMU; DPG-Bench's chat-VLM VQA).

A vision judge is any object with an `id` and `chat(requests, max_tokens, temperature) -> list[str]`,
where a `VisionRequest` is an optional system message, a text and the images shown after the
text. Backends: `openai` (any OpenAI-compatible endpoint, e.g. `vllm serve
Qwen/Qwen2.5-VL-72B-Instruct` or `python -m tasks.judges.server` on a local VLM; images go as
base64 PNG data URLs; endpoint, model and key resolved exactly as the text judge's `openai`
backend does) and `transformers` (a local `AutoModelForImageTextToText` with its processor's chat
template). The in-process vLLM backend takes text only. A recipe names a vision judge with the
same `JudgeConfig` as a text judge.

Replies are cached in the text judges' `JudgeCache`, keyed by judge id and a hash of the system
text, the prompt and the PNG bytes of every image, so a re-score costs nothing;
`vision_judge_all` applies the strict parsing and retry schedule of `tasks/judges/parsing.py`
and returns the same `Verdict`s, failures marked and counted, never guessed. A text judge
(anything with `complete`) is accepted for requests without images (UEval's text rubrics,
Uni-MMMU's geometry text): `as_vision_judge` wraps it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tasks.judges.base import JudgeConfig, judge_config, judge_config_from_env, judge_id
from tasks.judges.cache import JudgeCache, settings_key
from tasks.judges.parsing import ONE_RETRY, Attempt, Verdict, parse_with_retries
from umm_harness.core.errors import ConfigError


# --- requests and their cache key -----------------------------------------------------------


@dataclass(frozen=True)
class VisionRequest:
    """One judge call: an optional system message, a user text, and images shown after the text."""

    text: str
    images: tuple[Image.Image, ...] = field(default=())
    system: str | None = None

    def messages(self) -> list[dict[str, Any]]:
        """The request as chat messages, images as `image` parts (a processor's chat-template form)."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        content: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
        content += [{"type": "image", "image": image.convert("RGB")} for image in self.images]
        messages.append({"role": "user", "content": content})
        return messages

    def digest(self) -> str:
        """sha256 over the system text, the text and every image's PNG bytes (what the reply depends on)."""
        h = hashlib.sha256()
        h.update((self.system or "").encode("utf-8") + b"\x00" + self.text.encode("utf-8"))
        for image in self.images:
            h.update(b"\x00img:" + hashlib.sha256(png_bytes(image)).digest())
        return h.hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def openai_messages(request: VisionRequest) -> list[dict[str, Any]]:
    """The request as OpenAI chat messages, images as base64 PNG `image_url` parts."""
    messages = request.messages()
    for message in messages:
        message["content"] = [
            {"type": "image_url", "image_url": {"url": data_url(part["image"])}} if part["type"] == "image" else part
            for part in message["content"]
        ]
    return messages


# --- vision judge backends ------------------------------------------------------------------


class OpenAIVisionJudge:
    """A VLM behind an OpenAI-compatible `/v1/chat/completions` endpoint (`vllm serve`, hosted APIs)."""

    backend = "openai"

    def __init__(self, base_url: str | Sequence[str] | None = None, model: str | None = None,
                 revision: str | None = None, *,
                 timeout_s: float = 120.0, concurrency: int = 8):
        from tasks.judges.openai_backend import OpenAIJudge

        # The text backend resolves endpoint, model and key from arguments or the environment,
        # retries and reports errors; this class only builds multimodal messages for it.
        self._http = OpenAIJudge(base_url=base_url, model=model, revision=revision, timeout_s=timeout_s,
                                 concurrency=concurrency)

    @property
    def id(self) -> str:
        return self._http.id

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        if not requests:
            return []
        workers = min(self._http.concurrency, len(requests))
        with ThreadPoolExecutor(workers, thread_name_prefix="vision-judge") as pool:
            return list(pool.map(lambda r: self._one(r, max_tokens, temperature), requests))

    def payload(self, request: VisionRequest, max_tokens: int, temperature: float) -> dict[str, Any]:
        return {"model": self._http.model, "messages": openai_messages(request), "max_tokens": max_tokens,
                "temperature": temperature}

    def _one(self, request: VisionRequest, max_tokens: int, temperature: float) -> str:
        from tasks.judges.base import JudgeError

        answer = self._http._request("POST", "/chat/completions", self.payload(request, max_tokens, temperature))
        try:
            return answer["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(f"judge endpoint {self._http.base_url} sent a reply without choices[0].message") from None


class TransformersVisionJudge:
    """A local VLM (`AutoModelForImageTextToText` + `AutoProcessor`) with its processor's chat template.

    Greedy at temperature 0; above it, sampled from a generator seeded by the request itself, so
    the same call gives the same reply. Like the text backend, a local folder without a revision
    gets a fingerprint of its weights in the id, so cached replies never cross weights.
    """

    backend = "transformers"

    def __init__(self, model: str | Any, revision: str | None = None, *, processor: Any = None,
                 device: str | None = None, dtype: str | None = None, name: str | None = None):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from tasks.judges.transformers_backend import folder_fingerprint

            self.model_name = model
            folder = Path(model).expanduser()
            hub_revision = None if folder.is_dir() else revision
            revision = revision or (folder_fingerprint(folder) if folder.is_dir() else None)
            processor = processor or AutoProcessor.from_pretrained(model, revision=hub_revision)
            torch_dtype = getattr(torch, dtype) if dtype else ("auto" if self.device != "cpu" else torch.float32)
            model = AutoModelForImageTextToText.from_pretrained(model, revision=hub_revision, dtype=torch_dtype,
                                                                use_safetensors=True)
        else:
            self.model_name = name or type(model).__name__
        self.revision = revision
        self.model = model.to(self.device).eval()
        self.processor = processor

    @property
    def id(self) -> str:
        return judge_id(self.backend, self.model_name, self.revision)

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        return [reply.text for reply in self.chat_with_usage([r.messages() for r in requests], max_tokens, temperature)]

    def chat_with_usage(self, conversations: Sequence[list[dict[str, Any]]], max_tokens: int,
                        temperature: float = 0.0) -> list[Any]:
        """One reply per conversation (messages whose content parts are `text` or `image` with a PIL
        image), with token counts: what `python -m tasks.judges.server` answers with."""
        return [self._one(conversation, max_tokens, temperature) for conversation in conversations]

    def _one(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float) -> Any:
        import torch

        from tasks.judges.transformers_backend import Reply

        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        prompt_tokens = int(inputs["input_ids"].shape[1])
        sample = temperature > 0
        options = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if sample else {
            "do_sample": False}
        seed = int.from_bytes(hashlib.sha256(inputs["input_ids"].cpu().numpy().tobytes()).digest()[:4], "little")
        with torch.random.fork_rng(devices=[] if self.model.device.type == "cpu" else None), torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, **options)
        new = out[0, prompt_tokens:]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        end = next((k + 1 for k, token in enumerate(new.tolist()) if token in stops), len(new))
        text = self.processor.decode(new[:end], skip_special_tokens=True).strip()
        return Reply(text, prompt_tokens, end)


class TextOnlyVisionJudge:
    """A text judge (`complete`) used for requests without images; a request with images is refused."""

    def __init__(self, judge: Any):
        self.inner = judge

    @property
    def id(self) -> str:
        return self.inner.id

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        if any(r.images for r in requests):
            raise ConfigError(f"judge {self.inner.id} is a text-only judge but this benchmark shows it images; "
                              "configure a vision-language judge (e.g. `vllm serve Qwen/Qwen2.5-VL-72B-Instruct`)")
        prompts = [f"{r.system}\n\n{r.text}" if r.system else r.text for r in requests]
        return list(self.inner.complete(prompts, max_tokens, temperature))


class CachedVisionJudge:
    """Replies on disk (the text judges' `JudgeCache`), keyed by judge id, request digest and settings."""

    def __init__(self, judge: Any, folder: Path | str | None = None):
        self.inner = judge
        self.cache = JudgeCache(folder)
        self.backend_calls = 0
        self.backend_requests = 0
        self.hits = 0

    @property
    def id(self) -> str:
        return self.inner.id

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0, *,
             attempt: int = 0) -> list[str]:
        replies, hits, asked = self.cache.answer(
            self.id, [request.digest() for request in requests], requests,
            "vision;" + settings_key(max_tokens, temperature, attempt),
            lambda missing: self.inner.chat(missing, max_tokens, temperature))
        self.hits += hits
        if asked:
            self.backend_calls += 1
            self.backend_requests += asked
        return replies


def as_vision_judge(judge: Any, cache_dir: Path | str | None = None) -> CachedVisionJudge:
    """A cached vision judge from: a vision judge, a text judge, a `JudgeConfig` or its dict, or None (env)."""
    if isinstance(judge, CachedVisionJudge):
        return judge
    if judge is None or isinstance(judge, dict | JudgeConfig):
        return make_vision_judge(judge, cache_dir)
    if hasattr(judge, "chat") and not hasattr(judge, "complete"):
        return CachedVisionJudge(judge, cache_dir)
    if hasattr(judge, "complete"):
        from tasks.judges.cache import CachedJudge

        # The vision cache keys retries by attempt; a text cache inside would answer a retry
        # with the reply that failed to parse, so the text judge is used without its own cache.
        inner = judge.inner if isinstance(judge, CachedJudge) else judge
        return CachedVisionJudge(TextOnlyVisionJudge(inner), cache_dir)
    raise ConfigError(f"not a judge: {type(judge).__name__} (needs `chat` for images or `complete` for text)")


def judge_spec_id(spec: Any) -> str | None:
    """The id a judge spec names, without building the judge (None when no judge is configured).

    For an `openai` config without a model the id says `<served model>`: the endpoint is asked
    only when the judge is built, and records then carry the full id."""
    if spec is None:
        spec = judge_config_from_env()
        if spec is None:
            return None
    if isinstance(spec, dict):
        spec = judge_config(spec)
    if isinstance(spec, JudgeConfig):
        model = spec.model or (os.environ.get("UMM_JUDGE_MODEL") if spec.backend == "openai" else None)
        base = judge_id(spec.backend, model or "<served model>", spec.revision)
        return base + (f"#max_tokens={spec.max_tokens}" if spec.max_tokens is not None else "")
    return str(getattr(spec, "id", type(spec).__name__))


class LazyVisionJudge:
    """A judge built on first use, so a generate-only run needs none, whose id is known before."""

    def __init__(self, spec: Any, cache_dir: Path | str | None = None):
        self.spec, self.cache_dir = spec, cache_dir
        self._judge: CachedVisionJudge | None = None

    def get(self) -> CachedVisionJudge:
        if self._judge is None:
            self._judge = as_vision_judge(self.spec, self.cache_dir)
        return self._judge

    @property
    def id(self) -> str | None:
        return self._judge.id if self._judge is not None else judge_spec_id(self.spec)


def make_vision_judge(config: JudgeConfig | dict[str, Any] | None = None,
                      cache_dir: Path | str | None = None) -> CachedVisionJudge:
    """The vision judge a `JudgeConfig` names (None: the UMM_JUDGE_* environment), with its cache."""
    if config is None:
        config = judge_config_from_env()
        if config is None:
            raise ConfigError(
                "no judge configured: name a vision-language judge in the recipe (judge: {backend: openai, "
                "base_url: ..., model: ...}) or set UMM_JUDGE_BASE_URL and UMM_JUDGE_MODEL, e.g. for "
                "`vllm serve Qwen/Qwen2.5-VL-72B-Instruct`"
            )
    elif isinstance(config, dict):
        config = judge_config(config, "recipe")
    if config.backend == "openai":
        judge: Any = OpenAIVisionJudge(config.base_url, config.model, config.revision, timeout_s=config.timeout_s,
                                       concurrency=config.concurrency)
    elif config.backend == "transformers":
        judge = TransformersVisionJudge(config.model, config.revision)
    else:
        raise ConfigError("the vllm in-process judge backend takes text only; for image judging run "
                          "`vllm serve <vision model>` and use the openai backend")
    if config.max_tokens is not None:
        judge = VisionFixedReplyLength(judge, config.max_tokens)
    return CachedVisionJudge(judge, cache_dir if cache_dir is not None else config.cache_dir)


class VisionFixedReplyLength:
    """A vision judge whose replies may be `max_tokens` long whatever the benchmark asks for (the id says so)."""

    def __init__(self, judge: Any, max_tokens: int):
        self.inner, self.max_tokens = judge, max_tokens

    @property
    def id(self) -> str:
        return f"{self.inner.id}#max_tokens={self.max_tokens}"

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        return self.inner.chat(requests, self.max_tokens, temperature)


def vision_judge_all(judge: CachedVisionJudge | Any, requests: Sequence[VisionRequest], parse: Callable[[str], Any], *,
                     max_tokens: int, schedule: Sequence[Attempt] = ONE_RETRY) -> list[Verdict]:
    """`tasks.judges.parsing.judge_all` for vision requests: strict parse, retries per schedule, failures marked."""

    def ask_pending(pending: list[int], attempt: Attempt, number: int) -> list[str]:
        asked = [VisionRequest(requests[i].text + attempt.suffix, requests[i].images, requests[i].system)
                 for i in pending]
        if isinstance(judge, CachedVisionJudge):
            return judge.chat(asked, max_tokens, attempt.temperature, attempt=number)
        return judge.chat(asked, max_tokens, attempt.temperature)

    return parse_with_retries(len(requests), parse, schedule, ask_pending)
