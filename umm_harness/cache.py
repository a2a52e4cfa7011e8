"""The resumable result cache: every finished output is on disk before the runner moves on.

One folder per unit of work (model weights × benchmark × run seed × params): `outputs.jsonl`,
an append-only log with one line per (sample, k), and `images/` with the PNGs it names. A
killed run leaves at worst a torn last line, which is ignored on reading, so a rerun with the
same arguments finds every finished sample and computes only the rest. Data-parallel rank r > 0
appends to `outputs-rank<r>.jsonl`; every reader reads all the logs, whatever the rank count.

`scores.jsonl` keeps the score record of each sample with the scorer that made it and a digest
of the outputs it scored, so rerunning a finished evaluation re-reads records instead of
decoding every image and running the detector again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

import tasks
from tasks.base import Output, Task

log = logging.getLogger(__name__)

_WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="umm-png")  # zlib releases the GIL


def safe_name(sample_id: str) -> str:
    """A file-name-safe, collision-free form of a sample id (ids may hold '/', '..' or unicode)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id).strip(".")[:80] or "sample"
    if cleaned == sample_id:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(sample_id.encode()).hexdigest()[:8]}"


def _numpy_scalar(value: Any) -> dict[str, Any]:
    """JSON for the numpy scalars detectors put in records, tagged so they read back as themselves."""
    if isinstance(value, np.generic):
        return {"__numpy__": value.dtype.str, "value": value.item()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _read_numpy_scalar(obj: dict[str, Any]) -> Any:
    return np.dtype(obj["__numpy__"]).type(obj["value"]) if obj.keys() == {"__numpy__", "value"} else obj


@cache
def _tasks_source_digest() -> str:
    """sha256 of the `tasks` package's source: a changed scorer or rule never reuses old records."""
    digest = hashlib.sha256()
    root = Path(tasks.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# Where a judged benchmark finds its judge when the recipe names none (tasks.judges); never the key.
_JUDGE_ENVIRONMENT = ("UMM_JUDGE_BACKEND", "UMM_JUDGE_BASE_URL", "UMM_JUDGE_MODEL")


def scorer_identity(task: Task, judge: Any = None) -> str:
    """What a score record depends on besides its sample and outputs: the task's class and source,
    its scorer (`scorer_id`: detector, VQA model, judge), the benchmark code, and the judge (the
    recipe's, else the one the UMM_JUDGE_* environment names)."""
    module_file = Path(inspect.getsourcefile(type(task)) or "")
    if judge is None:
        judge = {name: os.environ.get(name) for name in _JUDGE_ENVIRONMENT}
    return ResultCache.key(task=f"{type(task).__module__}.{type(task).__qualname__}",
                           module=hashlib.sha256(module_file.read_bytes()).hexdigest() if module_file.is_file() else "",
                           scorer=getattr(task, "scorer_id", None), source=_tasks_source_digest(), judge=judge)


_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG file


class CachedOutput(BaseModel):
    sample_id: str
    k: int
    seed: int
    text: str | None = None
    images: list[str] = Field(default_factory=list)  # file names under images/
    elapsed_s: float = 0.0


class ResultCache:
    def __init__(self, folder: Path, rank: int = 0):
        self.folder = folder
        self.images_dir = folder / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / ("outputs.jsonl" if rank == 0 else f"outputs-rank{rank}.jsonl")
        self._entries: dict[tuple[str, int], CachedOutput] = {}
        self._torn_tail = False  # our own log ends in a torn line: the next append starts a new line
        self._load()
        self._scores: dict[tuple[str, str], tuple[str, dict[str, Any]]] | None = None  # read on first use

    @staticmethod
    def key(**identity: Any) -> str:
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _load(self) -> None:
        for log_path in sorted(self.folder.glob("outputs*.jsonl")):
            with log_path.open(encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, 1):
                    if log_path == self.log_path:
                        self._torn_tail = not line.endswith("\n")
                    try:
                        entry = CachedOutput.model_validate_json(line)
                    except ValueError:
                        log.warning("%s:%d: ignoring a torn or corrupt line", log_path, line_number)
                        continue
                    if all(self._complete_png(name) for name in entry.images):
                        self._entries[(entry.sample_id, entry.k)] = entry

    def _complete_png(self, name: str) -> bool:
        """The image file exists and ends with PNG's IEND chunk: a zero-byte or truncated file (a full
        disk, a crash before the page cache reached the disk) is recomputed, never logged."""
        path = self.images_dir / name
        try:
            with path.open("rb") as handle:
                handle.seek(-len(_PNG_END), os.SEEK_END)
                if handle.read() == _PNG_END:
                    return True
        except OSError:  # missing, or shorter than the trailer
            if not path.exists():
                return False
        log.warning("%s: empty or truncated image; its output is computed again", path)
        return False

    def __contains__(self, item: tuple[str, int]) -> bool:
        return item in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add_batch(self, outputs: list[tuple[str, int, int, str | None, list[Image.Image], float]]) -> None:
        """Write images (PNG encoding on worker threads), then append their lines and fsync once:
        a line never names a missing file."""
        entries, saves = [], []
        for sample_id, k, seed, text, images, elapsed in outputs:
            names = []
            for index, image in enumerate(images):
                name = f"{safe_name(sample_id)}_{k}.png" if len(images) == 1 else f"{safe_name(sample_id)}_{k}_{index}.png"
                saves.append(_WRITERS.submit(image.save, self.images_dir / name))
                names.append(name)
            entries.append(CachedOutput(sample_id=sample_id, k=k, seed=seed, text=text, images=names, elapsed_s=elapsed))
        for save in saves:
            save.result()
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write("\n" * self._torn_tail + "".join(entry.model_dump_json() + "\n" for entry in entries))
            handle.flush()
            os.fsync(handle.fileno())
        self._torn_tail = False
        for entry in entries:
            self._entries[(entry.sample_id, entry.k)] = entry

    def import_outputs(self, rows: list[dict[str, Any]], artifact_dir: Path) -> None:
        """Fill the cache from a generate run's `samples/<benchmark>.jsonl` rows and its images."""
        entries = []
        for row in rows:
            for output in row.get("outputs") or []:
                names = []
                for path in output["images"]:
                    names.append(Path(path).name)
                    shutil.copyfile(artifact_dir / path, self.images_dir / names[-1])
                entries.append(CachedOutput(sample_id=row["sample_id"], k=output["k"], seed=output["seed"],
                                            text=output["text"], images=names))
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write("".join(entry.model_dump_json() + "\n" for entry in entries))
        for entry in entries:
            self._entries[(entry.sample_id, entry.k)] = entry

    def _outputs_digest(self, sample_id: str, n: int) -> str:
        entries = [self._entries.get((sample_id, k)) for k in range(n)]
        return self.key(outputs=[e.model_dump(exclude={"elapsed_s"}) if e else None for e in entries])

    def _score_lines(self) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
        if self._scores is None:
            self._scores = {}
            path = self.folder / "scores.jsonl"
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        row = json.loads(line, object_hook=_read_numpy_scalar)
                        self._scores[(row["scorer"], row["sample_id"])] = (row["outputs"], row["record"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line
        return self._scores

    def score_record(self, scorer: str, sample_id: str, n: int) -> dict[str, Any] | None:
        """The record `scorer` gave this sample's `n` outputs as they are cached now, if it scored them."""
        found = self._score_lines().get((scorer, sample_id))
        if found is None or found[0] != self._outputs_digest(sample_id, n):
            return None
        return found[1]

    def add_scores(self, scorer: str, records: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Remember (sample id, n, record) triples; a record that would not read back equal (a
        tuple, an array, ...) is left out, so a reused record is always exactly the one computed."""
        lines = []
        for sample_id, n, record in records:
            outputs = self._outputs_digest(sample_id, n)
            try:
                line = json.dumps({"scorer": scorer, "sample_id": sample_id, "outputs": outputs, "record": record},
                                  default=_numpy_scalar)
                exact = bool(json.loads(line, object_hook=_read_numpy_scalar)["record"] == record)
            except (TypeError, ValueError):
                exact = False
            if exact:
                lines.append(line + "\n")
                self._score_lines()[(scorer, sample_id)] = (outputs, record)
        if lines:
            with (self.folder / "scores.jsonl").open("a+b") as handle:
                end = handle.seek(0, os.SEEK_END)
                if end:
                    handle.seek(end - 1)
                    lines.insert(0, "" if handle.read(1) == b"\n" else "\n")  # never onto a torn line
                handle.write("".join(lines).encode())

    def entry(self, sample_id: str, k: int) -> CachedOutput | None:
        return self._entries.get((sample_id, k))

    def output(self, sample_id: str, k: int) -> Output | None:
        entry = self._entries.get((sample_id, k))
        return None if entry is None else read_output(self.images_dir, entry)


def read_output(images_dir: Path, entry: CachedOutput) -> Output:
    """One cached output as a scorer reads it, its images decoded from the cache folder."""
    images = []
    for name in entry.images:
        with Image.open(images_dir / name) as img:
            images.append(img.convert("RGB"))
    return Output(k=entry.k, seed=entry.seed, text=entry.text, images=images)
