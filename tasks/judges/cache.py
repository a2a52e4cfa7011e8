"""Judge replies on disk, so scoring the same outputs again costs no judge call.

One SQLite file (`judge_cache.sqlite`) in a folder the caller names, by default
`$UMM_HOME/judge_cache`. A reply is stored under (judge id, sha256 of the prompt, settings),
where the settings are the reply length, the temperature and the attempt number: a retry is
attempt 1, 2, … so it asks the judge again instead of reading back the reply that failed to
parse. SQLite (WAL mode, a busy timeout) lets several ranks or processes share one cache.
Replies are stored as the judge gave them; parsing happens after, so a fixed parser re-reads
old replies for free.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.judges.base import Judge
from umm_harness.core.home import umm_home

FILE_NAME = "judge_cache.sqlite"


def default_cache_dir() -> Path:
    return umm_home() / "judge_cache"


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def settings_key(max_tokens: int, temperature: float, attempt: int) -> str:
    return f"max_tokens={max_tokens};temperature={float(temperature)!r};attempt={attempt}"


class JudgeCache:
    def __init__(self, folder: Path | str | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (judge_id TEXT NOT NULL, prompt_sha256 TEXT NOT NULL, "
            "settings TEXT NOT NULL, reply TEXT NOT NULL, created REAL NOT NULL, "
            "PRIMARY KEY (judge_id, prompt_sha256, settings))"
        )

    def get(self, judge_id: str, prompt_hashes: list[str], settings: str) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(prompt_hashes))
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite's parameter limit
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT prompt_sha256, reply FROM replies WHERE judge_id = ? AND settings = ? "
                    f"AND prompt_sha256 IN ({marks})", [judge_id, settings, *chunk]
                ).fetchall()
                found.update(rows)
        return found

    def put(self, judge_id: str, replies: dict[str, str], settings: str) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                [(judge_id, digest, settings, reply, now) for digest, reply in replies.items()],
            )

    def answer(self, judge_id: str, digests: list[str], items: Sequence[Any], settings: str,
               ask: Callable[[list[Any]], list[str]]) -> tuple[list[str], int, int]:
        """One reply per item: read from the cache where there is one, the rest from a single `ask`
        call and stored. Returns the replies in order, how many were cached and how many were asked."""
        known = self.get(judge_id, digests, settings)
        missing = {digest: item for digest, item in zip(digests, items) if digest not in known}
        hits = sum(digest in known for digest in digests)
        if missing:
            asked = list(missing.values())
            replies = ask(asked)
            if len(replies) != len(asked):
                raise RuntimeError(f"judge {judge_id} returned {len(replies)} replies for {len(asked)} requests")
            new = {digest: str(reply) for digest, reply in zip(missing, replies)}
            self.put(judge_id, new, settings)
            known.update(new)
        return [known[digest] for digest in digests], hits, len(missing)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class CachedJudge:
    """A judge that answers from the cache when it can and asks the wrapped judge, batched, for the rest.

    `backend_calls` / `backend_prompts` count what reached the wrapped judge, `hits` what did not.
    """

    def __init__(self, judge: Judge, folder: Path | str | None = None):
        self.inner = judge
        self.cache = JudgeCache(folder)
        self.backend_calls = 0
        self.backend_prompts = 0
        self.hits = 0

    @property
    def id(self) -> str:
        return self.inner.id

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0, *, attempt: int = 0) -> list[str]:
        replies, hits, asked = self.cache.answer(
            self.id, [prompt_sha256(prompt) for prompt in prompts], prompts,
            settings_key(max_tokens, temperature, attempt),
            lambda missing: self.inner.complete(missing, max_tokens, temperature))
        self.hits += hits
        if asked:
            self.backend_calls += 1
            self.backend_prompts += asked
        return replies


def cached(judge: Judge, folder: Path | str | None = None) -> CachedJudge:
    """`judge` with a reply cache (itself when it already has one)."""
    return judge if isinstance(judge, CachedJudge) else CachedJudge(judge, folder)
