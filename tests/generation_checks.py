"""What every image-generating backbone must do with per-sample seeds."""

import numpy as np

from umm_harness.core.backbone import Backbone
from umm_harness.core.requests import InferenceRequest, InferenceResult


def assert_seeded_per_sample_not_per_batch(backbone: Backbone, requests: list[InferenceRequest]
                                           ) -> list[InferenceResult]:
    """Two 64×64 requests with their own seeds: in a batch, the second gets the image it gets alone
    (up to a batch's rounding, 2 levels), and the same batch again gives the same bytes. Returns the batch."""
    batched = backbone.generate(requests)
    alone = backbone.generate([requests[1]])
    again = backbone.generate(requests)
    assert batched[0].images[0].size == (64, 64)
    a, b = np.asarray(batched[1].images[0], dtype=int), np.asarray(alone[0].images[0], dtype=int)
    assert np.abs(a - b).max() <= 2
    assert all(x.images[0].tobytes() == y.images[0].tobytes() for x, y in zip(batched, again))
    return batched
