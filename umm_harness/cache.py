"""The resumable result cache: every finished output is on disk before the runner moves on.

One folder per unit of work (model weights × benchmark × run seed × params): `outputs.jsonl`,
an append-only log with one line per (sample, k), and `images/` with the PNGs it names. A
killed run leaves at worst a torn last line, which is ignored on reading, so a rerun with the
same arguments finds every finished sample and computes only the rest. Data-parallel rank r > 0
appends to `outputs-rank<r>.jsonl`; every reader reads all the logs, whatever the rank count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from tasks.base import Output

log = logging.getLogger(__name__)

_WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="umm-png")  # zlib releases the GIL


def umm_home() -> Path:
    """Where tiny models and caches live (`UMM_HOME`, default ~/.cache/umm-harness)."""
    return Path(os.environ.get("UMM_HOME", Path.home() / ".cache" / "umm-harness")).expanduser()


def safe_name(sample_id: str) -> str:
    """A file-name-safe, collision-free form of a sample id (ids may hold '/', '..' or unicode)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id).strip(".")[:80] or "sample"
    if cleaned == sample_id:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(sample_id.encode()).hexdigest()[:8]}"


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
                    if all((self.images_dir / name).is_file() for name in entry.images):
                        self._entries[(entry.sample_id, entry.k)] = entry

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

    def entry(self, sample_id: str, k: int) -> CachedOutput | None:
        return self._entries.get((sample_id, k))

    def output(self, sample_id: str, k: int) -> Output | None:
        entry = self._entries.get((sample_id, k))
        if entry is None:
            return None
        images = []
        for name in entry.images:
            with Image.open(self.images_dir / name) as img:
                images.append(img.convert("RGB"))
        return Output(k=k, seed=entry.seed, text=entry.text, images=images)
