"""A few rows of each editing benchmark, written in its published layout.

GEdit-Bench: parquet in the hub's schema under `<data_dir>/stepfun-ai/GEdit-Bench/data/`
(image columns are structs of PNG bytes and a file name). ImgEdit-Bench: the extracted
`Benchmark.tar` layout (`singleturn/<category>/<file>.jpg`, `hard/<file>.jpg`) beside hand-made
stand-ins for the four published files of PKU-YuanGroup/ImgEdit (edit lists, judge prompts, the
UGE script), which are not in ../shared/data: `use_imgedit_stand_ins` points the product's blob-hash
check at the stand-ins' hashes, as the real files are checked against theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import imgedit as imgedit_module
from tasks.benchmark_files import git_blob_sha1
from tests.fixtures_hub import IMAGE, image

GEDIT_SCHEMA = pa.schema([("task_type", pa.string()), ("key", pa.string()), ("instruction", pa.string()),
                          ("instruction_language", pa.string()), ("input_image", IMAGE), ("input_image_raw", IMAGE),
                          ("Intersection_exist", pa.bool_())])


def gedit_row(group: str, key: str, language: str, instruction: str, color: str, *, intersection: bool = True,
              size: tuple[int, int] = (40, 30)) -> dict[str, Any]:
    """One row: the judged source (`input_image`) and the model input (`input_image_raw`, twice as large)."""
    return {"task_type": group, "key": key, "instruction": instruction, "instruction_language": language,
            "input_image": image(color, f"{key}.png", size),
            "input_image_raw": image(color, f"{key}_raw.png", (2 * size[0], 2 * size[1])),
            "Intersection_exist": intersection}


GEDIT_ROWS = [
    gedit_row("color_alter", "c1", "en", "Make the square blue.", "red"),
    gedit_row("color_alter", "c1", "cn", "把方块变成蓝色。", "red"),
    gedit_row("subject-remove", "r1", "en", "Remove the square.", "green", intersection=False),
    gedit_row("text_change", "t1", "en", "Write STOP on it.", "white"),
]


def write_gedit(data_dir: Path, rows: list[dict[str, Any]] = GEDIT_ROWS, *, arrow: bool = False) -> Path:
    """Parquet shards as the hub's parquet layout has them, or (`arrow`) `save_to_disk`'s arrow stream files."""
    table = pa.Table.from_pylist(rows, schema=GEDIT_SCHEMA)
    root = data_dir / "stepfun-ai/GEdit-Bench"
    path = root / ("train/data-00000-of-00001.arrow" if arrow else "data/train-00000-of-00001.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrow:
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table)
    else:
        pq.write_table(table, path)
    return data_dir


# --- ImgEdit ---------------------------------------------------------------------------------------

BASIC_EDITS = {
    "11": {"id": "animal/000000011.jpg", "prompt": "Add a hat to the cat.", "edit_type": "add"},
    "12": {"id": "style/000000012.jpg", "prompt": "Make it a watercolour.", "edit_type": "style"},
    "13": {"id": "animal/000000013.jpg", "prompt": "Remove the dog.", "edit_type": "remove"},
}
UGE_EDITS = {"1": {"id": "000000101.jpg", "prompt": "Turn the lemon into an orange."}}
PROMPTS = {edit_type: f"Rate this {edit_type} edit.\nFirst: 1-5\nSecond: 1-5\nInstruction: <edit_prompt>."
           for edit_type in ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose",
                             "action")}
UGE_SCRIPT = 'import json\n\nprompt = """\nRate the edit 1-5.\nEditing Instruction: <edit_prompt>.\n"""\n\n' \
             'def main():\n    pass\n'


def write_imgedit(data_dir: Path) -> Path:
    """The stand-in JSON files and script under `Basic/`, `UGE/`, and the images under `Benchmark/`."""
    files = {"Basic/basic_edit.json": json.dumps(BASIC_EDITS, indent=4), "Basic/prompts.json": json.dumps(PROMPTS),
             "UGE/UGE_edit.json": json.dumps(UGE_EDITS), "UGE/UGE_bench.py": UGE_SCRIPT}
    for rel, text in files.items():
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_text(text, encoding="utf-8")
    colors = iter(["red", "blue", "green", "yellow"])
    for folder, edits in (("singleturn", BASIC_EDITS), ("hard", UGE_EDITS)):
        for item in edits.values():
            path = data_dir / "Benchmark" / folder / item["id"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 16), next(colors)).save(path, format="JPEG")
    return data_dir


def use_imgedit_stand_ins(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Check the stand-ins against their own blob hashes, where the product checks the published ones."""
    for name in ("BASIC_EDITS", "BASIC_PROMPTS", "UGE_EDITS", "UGE_SCRIPT"):
        file = getattr(imgedit_module, name)
        sha = git_blob_sha1((data_dir / file.path).read_bytes())
        monkeypatch.setattr(imgedit_module, name, file.model_copy(update={"blob_sha1": sha}))
