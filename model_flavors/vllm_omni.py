"""A client for a running vllm-omni server: the engine route for BAGEL and OmniGen2.

vllm-omni (github.com/vllm-project/vllm-omni) serves omni-modal models behind vLLM's
OpenAI-compatible server (`vllm serve <model> --omni --port 8000`). Written against the API its
0.2x releases document for BAGEL-7B-MoT (`examples/online_serving/bagel/README.md` and
`vllm_omni/model_extras/bagel.py` as of 2026):

- `GET /v1/models` → `{"data": [{"id": "<served model>"}, ...]}` (used as the health check);
- `POST /v1/chat/completions` with OpenAI `messages` whose user content is a list of
  `{"type": "text", "text": ...}` and `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`
  parts, `"modalities": ["image"]` or `["text"]`, and generation fields at the top level of the
  body (`height`, `width`, `num_inference_steps`, `seed`, `negative_prompt`, and per-model
  extras such as BAGEL's `cfg_text_scale`, `cfg_img_scale`, `cfg_interval`, `cfg_renorm_type`,
  `cfg_renorm_min`, `timestep_shift`, `think`, `max_think_tokens`, `do_sample`,
  `text_temperature`); text answers take the usual `max_tokens`, `temperature`, `seed`;
- the reply's `choices[i].message.content` is either a string (text) or a list of
  `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` parts (images); a
  reply may carry several choices (e.g. thinking text in one, the image in another).

The server batches concurrent requests itself, so a batch is sent as concurrent requests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image

from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import decode_image, encode_png

API_VERSION = "vllm-omni 0.2x OpenAI-compatible API (/v1/models, /v1/chat/completions)"
DEFAULT_TIMEOUT_S = float(os.environ.get("UMM_VLLM_OMNI_TIMEOUT", "900"))


class VllmOmniError(RuntimeError):
    """The server answered a request with an error, or stopped answering mid-run."""


@dataclass
class ChatReply:
    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)

    @property
    def text(self) -> str | None:
        return "\n".join(self.texts) if self.texts else None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(image: Image.Image) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encode_png(image)}"}}


def normalize_url(url: str) -> str:
    """`http://host:port`, with any trailing `/` or `/v1` removed."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def parse_reply(body: dict[str, Any]) -> ChatReply:
    """Texts and images from every choice of a chat completion body."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise VllmOmniError(f"not a chat completion (no 'choices'): {str(body)[:300]}")
    reply = ChatReply()
    for choice in body["choices"]:
        content = (choice.get("message") or {}).get("content")
        if isinstance(content, str):
            if content.strip():
                reply.texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text" and part.get("text"):
                reply.texts.append(part["text"])
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                try:
                    reply.images.append(decode_image(url))
                except ValueError as exc:
                    raise VllmOmniError(f"the server returned an image that does not decode ({exc})") from None
    return reply


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


class VllmOmniClient:
    """One vllm-omni server, named by its base URL (`http://host:port`)."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, connect_timeout_s: float = 5.0,
                 api_key: str | None = None, max_concurrency: int = 8):
        self.url = normalize_url(url)
        self.timeout = (connect_timeout_s, timeout_s)
        self.max_concurrency = max_concurrency
        key = api_key or os.environ.get("UMM_VLLM_OMNI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def served_models(self, start_hint: str) -> list[str]:
        """The model ids the server serves; a server that does not answer is a `ConfigError` naming what to do."""
        try:
            response = requests.get(f"{self.url}/v1/models", headers=self.headers, timeout=self.timeout[0] * 2)
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise ConfigError(
                f"no vllm-omni server answers at {self.url} ({reason}); start one with `{start_hint}` "
                f"or pass the URL of a running one"
            ) from None
        if response.status_code != 200:
            raise ConfigError(f"{self.url}/v1/models answered HTTP {response.status_code} "
                              f"({_server_message(response)}); is this a vllm-omni server?")
        try:
            return [str(item["id"]) for item in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.url}/v1/models did not return an OpenAI model list; "
                              f"is this a vllm-omni server?") from None

    def chat(self, payload: dict[str, Any]) -> ChatReply:
        return parse_reply(self.post("/v1/chat/completions", payload))

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST `payload` to `path`; the JSON answer, or a `VllmOmniError` that says what went wrong."""
        try:
            response = requests.post(f"{self.url}{path}", json=payload, headers=self.headers,
                                     timeout=self.timeout)
        except requests.Timeout:
            raise VllmOmniError(f"vllm-omni server at {self.url} did not answer within {self.timeout[1]:g} s "
                                f"(raise UMM_VLLM_OMNI_TIMEOUT for slow generations)") from None
        except requests.RequestException as exc:
            raise VllmOmniError(f"vllm-omni server at {self.url} stopped answering ({type(exc).__name__}); "
                                f"check that it is still running") from None
        if response.status_code != 200:
            raise VllmOmniError(f"vllm-omni server at {self.url} refused the request: HTTP {response.status_code}: "
                                f"{_server_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise VllmOmniError(f"vllm-omni server at {self.url} answered with non-JSON: "
                                f"{response.text[:300]}") from None

    def chat_many(self, payloads: Sequence[dict[str, Any]]) -> list[ChatReply]:
        """Concurrent requests (the server batches them); replies in order; the first failure propagates."""
        if len(payloads) == 1:
            return [self.chat(payloads[0])]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return list(pool.map(self.chat, payloads))

