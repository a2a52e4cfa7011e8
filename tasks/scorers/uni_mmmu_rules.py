"""Uni-MMMU's rule checks and judge-reply readers, as the official `eval_ummmu.py` defines them.

Rule-checked parts (no judge):
- Maze and sliding puzzle, text: the LAST `<ANSWER_JSON>[...]</ANSWER_JSON>` block is read as a
  JSON list of moves (lower-cased, stripped; unreadable → no moves). `text_exact` = the list
  equals the ground truth; `text_frame_acc` = moves equal at the same position (over the shorter
  list) / ground-truth length.
- Maze, images: every generated step image is parsed back into a grid (`parse_maze_image`: the
  board found by its content colours, a 6×6 grid of cells labelled wall / floor / start / goal
  by the share of pixels nearest each palette colour) and compared with the grids the
  ground-truth moves give from the start position (a blocked move stays put): `img_frame_acc` =
  equal grids at the same step / ground-truth length, `img_exact` = same count and all equal.
- Sliding puzzle, images: each image is parsed into a 3×3 grid of Set1 palette indices
  (`parse_sliding_image`, "?" when no colour covers 80 % of a cell) and compared as text with
  the parsed ground-truth step images, the same two ways.
- Jigsaw, text: the `<FINAL_ANSWER_JSON>{...}</FINAL_ANSWER_JSON>` block's `choice` must be 0 or
  1 (Python's `in (0, 1)`, so `true` reads as 1); correct when it equals the label.
- Jigsaw, images: DreamSim distance of the two completed grids to the ground truth, 1 − mean,
  1.0 distance when not exactly two images. DreamSim is not in transformers: pass a distance
  function to score this part; without one it is not reported.

Judged parts read a JSON object from the reply (the first balanced `{...}`, strings respected).
The official code reads missing fields as 0 and a reply without JSON as all 0; here a reply
without the fields a part needs is a parse failure (retried once, then counted in
`judge_failures` and left out of that part's average).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from tasks.judges.parsing import ParseError

DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

# --- text answers ------------------------------------------------------------------------------


def parse_moves(text: str) -> list[str]:
    matches = list(re.finditer(r"<ANSWER_JSON>\s*(\[.*?\])\s*</ANSWER_JSON>", text or "", re.IGNORECASE | re.DOTALL))
    if not matches:
        return []
    try:
        moves = json.loads(matches[-1].group(1))
    except json.JSONDecodeError:
        return []
    return [str(move).strip().lower() for move in moves]


def text_moves_score(pred: Sequence[str], gt: Sequence[str]) -> dict[str, float]:
    if not gt:
        return {"text_exact": 0.0, "text_frame_acc": 0.0}
    hits = sum(p == g for p, g in zip(pred, gt))
    return {"text_exact": float(list(pred) == list(gt)), "text_frame_acc": hits / len(gt)}


def parse_jigsaw_choice(text: str) -> tuple[int | None, str]:
    match = re.search(r"<FINAL_ANSWER_JSON>\s*({.*?})\s*</FINAL_ANSWER_JSON>", text or "", re.DOTALL | re.IGNORECASE)
    if not match:
        return None, "no_final_json_block"
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None, "bad_json"
    choice = data.get("choice") if isinstance(data, dict) else None
    if choice in (0, 1):
        return int(choice), "ok"
    return None, "invalid_choice_value"


def render_summary(text: str) -> str:
    match = re.search(r"<RENDER_SUMMARY>\s*(.*?)\s*</RENDER_SUMMARY>", text or "", re.IGNORECASE | re.DOTALL)
    return match.group(1).strip() if match else ""


# --- maze ----------------------------------------------------------------------------------------

Grid = list[list[str]]


def simulate_positions(start: tuple[int, int], walls: Sequence[Sequence[bool]],
                       moves: Sequence[str]) -> list[tuple[int, int]]:
    rows, cols = len(walls), len(walls[0])
    r, c = start
    trajectory = []
    for move in moves:
        dr, dc = DIRECTIONS.get(move, (0, 0))
        nr, nc = r + dr, c + dc
        if 0 <= nr < rows and 0 <= nc < cols and not walls[nr][nc]:
            r, c = nr, nc
        trajectory.append((r, c))
    return trajectory


def grid_from_state(walls: Sequence[Sequence[bool]], goal: tuple[int, int] | None,
                    current: tuple[int, int] | None) -> Grid:
    grid = [["#" if wall else " " for wall in row] for row in walls]
    if goal:
        grid[goal[0]][goal[1]] = "G"
    if current:
        grid[current[0]][current[1]] = "SG" if current == goal else "S"
    return grid


def expected_maze_grids(start: tuple[int, int] | None, goal: tuple[int, int] | None, walls: Sequence[Sequence[bool]],
                        moves: Sequence[str]) -> list[Grid]:
    if not start or not walls:
        return []
    return [grid_from_state(walls, goal, pos) for pos in simulate_positions(start, walls, moves)]


def _grids_equal(a: Grid | None, b: Grid | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    if not a:
        return not b
    return len(a[0]) == len(b[0]) and all(x == y for x, y in zip(a, b))


def _parse_ok(grid: Grid | None, walls: Sequence[Sequence[bool]]) -> bool:
    if grid is None or len(grid) != len(walls) or (grid and len(grid[0]) != len(walls[0])):
        return False
    counts = {"S": 0, "G": 0, "SG": 0}
    for r, row in enumerate(walls):
        for c, wall in enumerate(row):
            cell = grid[r][c]
            if cell == "?" or (cell == "#") != wall:
                return False
            if cell in counts:
                counts[cell] += 1
    return (counts["SG"] == 1 and counts["S"] == 0 and counts["G"] == 0) or (
        counts["SG"] == 0 and counts["S"] == 1 and counts["G"] == 1)


def maze_image_score(pred: Sequence[Grid | None], gt: Sequence[Grid],
                     walls: Sequence[Sequence[bool]]) -> dict[str, float]:
    if not gt:
        return {"img_exact": 0.0, "img_frame_acc": 0.0, "parse_frame_success": 0.0, "parse_all_ok": 0.0}
    hits = sum(1 for i in range(len(gt)) if i < len(pred) and _grids_equal(pred[i], gt[i]))
    parsed_ok = sum(_parse_ok(p, walls) for p in pred)
    return {
        "img_exact": float(len(pred) == len(gt) and hits == len(gt)),
        "img_frame_acc": hits / len(gt),
        "parse_frame_success": parsed_ok / len(pred) if pred else 0.0,
        "parse_all_ok": float(bool(pred) and parsed_ok == len(pred)),
    }


def sequence_text_score(pred: Sequence[str], gt: Sequence[str]) -> dict[str, float]:
    """The sliding puzzle's image comparison on parsed text grids."""
    if not gt:
        return {"img_exact": float(not pred), "img_frame_acc": float(not pred)}
    hits = sum(p == g for p, g in zip(pred, gt))
    return {"img_exact": float(list(pred) == list(gt)), "img_frame_acc": hits / len(gt)}


def _rgb01(hex_color: str) -> np.ndarray:
    h = hex_color.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float32) / 255.0


MAZE_PALETTE = {name: _rgb01(value) for name, value in {
    "floor": "#f4efe6", "wall": "#1f2937", "start": "#2563eb", "goal": "#22c55e", "white": "#ffffff", "path": "#ef4444",
}.items()}
SLIDING_PALETTE = [_rgb01(c) for c in ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628",
                                       "#f781bf", "#999999")]


def _to01(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.float32) / 255.0


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def _tiles(board: np.ndarray, grid_h: int, grid_w: int) -> list[list[np.ndarray]]:
    """The board cut into grid cells, row by row, at rounded cell edges (a cell may be empty)."""
    cell_h, cell_w = board.shape[0] / grid_h, board.shape[1] / grid_w
    ys = [int(round(r * cell_h)) for r in range(grid_h + 1)]
    xs = [int(round(c * cell_w)) for c in range(grid_w + 1)]
    return [[board[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] for c in range(grid_w)] for r in range(grid_h)]


def _board(content_mask: np.ndarray, frac: float, margin: int, rows_bound: int,
           cols_bound: int) -> tuple[int, int, int, int]:
    """The square board around the content, as the official finder computes it (bounds as it passes them)."""
    height, width = content_mask.shape
    row_hits = [i for i in range(height) if content_mask[i].mean() > frac]
    col_hits = [j for j in range(width) if content_mask[:, j].mean() > frac]
    top, bottom = (row_hits[0], row_hits[-1]) if row_hits else (0, height - 1)
    left, right = (col_hits[0], col_hits[-1]) if col_hits else (0, width - 1)
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(height - 1, bottom + margin), min(width - 1, right + margin)
    side = max(bottom - top + 1, right - left + 1)
    cy, cx, half = (top + bottom) // 2, (left + right) // 2, side // 2
    t = max(0, cy - half)
    b = min(rows_bound, t + side)
    t = b - side
    lft = max(0, cx - half)
    r = min(cols_bound, lft + side)
    lft = r - side
    return t, lft, b, r


def parse_maze_image(image: Image.Image, grid_h: int = 6, grid_w: int = 6, tolerance: float = 0.75,
                     min_start: float = 0.08, min_goal: float = 0.25) -> dict[str, Any]:
    """A maze picture as a grid of "#", " ", "S", "G", "SG", "?" with start and goal cells."""
    rgb = _to01(image)
    height, width = rgb.shape[:2]
    content = np.stack([_dist(rgb, MAZE_PALETTE[k]) for k in ("wall", "start", "goal", "path")], -1).min(-1)
    whiteish = np.stack([_dist(rgb, MAZE_PALETTE[k]) for k in ("white", "floor")], -1).min(-1)
    # The official finder bounds rows by the width and columns by the height (equal for square images).
    t, lft, b, r = _board((content + 0.01) < whiteish, 0.003, 2, width, height)
    board = rgb[t:b, lft:r]  # a negative start slices from the end, as in the official code
    labels = ("floor", "wall", "start", "goal")
    s_thresh, g_thresh = tolerance * 0.25, tolerance * 0.75
    grid: Grid = []
    start = goal = None
    fracs = np.zeros((grid_h, grid_w, 4), dtype=np.float32)
    for gr, tiles in enumerate(_tiles(board, grid_h, grid_w)):
        row = []
        for gc, tile in enumerate(tiles):
            if tile.size == 0:
                row.append("?")
                continue
            nearest = np.stack([_dist(tile, MAZE_PALETTE[k]) for k in labels], -1).argmin(-1)
            f = np.array([(nearest == k).mean() for k in range(4)], dtype=np.float32)
            fracs[gr, gc] = f
            if f[2] >= s_thresh and f[3] >= g_thresh:
                start = goal = (gr, gc)
                row.append("SG")
            elif f[2] >= s_thresh:
                start = (gr, gc)
                row.append("S")
            elif f[3] >= g_thresh:
                goal = (gr, gc)
                row.append("G")
            elif f[1] >= tolerance:
                row.append("#")
            elif f[0] >= tolerance:
                row.append(" ")
            else:
                row.append("?")
        grid.append(row)
    if start is None:
        best = np.unravel_index(np.argmax(fracs[:, :, 2]), (grid_h, grid_w))
        if fracs[best[0], best[1], 2] >= min_start:
            start = (int(best[0]), int(best[1]))
            grid[start[0]][start[1]] = "S"
    if goal is None:
        best = np.unravel_index(np.argmax(fracs[:, :, 3]), (grid_h, grid_w))
        if fracs[best[0], best[1], 3] >= min_goal:
            goal = (int(best[0]), int(best[1]))
            grid[goal[0]][goal[1]] = "SG" if grid[goal[0]][goal[1]] == "S" else "G"
    if start is not None and start == goal:
        grid[start[0]][start[1]] = "SG"
    return {"grid": grid, "start": start, "goal": goal, "ascii": "\n".join("".join(row) for row in grid)}


def parse_sliding_image(image: Image.Image, grid_h: int = 3, grid_w: int = 3, tolerance: float = 0.80) -> str:
    """A sliding-puzzle picture as rows of palette indices (1..9) or "?" joined by spaces and newlines."""
    rgb = _to01(image)
    height, width = rgb.shape[:2]
    white = _dist(rgb, np.array([1.0, 1.0, 1.0], dtype=np.float32))
    content = np.stack([_dist(rgb, c) for c in SLIDING_PALETTE], -1).min(-1)
    t, lft, b, r = _board((content + 0.01) < white, 0.002, 2, height, width)
    board = rgb[t:b, lft:r]
    rows = []
    for tiles in _tiles(board, grid_h, grid_w):
        row = []
        for tile in tiles:
            if tile.size == 0:
                row.append("?")
                continue
            nearest = np.stack([_dist(tile, c) for c in SLIDING_PALETTE], -1).argmin(-1)
            counts = np.array([(nearest == k).mean() for k in range(len(SLIDING_PALETTE))])
            best = int(counts.argmax())
            row.append(str(best + 1) if counts[best] >= tolerance else "?")
        rows.append(" ".join(row))
    return "\n".join(rows)


# --- judge replies -------------------------------------------------------------------------------


def first_json_object(text: str) -> dict[str, Any]:
    """The first balanced `{...}` in the text (braces inside strings ignored), as a dict."""
    start = (text or "").find("{")
    if start == -1:
        raise ParseError("no JSON object in the reply")
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if char == '"' and not escaped:
            in_string = not in_string
        if not in_string:
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[start : i + 1])
                    except json.JSONDecodeError as exc:
                        raise ParseError(f"unreadable JSON object ({exc})") from None
                    if not isinstance(value, dict):
                        raise ParseError("the JSON is not an object")
                    return value
        escaped = char == "\\" and not escaped
    raise ParseError("unbalanced JSON object in the reply")


def _binary(data: dict[str, Any], key: str, truthy: bool = False) -> int:
    if key not in data:
        raise ParseError(f"no {key} in the judge's JSON")
    value = data[key]
    if truthy:  # the official reads these with `1 if data.get(key) else 0`
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no"):
            return 0
        return 1 if value else 0
    try:
        return 1 if int(value) == 1 else 0  # the official `int(data.get(key, 0)) == 1`
    except (TypeError, ValueError):
        raise ParseError(f"{key} is {value!r}, not 0 or 1") from None


def parse_overlay(reply: str) -> dict[str, Any]:
    data = first_json_object(reply)
    return {"overlay_ok": _binary(data, "overlay_ok")}


def parse_geometry_text(reply: str) -> dict[str, Any]:
    data = first_json_object(reply)
    out = {"text_ok": _binary(data, "text_ok")}
    for key in ("reasoning_rigorous", "conclusion_correct"):
        if key in data:
            out[key] = _binary(data, key)
    return out


def parse_science_text(reply: str) -> dict[str, Any]:
    data = first_json_object(reply)
    return {"reasoning_correct": _binary(data, "reasoning_correct", truthy=True),
            "result_correct": _binary(data, "result_correct", truthy=True)}


def parse_science_image(reply: str) -> dict[str, Any]:
    return {"image_correct": _binary(first_json_object(reply), "image_correct", truthy=True)}


def parse_code_image(reply: str) -> dict[str, Any]:
    data = first_json_object(reply)
    out: dict[str, Any] = {}
    for key in ("shape_color_accuracy", "position_accuracy"):
        try:
            value = float(data[key])
        except (KeyError, TypeError, ValueError):
            raise ParseError(f"{key} missing or not a number") from None
        if not 0 <= value <= 5:
            raise ParseError(f"{key} {value} outside 0-5")
        out[key] = value
    out["verdict"] = str(data.get("verdict", ""))
    out["image_match"] = int(out["verdict"] == "match")
    return out


def parse_code_text(reply: str) -> dict[str, Any]:
    return {"text_semantic_match": _binary(first_json_object(reply), "text_semantic_match", truthy=True)}
