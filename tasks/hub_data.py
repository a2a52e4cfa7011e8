"""Rows of a benchmark's hub dataset: from a local copy under `--data-dir`, else from the hub.

A local copy is the dataset repository as the hub stores it (for instance
`huggingface-cli download lmms-lab/MME --repo-type dataset --local-dir data/lmms-lab/MME`):
parquet shards named `<split>-00000-of-00004[-<hash>].parquet`, under `<config>/` when the
dataset has several configs (MMMU's subjects, MMBench's languages); a dataset stored as arrow
(GEdit-Bench) may have `<split>-….arrow` shards or `save_to_disk`'s `<split>/data-….arrow`.
One `--data-dir` serves a whole suite: a benchmark looks in `<data-dir>/<hub id>`, then
`<data-dir>/<benchmark name>`, then `<data-dir>` itself. Without a local copy, rows come from `datasets.load_dataset` at run
time; `datasets` is imported only then, so nothing else needs it installed.

Image cells are handed over undecoded (`{"bytes", "path"}`, as parquet stores an `Image`
feature): tasks decode them through `Sample.build`, so one unreadable image fails one sample
instead of the whole load.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from umm_harness.core.errors import ConfigError
from umm_harness.core.home import umm_home

Row = dict[str, Any]


class HubSource(BaseModel):
    """Which rows a benchmark reads: a hub dataset, its configs (in order) and one split."""

    model_config = ConfigDict(frozen=True)

    hub_id: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    revision: str | None = None  # hub downloads only; a local copy is read as it is
    file_name: str | None = None  # a single file the hub stores the split in (MMStar: mmstar.parquet)


def load_rows(source: HubSource, data_dir: Path | None, name: str) -> list[tuple[str | None, Row]]:
    """Every row of every config of `source`, each with the config it came from, in order."""
    root = _local_root(source, data_dir, name) if data_dir is not None else None
    rows: list[tuple[str | None, Row]] = []
    for config in source.configs:
        table = _local_rows(source, root, config) if root is not None else _hub_rows(source, config)
        rows.extend((config, row) for row in table)
    return rows


def image_cell(cell: Any) -> Any:
    """What `InferenceRequest` can decode from an image cell: its bytes, else its path; None when empty."""
    if isinstance(cell, dict):
        return cell.get("bytes") or cell.get("path") or None
    return cell


def _shard_pattern(split: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(split)}(-\d+-of-\d+)?(-[0-9a-f]+)?\.(parquet|arrow)$")


_SAVED_SHARD = re.compile(r"^data-\d+-of-\d+\.arrow$")  # `Dataset.save_to_disk`: <split>/data-00000-of-0000N.arrow


def _shards(root: Path, config: str | None, split: str, file_name: str | None = None) -> list[Path]:
    """The split's shards of one config: in `<config>/`, or for the default config in `data/` or at the top;
    parquet or arrow, named `<split>-…` (or `file_name`, a single file the hub stores the split in) or saved
    as `<split>/data-…-of-….arrow`."""
    pattern = _shard_pattern(split)
    for folder in [root / config] if config else [root / "data", root]:
        found = (sorted(p for p in folder.glob("*.*") if pattern.match(p.name) or p.name == file_name)
                 if folder.is_dir() else [])
        saved = folder / split
        found = found or (sorted(p for p in saved.glob("*.arrow") if _SAVED_SHARD.match(p.name))
                          if saved.is_dir() else [])
        if found:
            return found
    return []


def _read_shard(shard: Path) -> pa.Table:
    if shard.suffix == ".parquet":
        return pq.read_table(shard)
    try:  # `datasets` writes arrow files in the IPC stream format; others may use the file format
        with pa.ipc.open_stream(shard) as reader:
            return reader.read_all()
    except pa.ArrowInvalid:
        with pa.ipc.open_file(shard) as reader:
            return reader.read_all()


def _local_root(source: HubSource, data_dir: Path, name: str) -> Path:
    for root in (data_dir / source.hub_id, data_dir / name, data_dir):
        if all(_shards(root, config, source.split, source.file_name) for config in source.configs):
            return root
    if source.file_name:
        raise ConfigError(f"{name}: no {source.file_name} of {source.hub_id} under --data-dir {data_dir}; expected "
                          f"<data-dir>/{source.hub_id}/{source.file_name} (the hub's layout)")
    missing = next(c for c in source.configs if not _shards(data_dir / source.hub_id, c, source.split))
    raise ConfigError(
        f"{name}: no '{source.split}' parquet or arrow shards of {source.hub_id} under --data-dir {data_dir}; expected "
        f"<data-dir>/{source.hub_id}/{missing or 'data'}/{source.split}-00000-of-0000N.parquet (the hub's layout)"
    )


def _local_rows(source: HubSource, root: Path, config: str | None) -> list[Row]:
    rows: list[Row] = []
    for shard in _shards(root, config, source.split, source.file_name):
        try:
            rows.extend(_read_shard(shard).to_pylist())
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{shard}: not a readable {shard.suffix[1:]} file ({exc}); download it again") from None
    return rows


def _hub_rows(source: HubSource, config: str | None) -> list[Row]:
    where = f"{source.hub_id}" + (f" (config {config})" if config else "") + f", split {source.split}"
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"reading {where} from the hub needs the `datasets` package; install it, or pass --data-dir "
            "with a local copy of the dataset"
        ) from None
    try:
        ds = datasets.load_dataset(source.hub_id, name=config, split=source.split, revision=source.revision)
    except Exception as exc:  # offline, gated, renamed: all mean "use a local copy"
        raise ConfigError(
            f"could not load {where} from the hub ({type(exc).__name__}: {exc}); pass --data-dir with a "
            "local copy of the dataset (parquet files as the hub stores them)"
        ) from None
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    return list(ds)


class HubArchive(BaseModel):
    """A benchmark published as one archive file in a hub dataset (image folders and side files)."""

    model_config = ConfigDict(frozen=True)

    bench: str
    hub_id: str
    file: str
    revision: str | None = None


def extracted_root(archive: HubArchive, data_dir: Path | None, is_root: Callable[[Path], bool], *,
                   layouts: Sequence[str], expected: str) -> Path:
    """The folder holding the archive's contents: under `data_dir` when the user extracted it there,
    else in the harness's cache, downloaded and extracted on first use.

    `layouts` are the sub-folders ("" for the folder itself) where the contents may sit;
    `expected` names what `is_root` looks for, for the errors."""

    def first(base: Path) -> Path | None:
        return next((base / sub for sub in layouts if is_root(base / sub)), None)

    where = f"{archive.file} of the hub dataset {archive.hub_id}"
    if data_dir is not None:
        if found := first(Path(data_dir)):
            return found
        raise ConfigError(f"{archive.bench}: --data-dir {data_dir} holds no {expected}; extract {where} there")
    target = umm_home() / "benchmarks" / archive.bench
    if found := first(target):
        return found
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(archive.hub_id, archive.file, repo_type="dataset", revision=archive.revision)
    except Exception as exc:  # offline, gated, renamed
        raise ConfigError(f"{archive.bench}: could not download {where} ({type(exc).__name__}); download and "
                          f"extract it, then pass --data-dir with the extracted folder") from None
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(target, filter="data")
    if found := first(target):
        return found
    raise ConfigError(f"{archive.bench}: {path} did not extract to {expected} under {target}")
