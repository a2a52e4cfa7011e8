"""Reading a training data file: the rows of a parquet file that must have a given column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from umm_harness.core.errors import ConfigError


def read_rows(path: Path, column: str) -> list[dict[str, Any]]:
    """The rows of `path` as dicts; a file that is not parquet or lacks `column` is a `ConfigError`."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several kinds
        raise ConfigError(f"data.path '{path}': not a readable parquet file ({exc})") from None
    if column not in frame.columns:
        raise ConfigError(f"data.path '{path}': no '{column}' column (it has: {', '.join(map(str, frame.columns))})")
    return frame.to_dict("records")
