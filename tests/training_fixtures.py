"""Helpers shared by the post-training and upstream-BAGEL tests: registering a tiny base model,
forgetting an imported upstream checkout, and tiny data sets in each training data format."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
from PIL import Image

from model_flavors import flavor
from tests.conftest import REPO

BAGEL_CHECKOUT = REPO.parent / "shared" / "upstream" / "bagel"


def register_base(backbone, name: str) -> None:
    """`backbone` registered as version 1 of `name` (from a run of the `base` experiment)."""
    mlflow.set_experiment("base")
    with mlflow.start_run():
        flavor.log_model(backbone, registered_model_name=name)


def forget_upstream_modules(checkout: Path = BAGEL_CHECKOUT) -> None:
    """Drop BAGEL's top-level upstream modules (`inferencer`, `data`, `modeling`) and its path, so a
    later import of another checkout with the same names gets its own."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("inferencer", "data", "modeling")]:
        del sys.modules[name]
    if str(checkout.resolve()) in sys.path:
        sys.path.remove(str(checkout.resolve()))


def square(color: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(color, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def b64(image: Image.Image | str) -> str:
    """An image as base64 PNG text (a string is taken as already encoded, e.g. a broken one)."""
    if isinstance(image, str):
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_parquet(path: Path, images: list) -> Path:
    """RecA's format: one image per row (`id`, `image` as base64)."""
    pd.DataFrame({"id": [f"img{i}" for i in range(len(images))], "image": [b64(x) for x in images]}).to_parquet(path)
    return path


# -- interleaved conversations (IRG, UniCoT) ---------------------------------------------------------

_COLORS = ("red", "blue", "green", "yellow")


def _conversation(color: str, *, think: bool, draw: bool, refine: bool) -> list[dict]:
    """One IRG conversation: the user asks for a square; the assistant thinks (text) and draws it.
    Improving (`refine`): the first drawing is a condition, the assistant reflects (text) and draws
    the final one. `think` / `draw` say whether the step's text / image is learnt."""
    first, final = square(color, 48), square(color)
    plan = "A square, centred, on white."
    if not refine:
        parts = [{"type": "text", "content": plan, "need_loss": think}]
        parts += [{"type": "image", "content": b64(first), "need_loss": True}] if draw else []
    else:
        parts = [{"type": "text", "content": plan, "need_loss": False},
                 {"type": "image", "content": b64(first), "need_vae": True, "need_vit": True},
                 {"type": "text", "content": "It is too small; make it larger.", "need_loss": think}]
        parts += [{"type": "image", "content": b64(final), "need_loss": True}] if draw else []
    return [{"role": "user", "content": f"Draw a {color} square in the middle."},
            {"role": "assistant", "content": parts}]


# What each learning mode learns: the first or the improving step, its text, its image or both.
IRG_MODE_FLAGS = {
    "initial_thinking_understanding_learning": {"think": True, "draw": False, "refine": False},
    "initial_thinking_generation_learning": {"think": False, "draw": True, "refine": False},
    "initial_full_learning": {"think": True, "draw": True, "refine": False},
    "improving_thinking_understanding_learning": {"think": True, "draw": False, "refine": True},
    "improving_thinking_generation_learning": {"think": False, "draw": True, "refine": True},
    "improving_full_learning": {"think": True, "draw": True, "refine": True},
}


def conversations_parquet(path: Path, conversations: list) -> Path:
    """IRG's format: a `conversation` column of JSON turns (a string is written as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [c if isinstance(c, str) else json.dumps(c) for c in conversations]
    pd.DataFrame({"id": [f"{path.stem}-{i}" for i in range(len(texts))], "conversation": texts}).to_parquet(path)
    return path


def irg_dataset(root: Path, modes=tuple(IRG_MODE_FLAGS), rows: int = 2) -> Path:
    """A tiny IRG data set: one subfolder per learning mode, `rows` conversations each."""
    for mode in modes:
        conversations = [_conversation(_COLORS[i % len(_COLORS)], **IRG_MODE_FLAGS[mode]) for i in range(rows)]
        conversations_parquet(root / mode / "part-0.parquet", conversations)
    return root


def unicot_dataset(root: Path, rows: int = 2) -> Path:
    """A tiny UniCoT data set: self-reflection (draw, critique, redraw) and breakdown (one step per
    sub-task, each with its image) conversations."""
    reflection = [_conversation(_COLORS[i % len(_COLORS)], think=True, draw=True, refine=True)
                  for i in range(rows)]
    breakdown = []
    for i in range(rows):
        a, b = _COLORS[i % len(_COLORS)], _COLORS[(i + 1) % len(_COLORS)]
        breakdown.append([
            {"role": "user", "content": f"Draw a {a} square, then make it {b}."},
            {"role": "assistant", "content": [
                {"type": "text", "content": f"Step 1: a {a} square."},
                {"type": "image", "content": b64(square(a)), "need_loss": True, "need_vae": True},
                {"type": "text", "content": f"Step 2: recolour it {b}."},
                {"type": "image", "content": b64(square(b)), "need_loss": True},
            ]},
        ])
    conversations_parquet(root / "self_reflection" / "part-0.parquet", reflection)
    conversations_parquet(root / "breakdown" / "part-0.parquet", breakdown)
    return root
