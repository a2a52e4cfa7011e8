"""An exclusive lock between processes on one machine (a held `flock` on a lock file).

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a
killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def exclusive(lock_file: Path, waiting: str | None = None) -> Iterator[None]:
    """Hold `lock_file` exclusively; when another process holds it, log `waiting` and wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
