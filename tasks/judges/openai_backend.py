"""A judge behind any OpenAI-compatible `/v1/chat/completions` endpoint.

`vllm serve <model>` (tensor parallel for 32B–72B judges), `python -m tasks.judges.server`, or
a hosted API. Where it is and what it serves come from the arguments or the environment:
`UMM_JUDGE_BASE_URL` (e.g. `http://127.0.0.1:8000/v1`; a bare `host:port` gets `/v1`; with no
URL but an `OPENAI_API_KEY`, OpenAI's own API), `UMM_JUDGE_MODEL` (else the server's only model,
asked from `/v1/models`), `UMM_JUDGE_API_KEY` or `OPENAI_API_KEY`. The key is kept out of the
judge id, its repr, logs and error messages.

Each prompt is one request (one user message); a batch is sent over a few threads so a
server that batches (vLLM does) sees them together. Connection errors, timeouts, 429 and 5xx
are retried with exponential back-off; a server that never answers gives `JudgeUnavailable`
naming the URL and how to start one.

Replicas: `base_url` may name several endpoints serving the same model (comma separated, or a
list in a recipe), e.g. one `vllm serve` per GPU node. Each request goes to the healthy replica
with the fewest requests in flight, at most `concurrency` at once per replica; a replica that
fails a request is set aside for a back-off while the retry goes to another one. The judge id
does not depend on the URLs, so cached replies are shared whichever replica answered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import requests

from tasks.judges.base import JudgeError, JudgeUnavailable, judge_id

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
START_HINT = ("start one (`vllm serve <model> --port <port>`, or `python -m tasks.judges.server --model <folder> "
              "--port <port>` for a transformers model) or point UMM_JUDGE_BASE_URL at a running one")


def normalize_base_url(url: str) -> str:
    """`host:port` or `http://host:port` → `http://host:port/v1`; a URL with a path is kept as given."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    if urlparse(url).path in ("", "/"):
        url = f"{url}/v1"
    return url


class Replica:
    """One endpoint of a judge: its URL, a bound on requests in flight, and when it may be tried again."""

    def __init__(self, url: str, concurrency: int):
        self.url = url
        self.slots = threading.BoundedSemaphore(concurrency)
        self.in_flight = 0
        self.answered = 0
        self.resting_until = 0.0  # monotonic time; a replica that just failed rests until then


def split_base_urls(value: str | Sequence[str]) -> list[str]:
    """`a,b` or [a, b] → normalised, de-duplicated endpoint URLs, in order."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls = [normalize_base_url(part) for part in parts if part.strip()]
    return list(dict.fromkeys(urls))


class OpenAIJudge:
    backend = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        model: str | None = None,
        api_key: str | None = None,
        revision: str | None = None,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 8,
    ):
        self._api_key = api_key or os.environ.get("UMM_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
        base_url = base_url or os.environ.get("UMM_JUDGE_BASE_URL") or None
        if base_url is None:
            if self._api_key is None:
                raise JudgeUnavailable(
                    "the openai judge backend needs an endpoint: set UMM_JUDGE_BASE_URL (e.g. "
                    "http://127.0.0.1:8000/v1 of `vllm serve`) or `base_url` in the recipe's judge block"
                )
            base_url = OPENAI_URL
        self.concurrency_per_replica = max(1, concurrency)
        self.replicas = [Replica(url, self.concurrency_per_replica) for url in split_base_urls(base_url)]
        if not self.replicas:
            raise JudgeUnavailable("the openai judge backend's base_url names no endpoint")
        self.base_url = ", ".join(replica.url for replica in self.replicas)  # for messages
        self.concurrency = self.concurrency_per_replica * len(self.replicas)
        self.revision = revision
        self.timeout = (connect_timeout_s, timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self._local = threading.local()
        self._choosing = threading.Lock()
        self.model = model or os.environ.get("UMM_JUDGE_MODEL") or self._only_served_model()

    @property
    def id(self) -> str:
        return judge_id(self.backend, self.model, self.revision)

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

    def served_models(self) -> list[str]:
        answer = self._request("GET", "/models")
        return [entry["id"] for entry in answer.get("data", []) if "id" in entry]

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str]:
        if not prompts:
            return []
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._chat(prompt, max_tokens, temperature) for prompt in prompts]
        with ThreadPoolExecutor(min(self.concurrency, len(prompts)), thread_name_prefix="judge") as pool:
            return list(pool.map(lambda prompt: self._chat(prompt, max_tokens, temperature), prompts))

    def _chat(self, prompt: str, max_tokens: int, temperature: float) -> str:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": temperature}
        answer = self._request("POST", "/chat/completions", payload)
        try:
            return answer["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(f"judge endpoint {self.base_url} sent a reply without choices[0].message: "
                             f"{self._scrub(str(answer))[:300]}") from None

    def _only_served_model(self) -> str:
        models = self.served_models()
        if len(models) != 1:
            raise JudgeUnavailable(
                f"judge endpoint {self.base_url} serves {len(models)} models ({', '.join(models) or 'none'}); "
                "name one with UMM_JUDGE_MODEL or `model` in the recipe's judge block"
            )
        return models[0]

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self._api_key:
                session.headers["Authorization"] = f"Bearer {self._api_key}"
        return session

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _pick(self) -> Replica:
        """The resting-free replica with the fewest requests in flight (else the one rested longest)."""
        with self._choosing:
            now = time.monotonic()
            awake = [r for r in self.replicas if r.resting_until <= now]
            pool = awake or [min(self.replicas, key=lambda r: r.resting_until)]
            replica = min(pool, key=lambda r: r.in_flight)
            replica.in_flight += 1
            return replica

    def _rest(self, replica: Replica, attempt: int) -> None:
        replica.resting_until = time.monotonic() + self.backoff_s * 2 ** attempt

    def _wait_for_a_replica(self) -> None:
        """Back off only when every replica is resting; with a healthy one left, retry at once."""
        soonest = min(r.resting_until for r in self.replicas)
        delay = soonest - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        problem = ""
        tried: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                self._wait_for_a_replica()
            replica = self._pick()
            url = f"{replica.url}{path}"
            tried.append(replica.url)
            try:
                with replica.slots:
                    response = self._session().request(method, url, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = type(exc).__name__
                self._rest(replica, attempt)
                log.warning("judge endpoint %s: %s (try %d of %d)", url, problem, attempt + 1, self.retries + 1)
                continue
            finally:
                with self._choosing:
                    replica.in_flight -= 1
            if response.status_code in RETRY_STATUS:
                problem = f"HTTP {response.status_code}"
                self._rest(replica, attempt)
                log.warning("judge endpoint %s: %s (try %d of %d)", url, problem, attempt + 1, self.retries + 1)
                continue
            replica.resting_until = 0.0
            replica.answered += 1
            if response.status_code in (401, 403):
                raise JudgeUnavailable(
                    f"judge endpoint {url} refused the credentials (HTTP {response.status_code}); set "
                    "UMM_JUDGE_API_KEY (or OPENAI_API_KEY) to a key it accepts"
                )
            if response.status_code == 404:
                raise JudgeUnavailable(
                    f"judge endpoint {url} answered 404 ({self._scrub(response.text)[:200]}); check "
                    "UMM_JUDGE_BASE_URL (it usually ends in /v1) and the judge model name"
                )
            if response.status_code >= 400:
                raise JudgeError(f"judge endpoint {url} refused the request: HTTP {response.status_code}: "
                                 f"{self._scrub(response.text)[:300]}")
            try:
                return response.json()
            except ValueError:
                raise JudgeError(f"judge endpoint {url} did not answer with JSON: "
                                 f"{self._scrub(response.text)[:200]}") from None
        where = ", ".join(dict.fromkeys(f"{u}{path}" for u in tried))
        raise JudgeUnavailable(
            f"judge endpoint {where} did not answer after {self.retries + 1} tries ({problem}); {START_HINT}"
        )
