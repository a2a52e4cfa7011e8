"""The request/result contract between tasks, the runner, the flavor and every backbone.

Requests are validated once, at the boundary, so a backbone never has to guess what a
malformed request meant: a violation names the field that is wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskKind = Literal["generation", "understanding", "editing"]
TASK_KINDS: tuple[TaskKind, ...] = ("generation", "understanding", "editing")


class InferenceParams(BaseModel):
    """Knobs a caller may set; `None` means "the backbone's documented default"."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    guidance_scale: float | None = Field(default=None, ge=0)
    image_guidance_scale: float | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    image_size: int | None = Field(default=None, ge=8)

    def merged_over(self, defaults: InferenceParams) -> InferenceParams:
        """These params with every unset field taken from `defaults`."""
        return defaults.model_copy(update=self.model_dump(exclude_none=True))


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # e.g. a base64 string longer than a file name may be
        return False


def decode_image(value: Any) -> Image.Image:
    """Turn a PIL image, a file path, raw bytes or a base64 string into an RGB PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Path) or (isinstance(value, str) and len(value) < 4096 and _is_file(value)):
        try:
            with Image.open(value) as img:
                return img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"file '{value}' is not a readable image ({exc})") from None
    if isinstance(value, str):
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            value = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not a file path and not valid base64 ({exc})") from None
    if isinstance(value, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(value)) as img:
                img.load()
                return img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"bytes are not a readable image ({exc})") from None
    raise ValueError(f"expected a PIL image, a path or base64 data, got {type(value).__name__}")


def encode_png(image: Image.Image, compress_level: int = 6) -> str:
    """Base64 PNG, the wire format of images in pyfunc predictions (lossless at every
    `compress_level`; 1 trades size for speed on loopback)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class InferenceRequest(BaseModel):
    """One thing to ask of a backbone."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    task: TaskKind
    prompt: str | None = None
    images: list[Image.Image] = Field(default_factory=list)
    params: InferenceParams = Field(default_factory=InferenceParams)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("images", mode="before")
    @classmethod
    def _decode_images(cls, value: Any) -> list[Image.Image]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            value = [value]
        decoded = []
        for index, item in enumerate(value):
            try:
                decoded.append(decode_image(item))
            except ValueError as exc:
                raise ValueError(f"images[{index}]: {exc}") from None
        return decoded

    @model_validator(mode="after")
    def _check_task_inputs(self) -> InferenceRequest:
        has_prompt = bool(self.prompt and self.prompt.strip())
        if self.task == "generation" and not has_prompt:
            raise ValueError("prompt: a generation request needs a non-empty prompt")
        if self.task == "editing" and not (has_prompt and self.images):
            raise ValueError("editing needs a prompt and at least one image (fields 'prompt' and 'images')")
        if self.task == "understanding" and not (has_prompt or self.images):
            raise ValueError("understanding needs a prompt or at least one image (fields 'prompt' and 'images')")
        return self


class InferenceResult(BaseModel):
    """What a backbone answered, with the params it actually used (seed included)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str | None = None
    images: list[Image.Image] = Field(default_factory=list)
    params: InferenceParams = Field(default_factory=InferenceParams)
    elapsed_s: float = 0.0
