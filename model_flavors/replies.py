"""Replies of transformers language models, shared by the adapters that batch `generate` calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from umm_harness.core.backbone import Backbone
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult


def text_results(tokenizer: Any, rows: Iterable[Any], params: Sequence[InferenceParams],
                 elapsed_s: float) -> list[InferenceResult]:
    """One reply per generated row. A batch generates up to its longest request's budget, so each
    row is cut at its own request's `max_new_tokens` first: a reply never depends on its batch."""
    return [
        InferenceResult(text=tokenizer.decode(row[: p.max_new_tokens], skip_special_tokens=True).strip(),
                        params=p, elapsed_s=elapsed_s)
        for row, p in zip(rows, params)
    ]


def greedy_params(backbone: Backbone, requests: Sequence[InferenceRequest]) -> list[InferenceParams]:
    """Each request's understanding parameters over the backbone's defaults. These adapters decode
    greedily (replies must not depend on the batch), so a sampling temperature is refused."""
    params = [r.params.merged_over(backbone.default_params("understanding")) for r in requests]
    if any(p.temperature for p in params):
        raise ValueError(f"{backbone.key} understanding is greedy: set temperature to 0 or leave it unset")
    return params
