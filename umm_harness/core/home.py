"""The harness's home folder: tiny models, result caches, judge caches, benchmark downloads."""

from __future__ import annotations

import os
from pathlib import Path

from umm_harness.core.errors import ConfigError


def umm_home() -> Path:
    """Where tiny models and caches live (`UMM_HOME`, default ~/.cache/umm-harness)."""
    home = Path(os.environ.get("UMM_HOME", Path.home() / ".cache" / "umm-harness")).expanduser()
    blocked = next((p for p in (home, *home.parents) if p.exists()), None)
    if blocked is not None and not blocked.is_dir():
        raise ConfigError(f"UMM_HOME '{home}': '{blocked}' is a file, not a folder; point UMM_HOME at a folder")
    return home
