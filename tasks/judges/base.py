"""What a judge is to a benchmark, how a recipe names one, and the errors a judge raises.

A judge is any object with an `id` (backend, model and revision: what a cached reply or a
logged score depends on) and a batched `complete(prompts, max_tokens, temperature=0.0)` that
returns one reply per prompt. The three backends (`openai`, `transformers`, `vllm`) are plain
classes of that shape, and so is any stand-in a test scripts; nothing checks a base class.

Recipes name a judge with a `JudgeConfig`; `make_judge` builds it, wrapped in the reply cache
(`tasks/judges/cache.py`; to ask the judge afresh, point `cache_dir` at a new folder). API keys are never part of a
config: the `openai` backend reads them from the environment only, so a logged recipe, a judge
id or a per-sample record cannot hold one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from umm_harness.core.errors import ConfigError

Backend = Literal["openai", "transformers", "vllm"]


@runtime_checkable
class Judge(Protocol):
    """The judge interface every judged benchmark uses."""

    @property
    def id(self) -> str:
        """`<backend>:<model>[@<revision>]`; never holds a credential."""
        ...

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str]:
        """One reply per prompt (each sent as a single user message), in order."""
        ...


class JudgeError(RuntimeError):
    """A judge answered, but not with something usable (a refused or malformed request)."""


class JudgeUnavailable(ConfigError):
    """A judge that cannot be used as configured: unreachable endpoint, missing package, bad key.

    A `ConfigError`, so the CLI prints it as one line and exits 2: the fix is on the user's side.
    """


class JudgeFailure(Exception):
    """A judge whose replies stayed unparseable after the retry; carries what the task may record.

    `fallback` is what the benchmark's official code would have used in its place (MathVista: an
    empty extraction); `replies` are the raw judge replies, first to last.
    """

    def __init__(self, message: str, *, replies: list[str], fallback: Any = None):
        super().__init__(message)
        self.replies = replies
        self.fallback = fallback


def judge_id(backend: str, model: str, revision: str | None = None) -> str:
    return f"{backend}:{model}" + (f"@{revision}" if revision else "")


class JudgeConfig(BaseModel):
    """A judge as a recipe names it (`judge:` block). Credentials come only from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "openai"
    model: str | None = None  # hub id or folder; for `openai`, UMM_JUDGE_MODEL or the server's only model
    # `openai` only; else UMM_JUDGE_BASE_URL. Several replicas of one judge: a list, or comma separated.
    base_url: str | tuple[str, ...] | None = None
    revision: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)  # overrides each benchmark's own reply length
    tensor_parallel_size: int = Field(default=1, ge=1)  # `vllm` only
    timeout_s: float = Field(default=120.0, gt=0)  # `openai`: per request
    concurrency: int = Field(default=8, ge=1)  # `openai`: requests in flight per replica
    cache_dir: Path | None = None  # default $UMM_HOME/judge_cache

    @model_validator(mode="after")
    def _fits_backend(self) -> JudgeConfig:
        if self.backend in ("transformers", "vllm") and not self.model:
            raise ValueError(f"the {self.backend} judge backend needs `model` (a hub id or a local folder)")
        if self.backend != "openai" and self.base_url:
            raise ValueError(f"`base_url` is for the openai backend, not {self.backend}")
        if self.backend != "vllm" and self.tensor_parallel_size != 1:
            raise ValueError("`tensor_parallel_size` is for the vllm backend")
        return self


def judge_config_from_env() -> JudgeConfig | None:
    """The judge that UMM_JUDGE_BACKEND / UMM_JUDGE_BASE_URL / UMM_JUDGE_MODEL describe, if any."""
    backend = os.environ.get("UMM_JUDGE_BACKEND")
    if not backend and not os.environ.get("UMM_JUDGE_BASE_URL"):
        return None
    values = {"backend": backend or "openai", "model": os.environ.get("UMM_JUDGE_MODEL") or None}
    return judge_config(values, "UMM_JUDGE_* environment")


def judge_config(values: dict[str, Any], source: str = "recipe") -> JudgeConfig:
    """A `JudgeConfig` from a recipe's `judge:` block; a bad block is one `ConfigError` line naming the field."""
    try:
        return JudgeConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "judge"
        raise ConfigError(f"{source}: judge field '{field}': {first['msg'].removeprefix('Value error, ')}") from None


def make_judge(config: JudgeConfig | dict[str, Any] | None = None) -> Judge:
    """The judge a config names (None: the one the UMM_JUDGE_* environment names), with its cache."""
    if config is None:
        config = judge_config_from_env()
        if config is None:
            raise ConfigError(
                "no judge configured: name one in the recipe (judge: {backend: openai|transformers|vllm, model: ...}) "
                "or set UMM_JUDGE_BASE_URL (and UMM_JUDGE_MODEL) to an OpenAI-compatible endpoint"
            )
    elif isinstance(config, dict):
        config = judge_config(config, "recipe")
    judge: Judge
    if config.backend == "openai":
        from tasks.judges.openai_backend import OpenAIJudge

        judge = OpenAIJudge(base_url=config.base_url, model=config.model, revision=config.revision,
                            timeout_s=config.timeout_s, concurrency=config.concurrency)
    elif config.backend == "transformers":
        from tasks.judges.transformers_backend import TransformersJudge

        judge = TransformersJudge(config.model, revision=config.revision)
    else:
        from tasks.judges.vllm_backend import VLLMJudge

        judge = VLLMJudge(config.model, revision=config.revision, tensor_parallel_size=config.tensor_parallel_size)
    if config.max_tokens is not None:
        judge = FixedReplyLength(judge, config.max_tokens)
    from tasks.judges.cache import CachedJudge

    return CachedJudge(judge, config.cache_dir)


class FixedReplyLength:
    """A judge whose replies may be `max_tokens` long whatever the benchmark asks for.

    For judges that think before they answer (a benchmark's own budget, MM-Vet's 3 tokens, is
    too short for them). The length is part of the id, so cached replies never mix lengths.
    """

    def __init__(self, judge: Judge, max_tokens: int):
        self.inner = judge
        self.max_tokens = max_tokens

    @property
    def id(self) -> str:
        return f"{self.inner.id}#max_tokens={self.max_tokens}"

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str]:
        return self.inner.complete(prompts, self.max_tokens, temperature)
