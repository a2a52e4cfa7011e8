"""`ray: {judge: ...}`: the judge stage of judged benchmarks on the Ray cluster.

Two ways, one per recipe:
- `endpoint`: an existing `vllm serve` (or any OpenAI-compatible) server, several replicas allowed.
  The requests are sent from `actors` Ray actors, each holding the project's own OpenAI vision
  client (replica choice, retries, at most the judge's `concurrency` requests in flight per
  replica), so at most actors × concurrency requests reach each replica at once.
- `engine: vllm`: a `ray.data.llm` vLLM processor stage loads `model` on the cluster's GPUs
  (`tensor_parallel_size` GPUs per engine, `actors` engines). Needs vLLM where the stage runs.

Either way the judge is the judged task's usual vision judge: replies go through the same
`CachedVisionJudge`, keyed by judge id + request digest, on the driver, so a rerun asks nothing
it has asked before, and with an endpoint the id is the recipe's `judge:` id, so the replies and
metrics equal the local executor's and its cached replies are shared. The judge lives with the
driver that started Ray, so tasks holding it are scored there, not in the scoring worker process.
Text-only judged benchmarks (MM-Vet, MathVista) keep their local judge.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.judges.base import JudgeConfig, judge_config_from_env, judge_id
from tasks.judges.openai_backend import OpenAIJudge
from tasks.judges.vision import (
    CachedVisionJudge,
    OpenAIVisionJudge,
    VisionFixedReplyLength,
    VisionRequest,
    openai_messages,
)
from umm_harness.core.errors import ConfigError


class RayJudgeSettings(BaseModel):
    """The `ray.judge` block of an eval recipe."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | list[str] | None = None  # a running OpenAI-compatible server; replicas: list or `a,b`
    engine: Literal["vllm"] | None = None  # a `ray.data.llm` stage that loads `model` on the cluster
    model: str | None = None  # vllm: hub id or folder; endpoint: default the `judge:` block's model
    actors: int = Field(default=1, ge=1)  # endpoint: request senders; vllm: engine replicas
    cpus_per_actor: float = Field(default=0.25, gt=0)  # endpoint senders mostly wait on the network
    tensor_parallel_size: int = Field(default=1, ge=1)  # vllm: GPUs per engine
    batch_size: int = Field(default=16, ge=1)  # vllm: requests per engine batch

    @model_validator(mode="after")
    def _one_way(self) -> RayJudgeSettings:
        if (self.endpoint is None) == (self.engine is None):
            raise ValueError("name exactly one of `endpoint` (a running judge server) or `engine: vllm`")
        if self.engine == "vllm" and not self.model:
            raise ValueError("`engine: vllm` needs `model` (a hub id or a local folder)")
        return self


def ray_vision_judge(settings: RayJudgeSettings, judge: JudgeConfig | None,
                     start_ray: Callable[[], Any]) -> CachedVisionJudge:
    """The judged tasks' vision judge with its calls on Ray (`start_ray()` returns the started `ray`)."""
    judge = judge or judge_config_from_env() or JudgeConfig()
    if settings.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("ray.judge: `engine: vllm` runs a ray.data.llm vLLM stage and needs vLLM: "
                              "pip install vllm (on every node), or serve the judge with `vllm serve` and "
                              "name it as `ray.judge.endpoint`")
        inner: Any = _VLLMStage(settings, judge, start_ray)
    else:
        if judge.backend != "openai":
            raise ConfigError(f"ray.judge.endpoint serves an OpenAI-compatible judge, but the recipe's judge "
                              f"backend is {judge.backend!r}: use `backend: openai` in the `judge:` block")
        inner = _EndpointSenders(settings, judge, start_ray)
    if judge.max_tokens is not None:
        inner = VisionFixedReplyLength(inner, judge.max_tokens)
    return CachedVisionJudge(inner, judge.cache_dir)


class _OnTheDriver:
    """A judge that talks to the Ray the driver started: it stays in the driver's process."""

    def __reduce__(self) -> Any:
        raise TypeError("a Ray judge stays with the driver (judged benchmarks are scored there)")


class _EndpointClient:
    """A Ray actor: the project's OpenAI vision client, sending one shard of requests."""

    def __init__(self, judge: JudgeConfig, model: str):
        self.client = OpenAIVisionJudge(judge.base_url, model, judge.revision, timeout_s=judge.timeout_s,
                                        concurrency=judge.concurrency)

    def chat(self, payload: bytes, max_tokens: int, temperature: float) -> list[str]:
        return self.client.chat(pickle.loads(payload), max_tokens, temperature)


class _EndpointSenders(_OnTheDriver):
    """Requests to a running judge server, sent from Ray actors, spread over them round-robin."""

    def __init__(self, settings: RayJudgeSettings, judge: JudgeConfig, start_ray: Callable[[], Any]):
        endpoint = settings.endpoint
        self.judge = judge.model_copy(update={"base_url": tuple(endpoint) if isinstance(endpoint, list) else endpoint,
                                              "model": judge.model or settings.model})
        self.settings, self.start_ray = settings, start_ray
        self._model = self.judge.model
        self._ray: Any = None
        self._actors: list[Any] = []

    @property
    def model(self) -> str:
        if self._model is None:  # the server's only model, asked once
            self._model = OpenAIJudge(self.judge.base_url, None, timeout_s=self.judge.timeout_s).model
        return self._model

    @property
    def id(self) -> str:
        return judge_id("openai", self.model, self.judge.revision)

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        if not requests:
            return []
        if not self._actors:
            self._ray = self.start_ray()
            actor = self._ray.remote(num_cpus=self.settings.cpus_per_actor)(_EndpointClient)
            self._actors = [actor.remote(self.judge, self.model) for _ in range(self.settings.actors)]
        shards = [list(requests[i :: len(self._actors)]) for i in range(len(self._actors))]
        futures = [actor.chat.remote(pickle.dumps(shard), max_tokens, temperature)
                   for actor, shard in zip(self._actors, shards) if shard]
        replies: list[str] = [""] * len(requests)
        for i, answered in enumerate(self._ray.get(futures)):
            replies[i :: len(self._actors)] = answered
        return replies


class _VLLMStage(_OnTheDriver):
    """Requests through a `ray.data.llm` vLLM processor: engines on the cluster's GPUs, batched."""

    def __init__(self, settings: RayJudgeSettings, judge: JudgeConfig, start_ray: Callable[[], Any]):
        self.settings, self.judge, self.start_ray = settings, judge, start_ray

    @property
    def id(self) -> str:
        return judge_id("vllm", self.settings.model or "", self.judge.revision)

    def chat(self, requests: Sequence[VisionRequest], max_tokens: int, temperature: float = 0.0) -> list[str]:
        if not requests:
            return []
        ray = self.start_ray()
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        config = vLLMEngineProcessorConfig(
            model_source=self.settings.model,
            engine_kwargs={"tensor_parallel_size": self.settings.tensor_parallel_size},
            concurrency=self.settings.actors,
            batch_size=self.settings.batch_size,
            prepare_multimodal_stage=any(request.images for request in requests),
        )
        sampling = {"max_tokens": max_tokens, "temperature": temperature}
        processor = build_processor(
            config,
            preprocess=lambda row: {"index": row["index"], "messages": json.loads(row["messages"]),
                                    "sampling_params": sampling},
            postprocess=lambda row: {"index": row["index"], "reply": row["generated_text"]},
        )
        rows = [{"index": i, "messages": json.dumps(openai_messages(request))} for i, request in enumerate(requests)]
        answered = {int(row["index"]): str(row["reply"]) for row in processor(ray.data.from_items(rows)).take_all()}
        return [answered[i] for i in range(len(requests))]
