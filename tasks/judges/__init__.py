"""The judge layer every judged benchmark shares.

- `base`: the `Judge` interface, `JudgeConfig` (a recipe's `judge:` block), `make_judge`, errors.
- backends: `openai_backend` (any OpenAI-compatible endpoint), `transformers_backend` (a local
  causal LM), `vllm_backend` (vLLM in-process, imported only when used).
- `cache`: replies on disk by (judge id, prompt sha256, settings); a re-score costs nothing.
- `parsing`: strict parsers, the retry schedule, failures that are counted, never guessed.
- `vision`: judges shown images (WISE, UEval, Uni-MMMU): `openai` and `transformers` backends,
  the same cache, parsing and retries (`vision_judge_all`).
- `extraction`: MathVista's answer extraction through a judge (`judge_extractor`).
- `server`: `python -m tasks.judges.server`, a local OpenAI-compatible endpoint for a transformers
  chat LM or chat VLM (base64 images); `running` starts one in a child process.
- `tiny`: a tiny random chat LM and chat VLM for tests.

Importing this package loads no model library and no web framework.
"""

from tasks.judges.base import (
    FixedReplyLength,
    Judge,
    JudgeConfig,
    JudgeError,
    JudgeFailure,
    JudgeUnavailable,
    judge_config,
    judge_config_from_env,
    make_judge,
)
from tasks.judges.cache import CachedJudge, JudgeCache, cached
from tasks.judges.extraction import judge_extractor
from tasks.judges.parsing import ONE_RETRY, Attempt, ParseError, Verdict, judge_all

__all__ = [
    "ONE_RETRY", "Attempt", "CachedJudge", "FixedReplyLength", "Judge", "JudgeCache", "JudgeConfig", "JudgeError",
    "JudgeFailure", "JudgeUnavailable", "ParseError", "Verdict", "cached", "judge_all", "judge_config",
    "judge_config_from_env", "judge_extractor", "make_judge",
]
