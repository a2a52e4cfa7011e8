"""A few rows of each understanding benchmark, written as the hub stores them (parquet shards).

Each writer puts its dataset under `<data_dir>/<hub id>/…` in the hub's own layout and schema
(an `Image` feature is a struct of PNG bytes and a file name) and returns what it wrote, so a
test reads it back through the task's real loader. Every dataset has one row whose image bytes
are not an image.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CORRUPT = {"bytes": b"these bytes are not a PNG", "path": "broken.png"}


def image(color: str, name: str, size: tuple[int, int] = (16, 12)) -> dict[str, Any]:
    """An image cell holding a real PNG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": name}


def _write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


MME_SCHEMA = pa.schema([("question_id", pa.string()), ("image", IMAGE), ("question", pa.string()),
                        ("answer", pa.string()), ("category", pa.string())])


def write_mme(data_dir: Path) -> list[dict[str, Any]]:
    """Two images with two questions each, then one question on a corrupt image."""
    rows = [
        {"question_id": "existence/000.png", "image": image("red", "000.png"), "category": "existence",
         "question": "Is there a red square in this image? Please answer yes or no.", "answer": "Yes"},
        {"question_id": "existence/000.png", "image": image("red", "000.png"), "category": "existence",
         "question": "Is there a blue square in this image? Please answer yes or no.", "answer": "No"},
        {"question_id": "code_reasoning/001.png", "image": image("white", "001.png"), "category": "code_reasoning",
         "question": "Does this code print 3?", "answer": "Yes"},  # the instruction is missing on purpose
        {"question_id": "code_reasoning/001.png", "image": image("white", "001.png"), "category": "code_reasoning",
         "question": "Does this code print 4? Please answer yes or no.", "answer": "No"},
        {"question_id": "OCR/002.png", "image": CORRUPT, "category": "OCR",
         "question": "Is the word 'STOP'? Please answer yes or no.", "answer": "Yes"},
    ]
    _write(data_dir / "lmms-lab/MME/data/test-00000-of-00001.parquet", rows, MME_SCHEMA)
    return rows


MMMU_SCHEMA = pa.schema(
    [("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
    + [(f"image_{k}", IMAGE) for k in range(1, 8)]
    + [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
       ("question_type", pa.string()), ("subfield", pa.string())]
)


def _mmmu_row(id: str, question: str, options: str, answer: str, question_type: str, **images: Any) -> dict:
    return {"id": id, "question": question, "options": options, "answer": answer, "question_type": question_type,
            "explanation": "", "img_type": "['Diagrams']", "topic_difficulty": "Easy", "subfield": "Test", **images}


def write_mmmu(data_dir: Path, subjects: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Rows in Accounting (two), Math (one open question) and Physics (corrupt image); empty shards for the
    other `subjects`."""
    rows = {subject: [] for subject in subjects}
    rows["Accounting"] = [
        _mmmu_row("validation_Accounting_1", "Which colour is <image 1>?", "['red', 'green', 'blue']", "A",
                  "multiple-choice", image_1=image("red", "a1.png")),
        _mmmu_row("validation_Accounting_2", "Compare <image 1> and <image 2>.", "['same', 'different']", "B",
                  "multiple-choice", image_1=image("red", "a2.png"), image_2=image("blue", "a3.png")),
    ]
    rows["Math"] = [
        _mmmu_row("validation_Math_1", "What is 24/7 to three decimals? <image 1>", "[]", "['24/7', '3.429']",
                  "open", image_1=image("white", "m1.png")),
    ]
    rows["Physics"] = [
        _mmmu_row("validation_Physics_1", "Which force? <image 1>", "['gravity', 'friction']", "A",
                  "multiple-choice", image_1=CORRUPT),
    ]
    for subject, subject_rows in rows.items():
        _write(data_dir / f"MMMU/MMMU/{subject}/validation-00000-of-00001.parquet", subject_rows, MMMU_SCHEMA)
    return rows


MMBENCH_SCHEMA = pa.schema([
    ("index", pa.int64()), ("question", pa.string()), ("hint", pa.string()), ("answer", pa.string()),
    ("A", pa.string()), ("B", pa.string()), ("C", pa.string()), ("D", pa.string()), ("category", pa.string()),
    ("image", IMAGE), ("source", pa.string()), ("L2-category", pa.string()), ("comment", pa.string()),
    ("split", pa.string()),
])


def _mmbench_row(index: int, answer: str, options: list[str], picture: dict, hint: str | None = None) -> dict:
    letters = "ABCD"
    return {"index": index, "question": "What is shown?", "hint": hint, "answer": answer,
            **{letters[i]: options[i] if i < len(options) else None for i in range(4)},
            "category": "image_scene", "image": picture, "source": "fixture",
            "L2-category": "coarse_perception", "comment": None, "split": "dev"}


def write_mmbench(data_dir: Path, *, pre_rotated: bool) -> list[dict[str, Any]]:
    """Question 1 (2 options, with a hint), question 2 (3 options), question 3 on a corrupt image.

    Pre-rotated, as the hub's dev split is: rotation k of question g is row g + k·1e6.
    Otherwise only the base questions, which the task rotates itself.
    """
    scene, corrupt = image("green", "q.png"), CORRUPT
    base = [
        (1, "A", ["a forest", "a beach"], scene, "Look at the trees."),
        (2, "C", ["a cat", "a dog", "a bird"], scene, None),
        (3, "B", ["yes", "no"], corrupt, None),
    ]
    rows = []
    for index, answer, options, picture, hint in base:
        rotations = range(len(options)) if pre_rotated else range(1)
        for k in rotations:
            texts = options[k:] + options[:k]
            moved = "ABCD"[("ABCD".index(answer) - k) % len(options)]
            rows.append(_mmbench_row(index + k * 1_000_000, moved, texts, picture, hint))
    _write(data_dir / "lmms-lab/MMBench/en/dev-00000-of-00001.parquet", rows, MMBENCH_SCHEMA)
    return rows


MATHVISTA_SCHEMA = pa.schema([
    ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()), ("decoded_image", IMAGE),
    ("choices", pa.list_(pa.string())), ("unit", pa.string()), ("precision", pa.float64()),
    ("answer", pa.string()), ("question_type", pa.string()), ("answer_type", pa.string()),
    ("metadata", pa.struct([("category", pa.string()), ("context", pa.string()), ("grade", pa.string()),
                            ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
                            ("skills", pa.list_(pa.string())), ("source", pa.string()), ("split", pa.string()),
                            ("task", pa.string())])),
    ("query", pa.string()),
])


def _mathvista_row(pid: str, question_type: str, answer_type: str, answer: str, skills: list[str],
                   choices: list[str] | None = None, precision: float | None = None, picture: dict | None = None):
    return {
        "pid": pid, "question": f"Question {pid}?", "image": f"images/{pid}.jpg",
        "decoded_image": picture or image("yellow", f"{pid}.png"), "choices": choices, "unit": None,
        "precision": precision, "answer": answer, "question_type": question_type, "answer_type": answer_type,
        "metadata": {"category": "math-targeted-vqa", "context": "synthetic scene", "grade": "daily life",
                     "img_height": 12, "img_width": 16, "language": "english", "skills": skills,
                     "source": "fixture", "split": "testmini", "task": "figure question answering"},
        "query": f"Hint: answer as {answer_type}.\nQuestion: Question {pid}?",
    }


def write_mathvista(data_dir: Path) -> list[dict[str, Any]]:
    """One problem per answer type, and one on a corrupt image (hashed shard name, as the hub has)."""
    rows = [
        _mathvista_row("1", "multi_choice", "text", "8/11", ["arithmetic reasoning"],
                       choices=["3/11", "8/11", "6/11", "3/5"]),
        _mathvista_row("2", "free_form", "integer", "3", ["arithmetic reasoning", "numeric commonsense"]),
        _mathvista_row("3", "free_form", "float", "1.45", ["statistical reasoning"], precision=2.0),
        _mathvista_row("4", "free_form", "list", "[2007, 2008]", ["statistical reasoning"]),
        _mathvista_row("5", "free_form", "integer", "7", ["arithmetic reasoning"], picture=CORRUPT),
    ]
    _write(data_dir / "AI4Math/MathVista/data/testmini-00000-of-00001-725687bf7a18d64b.parquet", rows,
           MATHVISTA_SCHEMA)
    return rows


MMSTAR_SCHEMA = pa.schema([
    ("index", pa.int64()), ("question", pa.string()), ("image", IMAGE), ("answer", pa.string()),
    ("category", pa.string()), ("l2_category", pa.string()),
    ("meta_info", pa.struct([("source", pa.string()), ("split", pa.string()), ("image_path", pa.string())])),
])


def write_mmstar(data_dir: Path) -> list[dict[str, Any]]:
    """Four questions as Lin-Chen/MMStar stores them (options inline in the question, one
    `mmstar.parquet`): two capabilities, an option text holding a comma, an option "None" (which
    VLMEvalKit's tables read as missing), a question without options, one on a corrupt image."""

    def row(index: int, question: str, answer: str, category: str, l2: str, picture: dict) -> dict[str, Any]:
        return {"index": index, "question": question, "image": picture, "answer": answer, "category": category,
                "l2_category": l2, "meta_info": {"source": "fixture", "split": "val", "image_path": f"{index}.png"}}

    rows = [
        row(0, "What colour is the square?\nOptions: A: red, B: green, C: blue, D: black", "A",
            "coarse perception", "image scene and topic", image("red", "0.png")),
        row(1, "Which pair is shown?\nOptions: A: a cat, a dog, B: two birds, C: None, D: a fish", "A",
            "fine-grained perception", "object counting", image("green", "1.png")),
        row(2, "How many sides has a square?", "B", "math", "numeric commonsense and calculation",
            image("blue", "2.png")),
        row(3, "Is it day?\nOptions: A: yes, B: no", "A", "coarse perception", "image style & quality", CORRUPT),
    ]
    _write(data_dir / "Lin-Chen/MMStar/mmstar.parquet", rows, MMSTAR_SCHEMA)
    return rows
