"""What a benchmark is, to the runner: its samples, how one sample is scored, how scores add up.

A task knows its data, its requests and its metrics (the lm-evaluation-harness split). It
never calls a model: the runner turns `Sample.request` into outputs (stage 1, "generate"),
and `score` turns stored outputs into a record (stage 2, "score"), so re-scoring never
regenerates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from umm_harness.core.requests import InferenceRequest


class Sample(BaseModel):
    """One benchmark item: the request to send and what scoring needs to judge the answer.

    A sample whose inputs cannot be used (an undecodable image, say) has no request and an
    `error` instead; the runner records it as failed, counts it, and goes on.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    category: str
    request: InferenceRequest | None = None
    error: str | None = None
    references: dict[str, Any] = Field(default_factory=dict)
    n: int = Field(default=1, ge=1)  # outputs per sample, each with its own seed (GenEval: 4)
    # Samples of one benchmark item (UEval's text and image halves) share a group: `--limit`
    # counts groups, so a limited run never keeps half of an item.
    group: str | None = None

    @classmethod
    def build(cls, *, id: str, category: str, references: dict[str, Any] | None = None, n: int = 1,
              group: str | None = None, **request: Any) -> Sample:
        """A sample whose request is validated here; a bad input becomes a failed sample."""
        common = dict(id=id, category=category, references=references or {}, n=n, group=group)
        try:
            req = InferenceRequest(**request)
        except ValidationError as exc:
            reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
            return cls(**common, error=reasons)
        return cls(**common, request=req)


class Output(BaseModel):
    """One stored model output for (sample, k), as stage 2 reads it back."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int
    seed: int
    text: str | None = None
    images: list[Image.Image] = Field(default_factory=list)


class Task(ABC):
    name: ClassVar[str]
    # "two-stage" tasks have a scoring stage worth running on its own (detectors, judges).
    two_stage: ClassVar[bool] = False
    # By default a task scores exactly as the benchmark's official code does, quirks included.
    # A task offering an opt-in corrected mode sets "corrected" on instances that use it, and a
    # benchmark with several official protocols names a non-default one in `protocol`. Both are
    # tagged on the run (`umm.scoring_mode`, `umm.protocol`), and such metrics live under their
    # own names (`metric_prefix`), so they never sit beside official ones in a comparison.
    scoring_mode: str = "official"
    protocol: str | None = None
    # What scores the outputs besides the task's own rules (detector, judge, options), when
    # something does; it keys cached scores and is written into every record.
    scorer_id: str | None = None

    def __init__(self, data_dir: Path | None = None):
        self.data_dir = data_dir

    @property
    def metric_prefix(self) -> str:
        """"" for the official default protocol; else e.g. "corrected/" or "verified/"."""
        parts = [self.protocol, None if self.scoring_mode == "official" else self.scoring_mode]
        return "".join(f"{part}/" for part in parts if part)

    def run_tags(self) -> dict[str, str]:
        """How this instance scores, as tags of its run."""
        return {"umm.scoring_mode": self.scoring_mode, **({"umm.protocol": self.protocol} if self.protocol else {})}

    @abstractmethod
    def samples(self) -> list[Sample]:
        """Every sample of the evaluated split, in a fixed order."""

    @abstractmethod
    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        """A JSON-serialisable record for one sample; it must hold a float `score`."""

    def scored(self, samples: list[Sample],
               records: dict[str, dict[str, Any]]) -> Iterator[tuple[Sample, dict[str, Any]]]:
        """Each sample that has a record, with it. A record of another scorer (`scorer_id`: detector,
        judge, options) is refused, since its scores do not add up with this scorer's."""
        for sample in samples:
            record = records.get(sample.id)
            if record is None:
                continue
            if record.get("scorer") != self.scorer_id:
                raise ValueError(f"{self.name}: sample {sample.id} was scored by {record.get('scorer')!r}, not "
                                 f"{self.scorer_id!r}; re-score all samples with one scorer")
            yield sample, record

    @abstractmethod
    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        """Official metrics from per-sample records (keys without the `<benchmark>/` prefix).

        `samples` may hold the same sample more than once (bootstrap resampling in `umm
        compare`): iterate over `samples` and look records up by id, not the other way round.
        """
