"""Per-sample seeds: the same (run seed, sample id, k) always gives the same seed.

A seed that depends only on these three values (not on batch composition or sample order)
is what lets a resumed, re-batched or sharded run reproduce an uninterrupted one.
"""

import hashlib


def sample_seed(run_seed: int, sample_id: str, k: int = 0) -> int:
    digest = hashlib.sha256(f"{run_seed}\x1f{sample_id}\x1f{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)
