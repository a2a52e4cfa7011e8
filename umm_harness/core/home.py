"""The harness's home folder: tiny models, result caches, judge caches, benchmark downloads."""

from __future__ import annotations

import os
from pathlib import Path


def umm_home() -> Path:
    """Where tiny models and caches live (`UMM_HOME`, default ~/.cache/umm-harness)."""
    return Path(os.environ.get("UMM_HOME", Path.home() / ".cache" / "umm-harness")).expanduser()
