"""A local OpenAI-compatible endpoint for a transformers judge: a causal LM or a chat VLM.

    python -m tasks.judges.server --model <folder or hub id> --port 8000 [--api-key KEY]

serves `GET /v1/models` and `POST /v1/chat/completions` (n = 1, no streaming) on 127.0.0.1
only; the model is loaded before the port opens, so an answering `/v1/models` means ready. A
model whose config has a vision tower (LLaVA, Qwen2.5-VL, ...) is loaded as
`AutoModelForImageTextToText` and accepts `image_url` parts holding base64 `data:` URLs, as
`vllm serve` does for the vision judges; the server never fetches a URL. A text model refuses
image parts. For real judges use `vllm serve`, which batches and shards; this server takes one
request at a time. With an API key (`--api-key` or UMM_JUDGE_SERVER_API_KEY), requests must
carry `Authorization: Bearer <key>`. Defaults follow the OpenAI API: temperature 1.0 unless the
request says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

HOST = "127.0.0.1"


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields this server ignores

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    n: int = 1
    stream: bool = False


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


class BadMessage(ValueError):
    """A message this server cannot show its model; the text says which message and part."""


def _text(index: int, message: Message) -> str:
    """A message's text, for a text-only model."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for k, part in enumerate(message.content):
        if part.get("type") != "text":
            raise BadMessage(f"messages[{index}].content[{k}]: this server's model is text-only; "
                             f"send text parts only (got type {part.get('type')!r})")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _image(url: str, where: str) -> Any:
    from PIL import Image

    header, _, payload = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64")):
        raise BadMessage(f"{where}: image_url must be a base64 data URL (data:image/png;base64,...); "
                         "this server fetches nothing")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise BadMessage(f"{where}: not a readable image ({type(exc).__name__})") from None
    return image.convert("RGB")


def _parts(index: int, message: Message) -> list[dict[str, Any]]:
    """A message's content as text and PIL-image parts, for a vision model's chat template."""
    if message.content is None or isinstance(message.content, str):
        return [{"type": "text", "text": message.content or ""}]
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(message.content):
        where = f"messages[{index}].content[{k}]"
        if part.get("type") == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise BadMessage(f"{where}: image_url needs a url")
            parts.append({"type": "image", "image": _image(url, where)})
        else:
            raise BadMessage(f"{where}: unsupported part type {part.get('type')!r} (text or image_url)")
    return parts


def create_app(judge: Any, served_model_name: str, api_key: str | None = None,
               default_max_tokens: int = 256, vision: bool = False) -> FastAPI:
    """The app around a loaded `TransformersJudge` or, with `vision`, a `TransformersVisionJudge`
    (anything with their `chat_with_usage`)."""
    app = FastAPI(title="umm-harness judge server", docs_url=None, redoc_url=None)
    lock = threading.Lock()
    created = int(time.time())

    @app.middleware("http")
    async def _authorize(request: Request, call_next):
        if api_key is not None:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key", "authentication_error")
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": served_model_name, "object": "model", "created": created, "owned_by": "umm-harness"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest):
        if body.model != served_model_name:
            return _error(404, f"The model `{body.model}` does not exist; this server serves `{served_model_name}`.",
                          "not_found_error")
        if body.stream or body.n != 1:
            return _error(400, "this server answers with one choice and does not stream (n=1, stream=false)")
        try:
            conversation = [{"role": message.role, "content": _parts(i, message) if vision else _text(i, message)}
                            for i, message in enumerate(body.messages)]
        except BadMessage as exc:
            return _error(400, str(exc))
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        with lock:
            [answer] = judge.chat_with_usage([conversation], max_tokens, body.temperature)
        reply, prompt_tokens, completion_tokens = answer
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": served_model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "length" if completion_tokens >= max_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


@contextmanager
def running(model: str | Path, log_path: Path, *, name: str, api_key: str | None = None, threads: int = 1,
            timeout_s: float = 90) -> Iterator[str]:
    """This server in a child process on a free port; yields its base URL (…/v1) once it answers,
    and stops it after. A server that exits or stays silent is a `RuntimeError` with its log's tail."""
    import requests

    from umm_harness.core.ports import free_port

    port = free_port()
    command = [sys.executable, "-m", "tasks.judges.server", "--model", str(model), "--port", str(port),
               "--served-model-name", name, "--threads", str(threads)]
    env = {**os.environ, "UMM_JUDGE_SERVER_API_KEY": api_key or ""}
    url = f"http://{HOST}:{port}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"judge server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/models", headers=headers, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"judge server did not answer in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.judges.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local folder or hub id of a causal LM or a chat VLM")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--served-model-name", default=None, help="the name clients use (default: --model)")
    parser.add_argument("--api-key", default=os.environ.get("UMM_JUDGE_SERVER_API_KEY"),
                        help="require this bearer key (default: $UMM_JUDGE_SERVER_API_KEY; none)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length when a request gives none")
    args = parser.parse_args(argv)

    import torch
    import uvicorn
    from transformers import AutoConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    vision = hasattr(AutoConfig.from_pretrained(args.model, revision=args.revision), "vision_config")
    if vision:
        from tasks.judges.vision import TransformersVisionJudge

        judge: Any = TransformersVisionJudge(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    else:
        from tasks.judges.transformers_backend import TransformersJudge

        judge = TransformersJudge(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    name = args.served_model_name or args.model
    app = create_app(judge, name, api_key=args.api_key or None, default_max_tokens=args.max_tokens, vision=vision)
    print(f"serving {name} ({judge.id}) at http://{HOST}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
