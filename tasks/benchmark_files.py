"""Published benchmark files (prompt lists, question tables), fetched by URL and checked by git blob hash.

GenEval, DPG-Bench and WISE publish their data as plain files in GitHub repositories, not as
hub datasets. Each file a benchmark needs is a `BenchmarkFile`: its path inside the
benchmark's folder (the upstream layout), a URL pinned to a commit, and the git blob hash of
the published bytes (`git hash-object <file>` prints the same). So a file is byte-for-byte the
one the official scripts read, or it is refused.

Where a file comes from, in order:
1. `--data-dir`: `<data-dir>/<path>` or `<data-dir>/<benchmark>/<path>`, so one folder can hold
   one benchmark (`--data-dir ../shared/data/geneval`) or a whole suite (`--data-dir
   ../shared/data`). A data dir that lacks the file is an error naming both places looked at;
   nothing is downloaded behind the user's back when they asked for an offline copy.
2. The download cache `$UMM_HOME/benchmarks/<benchmark>/<path>`.
3. The URL, downloaded once into that cache. Offline, the error names `--data-dir` and the
   path the file must have there.

A copy whose blob hash differs (a truncated download, a locally edited file, a Git LFS
pointer) is refused with both hashes in the message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from umm_harness.core.home import umm_home
from umm_harness.core.errors import ConfigError


class BenchmarkFile(BaseModel):
    """One published file: where it sits in the benchmark folder, where to get it, its blob hash."""

    model_config = ConfigDict(frozen=True)

    benchmark: str  # folder name under a suite-wide --data-dir and under the download cache
    path: str  # relative to the benchmark folder, upstream layout (e.g. "prompts/evaluation_metadata.jsonl")
    url: str  # pinned to a commit
    blob_sha1: str | None = None  # git blob hash of the published bytes; None: not checked


def git_blob_sha1(data: bytes) -> str:
    """The hash `git hash-object` gives a file with these bytes."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\x00" % len(data))
    digest.update(data)
    return digest.hexdigest()


def verify(file: BenchmarkFile, path: Path) -> Path:
    """`path` if its bytes have the file's blob hash; a `ConfigError` naming both hashes otherwise."""
    if file.blob_sha1 is None:
        return path
    actual = git_blob_sha1(path.read_bytes())
    if actual != file.blob_sha1:
        raise ConfigError(
            f"{file.benchmark}: {path} is not the published {file.path} (git blob {actual}, expected "
            f"{file.blob_sha1}); replace it with the file from {file.url}"
        )
    return path


def local_candidates(file: BenchmarkFile, data_dir: Path) -> list[Path]:
    return [data_dir / file.path, data_dir / file.benchmark / file.path]


def cache_path(file: BenchmarkFile) -> Path:
    return umm_home() / "benchmarks" / file.benchmark / file.path


def find_local(file: BenchmarkFile, data_dir: Path | None) -> Path | None:
    """The file under `data_dir` (checked), or None when it is not there."""
    if data_dir is None:
        return None
    for candidate in local_candidates(file, Path(data_dir)):
        if candidate.is_file():
            return verify(file, candidate)
    return None


def fetch(file: BenchmarkFile, data_dir: Path | None = None, *, timeout_s: float = 60.0) -> Path:
    """A verified local copy of `file`: from `data_dir`, else the cache, else downloaded into the cache."""
    local = find_local(file, data_dir)
    if local is not None:
        return local
    if data_dir is not None:
        looked = " or ".join(str(p) for p in local_candidates(file, Path(data_dir)))
        raise ConfigError(
            f"{file.benchmark}: --data-dir {data_dir} has no {file.path} (looked at {looked}); put the published "
            f"file there (from {file.url}) or leave out --data-dir to download it"
        )
    cached = cache_path(file)
    if cached.is_file():
        return verify(file, cached)
    data = _download(file, timeout_s)
    actual = git_blob_sha1(data)
    if file.blob_sha1 is not None and actual != file.blob_sha1:
        raise ConfigError(
            f"{file.benchmark}: the download of {file.url} is not the published {file.path} (git blob {actual}, "
            f"expected {file.blob_sha1}); download it by hand and pass --data-dir"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False, prefix=f".{cached.name}.") as tmp:
        tmp.write(data)
    os.replace(tmp.name, cached)  # atomic: a concurrent rank never reads half a file
    return cached


def _download(file: BenchmarkFile, timeout_s: float) -> bytes:
    offline_hint = (
        f"pass --data-dir <folder> holding {file.path} (or {file.benchmark}/{file.path}), copied from {file.url}"
    )
    try:
        import requests
    except ImportError:
        raise ConfigError(f"{file.benchmark}: downloading {file.path} needs the `requests` package; "
                          f"or {offline_hint}") from None
    try:
        response = requests.get(file.url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise ConfigError(
            f"{file.benchmark}: could not download {file.path} from {file.url} ({type(exc).__name__}); {offline_hint}"
        ) from None
    return response.content
