"""Strict reading of judge replies, with a retry schedule, and failures that are counted.

Each benchmark supplies a parser: a function from one reply to a value that raises
`ParseError` for anything it cannot read (nothing is guessed). `judge_all` sends every prompt
once, batched, parses, and sends the unparsed ones again according to a schedule of attempts;
what is still unparsed after the last attempt comes back as a failed `Verdict`. What a failure
counts as is the benchmark's decision (MM-Vet's official code scores it 0.0; MathVista's uses an
empty extraction), but it is always marked, so the benchmark can count it in a metric.

The default schedule is one retry with the same prompt at temperature 0; the attempt number is
part of the cache key (`tasks/judges/cache.py`), so a retry reaches the judge again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.judges.base import Judge
from tasks.judges.cache import CachedJudge


class ParseError(ValueError):
    """A judge reply that does not follow the format the benchmark asked for."""


@dataclass(frozen=True)
class Attempt:
    temperature: float = 0.0
    suffix: str = ""  # appended to the prompt for this attempt (a stronger format reminder)
    discarded: bool = False  # sent and recorded but never read (MM-Vet's official sixth call)


ONE_RETRY: tuple[Attempt, ...] = (Attempt(), Attempt())


@dataclass
class Verdict:
    value: Any = None  # what the parser read; None when failed
    replies: list[str] = field(default_factory=list)  # every raw reply, first to last
    failed: bool = False
    error: str | None = None  # why the last reply could not be read

    @property
    def attempts(self) -> int:
        return len(self.replies)

    @property
    def reply(self) -> str | None:
        return self.replies[-1] if self.replies else None


def ask(judge: Judge, prompts: list[str], max_tokens: int, temperature: float = 0.0, attempt: int = 0) -> list[str]:
    """`judge.complete`, telling a cached judge which attempt this is."""
    if not prompts:
        return []
    if isinstance(judge, CachedJudge):
        return judge.complete(prompts, max_tokens, temperature, attempt=attempt)
    return judge.complete(prompts, max_tokens, temperature)


def judge_all(
    judge: Judge,
    prompts: Sequence[str],
    parse: Callable[[str], Any],
    *,
    max_tokens: int,
    schedule: Sequence[Attempt] = ONE_RETRY,
) -> list[Verdict]:
    """One verdict per prompt; each attempt is one batched call for the prompts still unparsed."""
    return parse_with_retries(
        len(prompts), parse, schedule,
        lambda pending, attempt, number: ask(judge, [prompts[i] + attempt.suffix for i in pending], max_tokens,
                                             attempt.temperature, number),
    )


def parse_with_retries(
    count: int,
    parse: Callable[[str], Any],
    schedule: Sequence[Attempt],
    ask_pending: Callable[[list[int], Attempt, int], list[str]],
) -> list[Verdict]:
    """The retry loop every judge kind shares: ask for the items still unparsed (by index), parse
    strictly, and mark what no attempt of the schedule could parse as failed."""
    if not schedule:
        raise ValueError("a retry schedule needs at least one attempt")
    verdicts = [Verdict() for _ in range(count)]
    pending = list(range(count))
    for number, attempt in enumerate(schedule):
        if not pending:
            break
        replies = ask_pending(pending, attempt, number)
        if attempt.discarded:
            for i, reply in zip(pending, replies):
                verdicts[i].replies.append(reply)
            continue
        still = []
        for i, reply in zip(pending, replies):
            verdict = verdicts[i]
            verdict.replies.append(reply)
            try:
                verdict.value, verdict.error = parse(reply), None
            except ParseError as exc:
                verdict.error = str(exc)
                still.append(i)
        pending = still
    for i in pending:
        verdicts[i].failed = True
    return verdicts
