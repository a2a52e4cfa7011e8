"""Judge throughput with replicas: the same concurrent requests against 1 and 2 local judge servers.

Each replica is a real `python -m tasks.judges.server` process serving the tiny judge, one
thread each; the client is the `openai` backend, `concurrency` requests in flight per replica.
Prints `judge_replicas_speedup` (requests/s with 2 replicas ÷ with 1) and logs it to the MLflow
experiment `umm-benchmarks`.

    python benchmarks/bench_judges.py [--prompts 48] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import report  # noqa: E402
from tasks.judges.openai_backend import OpenAIJudge  # noqa: E402
from tasks.judges.server import running  # noqa: E402
from tasks.judges.tiny import build_tiny_judge  # noqa: E402


def requests_per_s(urls: list[str], prompts: list[str], max_tokens: int, concurrency: int) -> float:
    judge = OpenAIJudge(base_url=urls, concurrency=concurrency)
    judge.complete(prompts[:2], max_tokens)  # warm both the client and the servers
    start = time.perf_counter()
    judge.complete(prompts, max_tokens)
    return len(prompts) / (time.perf_counter() - start)


def replica_figures(prompts: int = 48, max_tokens: int = 16, concurrency: int = 4) -> dict[str, float]:
    """Requests/s of the same concurrent requests against 1 and 2 local judge servers, and their ratio."""
    texts = [f"Describe picture number {i} in a few words." for i in range(prompts)]
    with tempfile.TemporaryDirectory(prefix="umm-bench-judges-") as tmp:
        folder = build_tiny_judge(Path(tmp) / "tiny-judge", seed=0)
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(running(folder, Path(tmp) / f"server{i}.log", name="tiny-judge"))
                    for i in range(2)]
            one = requests_per_s(urls[:1], texts, max_tokens, concurrency)
            two = requests_per_s(urls, texts, max_tokens, concurrency)
    return {"judge_requests_per_s_1": one, "judge_requests_per_s_2": two, "judge_replicas_speedup": two / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per replica")
    args = parser.parse_args()
    figures = replica_figures(args.prompts, args.max_tokens, args.concurrency)
    report("bench_judges", figures, {"prompts": str(args.prompts), "concurrency": str(args.concurrency)},
           f"2 judge replicas vs 1, {args.prompts} prompts, {args.concurrency} in flight per replica")


if __name__ == "__main__":
    main()
