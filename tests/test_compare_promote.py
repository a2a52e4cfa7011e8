"""Paired bootstrap deltas and promotion gates, on hand-made per-sample records."""

import pytest

from tasks.base import Sample, Task
from umm_harness.compare import Comparison, Delta, paired_bootstrap
from umm_harness.core.errors import ConfigError
from umm_harness.promote import Gate, Requirement, _judge


class MeanScore(Task):
    """A benchmark whose metric is the plain mean of per-sample scores, plus one per category."""

    name = "toy"

    def samples(self):
        return []

    def score(self, sample, outputs):
        return {}

    def aggregate(self, samples, records):
        metrics = {"acc": sum(records[s.id]["score"] for s in samples) / len(samples)}
        for category in {s.category for s in samples}:
            group = [s for s in samples if s.category == category]
            metrics[f"acc_{category}"] = sum(records[s.id]["score"] for s in group) / len(group)
        return metrics


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", category="a" if i % 2 else "b") for i in range(n)]


def test_the_delta_is_exact_and_the_interval_brackets_it():
    samples = _samples(200)
    base = {s.id: {"score": 1.0 if i % 4 == 0 else 0.0} for i, s in enumerate(samples)}  # 0.25
    better = {s.id: {"score": 1.0 if i % 4 in (0, 1) else 0.0} for i, s in enumerate(samples)}  # 0.50
    intervals = paired_bootstrap(MeanScore(), samples, base, better, resamples=500, confidence=0.95)
    delta, low, high = intervals["acc"]
    assert delta == pytest.approx(0.25)
    assert 0.0 < low < 0.25 < high < 0.5
    # Pairing: the same samples improve in every resample, so the interval is tighter than unpaired.
    assert high - low < 0.2


def test_no_change_gives_a_zero_width_interval_at_zero():
    samples = _samples(50)
    same = {s.id: {"score": float(i % 3 == 0)} for i, s in enumerate(samples)}
    assert paired_bootstrap(MeanScore(), samples, same, same, resamples=200, confidence=0.9)["acc"] == (0.0, 0.0, 0.0)


def test_only_samples_scored_in_both_runs_are_paired():
    samples = _samples(10)
    base = {s.id: {"score": 0.0} for s in samples}
    other = {s.id: {"score": 1.0} for s in samples[:4]}
    delta, _, _ = paired_bootstrap(MeanScore(), samples, base, other, resamples=100, confidence=0.95)["acc"]
    assert delta == 1.0


def _comparison(deltas: dict[str, tuple[float, float, float]]) -> Comparison:
    return Comparison("m", "1", ["1", "2"], {"1": {}, "2": {}},
                      [Delta(metric, "2", 0.0, 0.0, *values) for metric, values in deltas.items()], {})


def test_gate_requirements_are_judged_on_the_lower_bound_by_default():
    gate = Gate(require=[Requirement.parse("shapes/understanding_acc >= champion + 0.02")], max_regression=0.01)
    clear_win = _comparison({"shapes/understanding_acc": (0.20, 0.10, 0.30), "shapes/generation_overall": (0.0, -0.05, 0.05)})
    assert all(ok for ok, _ in _judge(gate, clear_win, "2"))
    lucky = _comparison({"shapes/understanding_acc": (0.05, -0.01, 0.11), "shapes/generation_overall": (0.0, 0.0, 0.0)})
    verdicts = _judge(gate, lucky, "2")
    assert not verdicts[0][0] and "lower -0.0100 must be >= +0.0200" in verdicts[0][1]


def test_a_regression_beyond_the_bound_refuses():
    gate = Gate(require=[Requirement(metric="a", min_delta=0.0, judged_on="point")], max_regression=0.01)
    verdicts = _judge(gate, _comparison({"a": (0.1, 0.05, 0.15), "b": (-0.02, -0.04, 0.0)}), "2")
    assert verdicts[0][0] and not verdicts[1][0]
    assert "largest regression: b point -0.0200" in verdicts[1][1]


@pytest.mark.parametrize(("text", "metric", "margin"), [
    ("shapes/understanding_acc >= champion + 0.02", "shapes/understanding_acc", 0.02),
    ("mme/perception>=champion", "mme/perception", 0.0),
    ("geneval/overall >= champion - 0.01", "geneval/overall", -0.01),
])
def test_gate_expressions_parse(text, metric, margin):
    requirement = Requirement.parse(text)
    assert (requirement.metric, requirement.min_delta, requirement.judged_on) == (metric, margin, "lower")


def test_a_malformed_gate_expression_is_a_config_error():
    with pytest.raises(ConfigError, match="expected '<metric> >= champion \\+ <margin>'"):
        Requirement.parse("accuracy is better")
