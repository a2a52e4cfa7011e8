"""Interleaved conversations (IRG, UniCoT): parquet rows → sequence plans of text and image parts.

The format is IRG's (`MultiThinkInterleaveT2IDataset`, RESEARCH-WAVE2 C), read here by our own
parser. `data.path` is a folder with one subfolder (or one `<subset>.parquet`) per data subset, an
IRG learning mode (`initial_full_learning`, ...) or a UniCoT task (`self_reflection`, `breakdown`);
each parquet file has a `conversation` column holding a JSON list of turns, and optionally an `id`:

    [{"role": "user", "content": "Draw a red square.", "need_loss": false},
     {"role": "assistant", "content": [
         {"type": "text", "content": "First a square, then colour it.", "need_loss": true},
         {"type": "image", "content": "<base64 PNG/JPEG>", "need_loss": true, "need_vae": true, "need_vit": true},
         {"type": "text", "content": "The edge is blurry; sharpen it.", "need_loss": true},
         {"type": "image", "content": "<base64>", "need_loss": true}]}]

- a user turn is text, learnt only with `need_loss: true` (default false);
- an assistant turn is a list of parts; text parts are learnt unless `need_loss: false`;
- an image part with `need_loss: true` is a generation target; `need_vae` / `need_vit` add it as a
  condition for what follows (its clean latents / its understanding view); it needs at least one.

Upstream skips a malformed row silently; here every row is checked before anything trains, and a
bad one is a `ConfigError` naming the file, the row, the turn, the part and the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from training.parquet import read_rows
from umm_harness.core.errors import ConfigError
from umm_harness.core.training import Example, Part


def subset_files(root: Path, subset: str) -> list[Path]:
    """The parquet files of one subset: `<root>/<subset>/*.parquet` or `<root>/<subset>.parquet`."""
    folder, single = root / subset, root / f"{subset}.parquet"
    if folder.is_dir():
        return sorted(folder.glob("*.parquet"))
    return [single] if single.is_file() else []


def load_subsets(root: Path, subsets: list[str], optional: frozenset[str] = frozenset()) -> list[Example]:
    """Every row of every named subset as an interleaved example (`metadata["subset"]` says which)."""
    if not root.is_dir():
        raise ConfigError(f"data.path '{root}' is not a folder (one subfolder of parquet files per subset: "
                          f"{', '.join(subsets)})")
    examples: list[Example] = []
    for subset in subsets:
        files = subset_files(root, subset)
        if not files:
            if subset in optional:
                continue
            raise ConfigError(f"data.path '{root}': no parquet files for subset '{subset}' "
                              f"(expected {root / subset}/*.parquet or {root / subset}.parquet)")
        rows = [example for file in files for example in _read_file(file, subset)]
        if not rows and subset not in optional:
            raise ConfigError(f"data.path '{root}': subset '{subset}' has no rows")
        examples += rows
    if not examples:
        raise ConfigError(f"data.path '{root}' holds no conversations for {', '.join(subsets)}")
    return examples


def _read_file(path: Path, subset: str) -> list[Example]:
    examples = []
    for index, row in enumerate(read_rows(path, "conversation")):
        where = f"data.path '{path}': row {index}"
        parts = parse_conversation(row["conversation"], where)
        row_id = row.get("id")
        example_id = str(row_id) if row_id is not None and str(row_id) else f"{subset}/{path.stem}/{index}"
        examples.append(Example(example_id, "interleaved", "", parts=parts, metadata={"subset": subset}))
    return examples


def parse_conversation(value: Any, where: str) -> tuple[Part, ...]:
    """One row's `conversation` (JSON text) as a sequence plan; `where` names the row in errors."""
    try:
        turns = json.loads(value) if isinstance(value, (str, bytes)) else value
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: field 'conversation': not JSON ({exc})") from None
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where}: field 'conversation': expected a non-empty JSON list of turns")
    parts: list[Part] = []
    for t, turn in enumerate(turns):
        at = f"{where}: turn {t}"
        if not isinstance(turn, dict):
            raise ConfigError(f"{at}: expected an object with 'role' and 'content'")
        role, content = turn.get("role"), turn.get("content")
        if role == "user":
            parts.append(_text(turn, False, at))
        elif role == "assistant":
            if not isinstance(content, list) or not content:
                raise ConfigError(f"{at}: field 'content': an assistant turn is a non-empty list of parts")
            parts += [_part(part, f"{at}: part {p}") for p, part in enumerate(content)]
        else:
            raise ConfigError(f"{at}: field 'role': expected 'user' or 'assistant', got {role!r}")
    if not any(part.loss for part in parts):
        raise ConfigError(f"{where}: nothing to learn (no part has need_loss: true)")
    return tuple(parts)


def _part(part: Any, at: str) -> Part:
    if not isinstance(part, dict):
        raise ConfigError(f"{at}: expected an object with 'type' and 'content'")
    kind, content = part.get("type"), part.get("content")
    if kind == "text":
        return _text(part, True, at)
    if kind == "image":
        flags = {name: _flag(part, f"need_{name}", False, at) for name in ("loss", "vae", "vit")}
        if not any(flags.values()):
            raise ConfigError(f"{at}: an image part needs need_loss, need_vae or need_vit to be true")
        return Part("image", image=_image(content, at), **flags)
    raise ConfigError(f"{at}: field 'type': expected 'text' or 'image', got {kind!r}")


def _text(mapping: dict, learnt: bool, at: str) -> Part:
    """A user turn or a text part; `learnt`: whether it is learnt when `need_loss` is not given."""
    content = mapping.get("content")
    if not isinstance(content, str) or not content:
        raise ConfigError(f"{at}: field 'content': expected non-empty text")
    return Part("text", text=content, loss=_flag(mapping, "need_loss", learnt, at))


def _flag(mapping: dict, name: str, default: bool, at: str) -> bool:
    value = mapping.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{at}: field '{name}': expected true or false, got {value!r}")
    return value


def _image(content: Any, at: str) -> Image.Image:
    if not isinstance(content, str) or not content:
        raise ConfigError(f"{at}: field 'content': an image part is a base64 string")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(content, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise ConfigError(f"{at}: field 'content': not a base64 image ({exc})") from None
    return image.convert("RGB")


def describe_parts(parts: tuple[Part, ...], image_sha) -> str:
    """A plan as JSON text with images by content hash: what the dataset record and digest hold."""
    return json.dumps([{"type": p.type, "text": p.text, "image": image_sha(p.image), "loss": p.loss,
                        "vae": p.vae, "vit": p.vit} for p in parts])
