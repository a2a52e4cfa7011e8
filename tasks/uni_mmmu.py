"""Uni-MMMU: six reasoning tasks that couple understanding and generation, scored by rules and judges.

Data: hub dataset `Vchitect/Uni-MMMU-Eval`, which holds one archive, `data.tar`, extracting to
`data/` (not parquet shards, so `tasks/hub_data.py` does not apply). `--data-dir` may point at
the extracted `data/` folder (or its parent, or `<data-dir>/uni_mmmu[/data]`); otherwise the
archive is downloaded with `huggingface_hub` into `$UMM_HOME/benchmarks/uni_mmmu/` and
extracted there. The archive's contents could not be inspected from here: the layout below is
read from the official sampling scripts and evaluator (Vchitect/Uni-MMMU, `sample_code_example/`
and `eval_ummmu.py`) and is this module's best reading of it:
- maze: `maze/maze_<h>x<w>_<id>_steps/maze_step_0000.png` (the puzzle) with the solution
  `maze/maze_<h>x<w>_steps_<id>.json` (`steps_long`); case 00015 is the official few-shot
  example and is left out, as the samplers do;
- sliding: `sliding/summary_steps_le_8.json` (`items` with `steps_dir` and `steps_words_json`),
  frames `demo_step_*.png` (first = initial, last = final state), solution `steps_words`;
- jigsaw: `jigsaw_dataset_2x2ref/metadata.json` (`items`: `id`, `label`,
  `ref_panel.ref_image_path`, `candidate_paths`, `gt_completed_2x2_path`, `gt_wrong_2x2_path`);
- geometry: `math_data/filtered.json` (`{group: {item: {type, problem_text_en, solution_en,
  auxiliary_text_en, original_image, auxiliary_image, choices_en}}}`);
- science: `science/dim_all.json` (blocks with `samples`: `input_image_file_path_list`,
  `input_prompt` (the condition), `output_prompt` (the reference final state));
- code: `svg/metadata.json` (`samples`: `id`, `difficulty`, `svg`, `png`).
Paths inside the JSON files are tried relative to the file's folder, the data root and its parent.

Generation: the official samplers drive each model through a multi-turn loop (few-shot
demonstrations, then k step images and a final text, each turn seeing the earlier outputs).
The harness's requests are single-turn and produce text or images, so each case is two
samples, `<task>/<case>/text` (an understanding request: the instructions and the input images;
for code, the SVG source) and `<task>/<case>/image` (an editing request with the input images;
for code, a generation request), zero-shot, with the instructions in this project's words and
the official answer formats (`<ANSWER_JSON>`, `<FINAL_ANSWER_JSON>`, `<RENDER_SUMMARY>`). The
maze and sliding image requests carry `metadata["num_images"]` (the number of step images
expected). Scores are therefore not the paper's protocol for models that need the loop; they
are the same rules applied to what a single-turn model produces.

Scoring (`tasks/scorers/uni_mmmu_rules.py`): rule checks for maze, sliding and jigsaw; judges
for geometry (an image judge on base / reference overlay / candidate, and a text judge on the
solution), science (text judge on the explanation, image judge on initial + candidate) and code
(image judge on reference render vs candidate, 0–5 shape/colour and position; text judge on the
`<RENDER_SUMMARY>`). `judge=` is the vision judge (official: Qwen2.5-VL-72B-Instruct),
`text_judge=` the geometry text grader (official: Qwen3-32B; defaults to `judge`). The
jigsaw image score needs DreamSim (`jigsaw_distance=`, a function of two images); without it
that metric is not reported. The code reference image is the dataset's PNG; an SVG-only case
is skipped in both code parts (rasterising needs cairosvg; the official evaluator renders it, and
scores 0 when even that fails). A geometry case without its reference images is skipped, as
the official evaluator skips it.

Metrics (fractions; code image scores on 0–5), named after the official summary columns:
`jigsaw/text`, `jigsaw/image`, `maze/text`, `maze/image` (frame accuracy, macro over cases),
`maze/text_exact`, `maze/image_exact`, the same four for `sliding`, `geometry/text`,
`geometry/image`, `science/text_reasoning`, `science/text_result`, `science/image`,
`code/text`, `code/image_shape_color`, `code/image_position`, `code/image_match`, plus
`judge_failures`. The official evaluator reports no overall score, and neither does this task.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from tasks.base import Output, Sample
from tasks.hub_data import HubArchive, extracted_root
from tasks.judged import JudgedTask
from tasks.judges.parsing import ONE_RETRY
from tasks.judges.vision import LazyVisionJudge, VisionRequest, vision_judge_all
from tasks.scorers import uni_mmmu_rules as rules
from umm_harness.core.errors import ConfigError

HUB_ID = "Vchitect/Uni-MMMU-Eval"
ARCHIVE = "data.tar"
SUBTASKS = ("maze", "sliding", "jigsaw", "geometry", "science", "code")
MAZE_EXAMPLE_ID = "00015"
_MARKERS = ("maze", "sliding", "jigsaw_dataset_2x2ref", "math_data", "science", "svg")

# --- instructions (this project's words; answer formats as the official samplers ask) -------------

MAZE_PROMPT = """Solve the maze in the image.
- Black cells are walls, light cells are open floor, the blue dot is you, the green frame is the goal.
- Each move goes one cell up, down, left or right, never through a wall or diagonally.
Plan the whole path first. If you draw, draw one separate image per move, each showing the maze after that move (not the starting position), with the same layout and colours and only the blue dot moved; no collages, arrows or captions.
Finish with one line holding only the moves as a JSON list of lower-case words, for example:
<ANSWER_JSON>["right","down","left"]</ANSWER_JSON>"""

SLIDING_PROMPT = """The first image is the starting state of a 3x3 sliding puzzle, the second its goal state.
- Eight coloured tiles and one empty space, shown as the RED square.
- A move slides a tile next to the empty space into it, and is named by the direction the coloured tile moves (a tile directly above the empty space moving into it is "down").
Find the moves that turn the start into the goal. If you draw, draw one separate image per move, each showing the puzzle after that move (not the start), in the same style; no collages, arrows or captions.
Finish with one line holding only the moves as a JSON list of lower-case words, for example:
<ANSWER_JSON>["down","right","up"]</ANSWER_JSON>"""

JIGSAW_PROMPT = """The first image is a 2x2 picture whose bottom-right quarter is missing; the next two are candidate pieces, Candidate 0 and Candidate 1.
If you draw, draw two images: the picture completed with Candidate 0 in the bottom-right quarter, then with Candidate 1 (only paste the piece, scaled to fit; change nothing else).
Decide which candidate completes the picture correctly, judging seams, colour and texture continuity, structure and overall meaning, and end with:
<FINAL_ANSWER_JSON>
{"choice": 0 or 1, "rationale": "at most 30 words"}
</FINAL_ANSWER_JSON>"""

GEOMETRY_PROMPT = """You edit and solve geometry figures.
1. Draw the auxiliary lines below onto the figure, exactly as described, without moving or erasing anything and keeping the labels readable.
2. Solve the problem in at most 150 words, using the auxiliary lines and the figure's labels.
3. End a calculation with "**Final answer: <value>**" and a proof with "**Conclusion: <statement>**".

PROBLEM:
{problem}

CHOICES (if any):
{choices}

AUXILIARY LINES TO DRAW:
{aux}"""

SCIENCE_PROMPT = """The image shows an initial scene. Condition: {condition}
Work out the single final state that real-world science implies (derive it; do not restate the condition; add no objects the condition does not cause; keep what should remain).
Write <OUTPUT_PROMPT> a deterministic explanation of at most 120 words that ends with a precise visual description of the final state </OUTPUT_PROMPT>, and draw exactly one image of the final state."""

CODE_PROMPT = """Render the SVG source below in your head (no tools) and output:
1. <RENDER_SUMMARY>an objective description of the rendered image in at most 60 words</RENDER_SUMMARY>
2. the rendered image.
Follow SVG semantics: canvas from width/height/viewBox; no background unless drawn; later elements on top; fill, stroke, opacity and transforms as specified; SVG defaults otherwise.

{svg}"""

# Judge instructions (this project's words; JSON fields as the official evaluator reads them).
OVERLAY_SYSTEM = """You judge geometry figures with auxiliary lines drawn on them. You get three images: the base figure, the reference overlay (what should be drawn), and one candidate overlay, plus the list of required lines.
Decide whether the candidate draws every required line correctly (endpoints, through-points, parallel/perpendicular relations). Ignore small extra marks or labels that change nothing, and small pixel offsets when the intent is clear. Any required line missing → 0.
Reply only with compact JSON: {"overlay_ok": 0 or 1, "overlay_reason": "<short>"}"""
OVERLAY_USER = """Required auxiliary lines (draw all of them):
{aux}

Images, in order: base figure, reference overlay, candidate overlay. Judge only the candidate.
Reply with the JSON object only, no code fences."""
GEOMETRY_TEXT_SYSTEM = """You grade geometry solutions. Given the problem, a reference solution and a candidate solution, decide (1) whether the reasoning is rigorous (no major gaps or false claims) and (2) whether the conclusion is correct: for a CALCULATION the final number must equal the reference (formatting, units and equivalent radicals or pi aside); for a PROOF the claim must really be established. text_ok is 1 only when both hold.
Reply only with compact JSON: {"reasoning_rigorous": 0|1, "conclusion_correct": 0|1, "calc_numeric_match": 0|1|null, "text_ok": 0|1, "text_reason": "<short>"}"""
GEOMETRY_TEXT_USER = """Type: {task_type}
Problem:
{problem}

Reference solution (one valid path, not the only one):
{gt}

Candidate solution:
{cand}

Reply with the JSON object only, no code fences."""
SCIENCE_TEXT_SYSTEM = """You evaluate scientific explanations strictly. Reply only with compact JSON: {"reasoning_correct": 0|1, "result_correct": 0|1}.
reasoning_correct is 1 when the explanation applies the right causal mechanisms from the condition to the final state, with no wrong laws. result_correct is 1 when the final state it describes is plausible under the scene and condition; agreement with the reference is preferred, but a different, scientifically sound result that contradicts nothing also counts."""
SCIENCE_TEXT_USER = """Scene: {scene}
Condition: {condition}
Reference final state:
{gt}
Candidate explanation:
{pred}
Reply with the JSON object only."""
SCIENCE_IMAGE_SYSTEM = """You evaluate image edits strictly. You get an INITIAL image, a TARGET text describing the required final state, and a CANDIDATE image meant to be the initial image edited to that state.
Check only: the candidate keeps the initial scene (viewpoint, main objects, textures) except where the target requires change, and it shows the target's change without contradictions. Ignore style and small rendering differences.
Reply only with compact JSON: {"image_correct": 0|1}"""
SCIENCE_IMAGE_USER = """Condition: {condition}
TARGET final state:
{gt}
Images, in order: initial, candidate."""
CODE_IMAGE_PROMPT = """Compare a reference drawing (rendered from SVG: circles, 3- to 6-sided polygons, lines, curves, possibly repeated by loops, possibly overlapping) with a candidate drawing. The first image is the reference, the second the candidate.
Colours come from the palette #E74C3C, #3498DB, #2ECC71, #F1C40F, #9B59B6, #34495E, #1ABC9C, #E67E22; match colours by the nearest palette colour (lighter or darker shades count).
Give two integer scores from 0 (nothing matches) to 5 (perfect or nearly):
- shape_color_accuracy: shape types and exact polygon side counts (weighted most), every object present, colours right; unexpected shapes or text lower it.
- position_accuracy: relative order, alignment, spacing, global placement, rotation, overlaps and stacking order.
verdict: "match" if both scores are at least 4; "partial" if both are at least 2, or one is at least 4 and the other at least 1; otherwise "mismatch".
Reply only with strict JSON: {"shape_color_accuracy": int, "position_accuracy": int, "verdict": "match"|"partial"|"mismatch", "explanation": "<at most 50 words>"}"""
CODE_TEXT_PROMPT = """Decide whether the candidate description matches the reference drawing (the image). It matches only if the object types and counts, the colour families, and the positions and relations (order, spacing, alignment, rotation, overlaps) all agree at the level a person would describe them. Ignore tiny rendering noise.
Reply only with strict JSON: {"text_semantic_match": 0 or 1, "explanation": "<at most 30 words>"}"""


# --- data -------------------------------------------------------------------------------------------


def data_root(data_dir: Path | None, revision: str | None = None) -> Path:
    """The extracted `data/` folder: under `data_dir`, else downloaded and extracted into the cache."""
    def is_root(folder: Path) -> bool:
        return folder.is_dir() and any((folder / marker).exists() for marker in _MARKERS)

    archive = HubArchive(bench="uni_mmmu", hub_id=HUB_ID, file=ARCHIVE, revision=revision)
    return extracted_root(archive, data_dir, is_root, layouts=("data", "", "uni_mmmu", "uni_mmmu/data", f"{HUB_ID}/data"),
                          expected=f"extracted Uni-MMMU data (a folder with {', '.join(_MARKERS)})")


def _resolve(rel: str | None, *bases: Path) -> Path | None:
    if not rel:
        return None
    path = Path(rel)
    if path.is_absolute():
        return path
    stripped = Path(re.sub(r"^(\./)?data/", "", str(rel)))
    for base in bases:
        for candidate in (base / path, base / stripped):
            if candidate.exists():
                return candidate
    return bases[0] / path


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _case(task: str, case: str, refs: dict[str, Any], text_prompt: str, images: list[Any],
          image_kind: str | None = None, image_prompt: str | None = None, metadata: dict | None = None) -> list[Sample]:
    refs = {**refs, "task": task, "case": case}
    kind = image_kind or ("editing" if images else "generation")
    return [
        Sample.build(id=f"{task}/{case}/text", category=task, references={**refs, "part": "text"},
                     group=f"{task}/{case}", task="understanding", prompt=text_prompt, images=images),
        Sample.build(id=f"{task}/{case}/image", category=task, references={**refs, "part": "image"},
                     group=f"{task}/{case}", task=kind, prompt=image_prompt or text_prompt, images=images if kind == "editing" else [],
                     metadata=metadata or {}),
    ]


def maze_samples(root: Path) -> list[Sample]:
    folder = root / "maze"
    samples = []
    for step0 in sorted(folder.rglob("*/maze_step_0000.png")):
        match = re.match(r"^(maze_(\d+)x(\d+))_(\d{5})_steps$", step0.parent.name)
        if not match or match.group(4) == MAZE_EXAMPLE_ID:
            continue
        prefix, h, w, case = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        gt_file = step0.parent.parent / f"{prefix}_steps_{case}.json"
        gt = _read_json(gt_file) if gt_file.is_file() else {}
        moves = [str(m).lower() for m in gt.get("steps_long") or gt.get("steps") or []]
        refs = {"moves": moves, "start_image": str(step0), "grid": [h, w]}
        samples += _case("maze", case, refs, MAZE_PROMPT, [str(step0)], metadata={"num_images": len(moves)})
    return samples


def sliding_samples(root: Path) -> list[Sample]:
    summary = root / "sliding" / "summary_steps_le_8.json"
    if not summary.is_file():
        return []
    samples = []
    for rec in _read_json(summary).get("items", []):
        steps_dir = _resolve(rec.get("steps_dir") or rec.get("step_dir") or rec.get("steps_path"), root, root.parent)
        frames = sorted(steps_dir.glob("demo_step_*.png")) if steps_dir and steps_dir.is_dir() else []
        gt_json = _resolve(rec.get("steps_words_json") or rec.get("gt_json") or rec.get("json"), root, root.parent)
        if len(frames) < 2:
            continue
        solution = _read_json(gt_json) if gt_json and gt_json.is_file() else {}
        moves = [str(m).lower() for m in solution.get("steps_words", [])]
        gt_frames = [str(p) for p in sorted(steps_dir.glob("*.png")) if "0000" not in p.name]
        case = steps_dir.name
        refs = {"moves": moves, "gt_frames": gt_frames}
        samples += _case("sliding", case, refs, SLIDING_PROMPT, [str(frames[0]), str(frames[-1])],
                         metadata={"num_images": len(moves)})
    return samples


def jigsaw_samples(root: Path) -> list[Sample]:
    folder = root / "jigsaw_dataset_2x2ref"
    meta = folder / "metadata.json"
    if not meta.is_file():
        return []
    samples = []
    for item in _read_json(meta).get("items", []):
        bases = (folder, root, root.parent)
        ref = _resolve((item.get("ref_panel") or {}).get("ref_image_path"), *bases)
        cands = [_resolve(p, *bases) for p in (item.get("candidate_paths") or ["", ""])[:2]]
        images = [str(p) for p in (ref, *cands) if p is not None]
        label = int(item["label"])
        ok, bad = _resolve(item.get("gt_completed_2x2_path"), *bases), _resolve(item.get("gt_wrong_2x2_path"), *bases)
        gt = [str(ok), str(bad)] if label == 0 else [str(bad), str(ok)]
        refs = {"label": label, "gt_completed": gt}
        samples += _case("jigsaw", str(item["id"]), refs, JIGSAW_PROMPT, images, metadata={"num_images": 2})
    return samples


def geometry_samples(root: Path) -> list[Sample]:
    path = root / "math_data" / "filtered.json"
    if not path.is_file():
        return []
    samples = []
    for group, members in _read_json(path).items():
        for key, item in members.items():
            case = f"{_safe(group)}__{_safe(key)}"
            original = _resolve(item.get("original_image"), path.parent, root, root.parent)
            aux = _resolve(item.get("auxiliary_image"), path.parent, root, root.parent)
            choices = item.get("choices_en") or item.get("choices") or ""
            problem = item.get("problem_text_en") or item.get("problem_text") or ""
            prompt = GEOMETRY_PROMPT.format(problem=problem, choices=choices if isinstance(choices, str) else
                                            json.dumps(choices, ensure_ascii=False),
                                            aux=item.get("auxiliary_text_en") or "(none)")
            kind = "CALCULATION" if str(item.get("type") or "").lower().startswith("calc") else "PROVING"
            refs = {"problem": problem, "solution": item.get("solution_en") or item.get("solution") or "",
                    "aux": item.get("auxiliary_text_en") or "", "original": str(original), "reference": str(aux),
                    "kind": kind}
            samples += _case("geometry", case, refs, prompt, [str(original)])
    return samples


def science_samples(root: Path) -> list[Sample]:
    path = root / "science" / "dim_all.json"
    if not path.is_file():
        return []
    samples = []
    flat = [s for block in _read_json(path) for s in block.get("samples", [])]
    for index, case in enumerate(flat, 1):
        image = _resolve((case.get("input_image_file_path_list") or [None])[0], path.parent, root, root.parent)
        condition = case.get("input_prompt") or ""
        refs = {"condition": condition, "gt": case.get("output_prompt") or "", "initial": str(image)}
        samples += _case("science", f"case_{index:02d}", refs, SCIENCE_PROMPT.format(condition=condition),
                         [str(image)] if image else [])
    return samples


def code_samples(root: Path) -> list[Sample]:
    folder = root / "svg"
    meta = folder / "metadata.json"
    if not meta.is_file():
        return []
    samples = []
    for index, item in enumerate(_read_json(meta).get("samples", []), 1):
        svg = _resolve(item.get("svg"), folder, root, root.parent)
        png = _resolve(item.get("png"), folder, root, root.parent) if item.get("png") else None
        svg_text = svg.read_text(encoding="utf-8") if svg and svg.is_file() else ""
        refs = {"reference": str(png) if png and png.is_file() else None, "difficulty": item.get("difficulty")}
        case = f"case_{index:02d}_{_safe(str(item.get('id', index)))}"
        samples += _case("code", case, refs, CODE_PROMPT.format(svg=svg_text), [], image_kind="generation")
    return samples


def _safe(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_\-.]+", "_", (name or "").strip())[:120] or "item"


LOADERS: dict[str, Callable[[Path], list[Sample]]] = {
    "maze": maze_samples, "sliding": sliding_samples, "jigsaw": jigsaw_samples, "geometry": geometry_samples,
    "science": science_samples, "code": code_samples,
}


def _open(path: str | None) -> Image.Image | None:
    if not path or not Path(path).is_file():
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


# --- the task ------------------------------------------------------------------------------------------


class UniMMMUTask(JudgedTask):
    name: ClassVar[str] = "uni_mmmu"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, text_judge: Any = None,
                 cache_dir: Path | None = None, subtasks: list[str] | None = None,
                 jigsaw_distance: Callable[[Image.Image, Image.Image], float] | None = None,
                 revision: str | None = None):
        super().__init__(data_dir, judge, cache_dir)
        unknown = sorted(set(subtasks or []) - set(SUBTASKS))
        if unknown:
            raise ConfigError(f"uni_mmmu: unknown subtask {unknown[0]!r}; subtasks: {', '.join(SUBTASKS)}")
        self.subtasks = list(subtasks or SUBTASKS)
        self._text_judge = None if text_judge is None else LazyVisionJudge(text_judge, cache_dir)
        self.jigsaw_distance = jigsaw_distance
        self.revision = revision

    @property
    def text_judge(self) -> Any:
        return self.judge if self._text_judge is None else self._text_judge.get()

    @property
    def scorer_id(self) -> str | None:
        """The judges' ids (and whether jigsaw images are scored); known without building the judges."""
        vision = self._judge.id
        if vision is None:
            return None
        text = self._text_judge.id if self._text_judge is not None else vision
        jigsaw = getattr(self.jigsaw_distance, "__name__", "custom") if self.jigsaw_distance else "none"
        return f"vision={vision};text={text};jigsaw_distance={jigsaw}"

    def samples(self) -> list[Sample]:
        root = data_root(self.data_dir, self.revision)
        return [sample for name in self.subtasks for sample in LOADERS[name](root)]

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(items)
        judged: dict[tuple[str, str], list[tuple[int, VisionRequest, Any]]] = defaultdict(list)
        for index, (sample, outputs) in enumerate(items):
            refs = sample.references
            text = next((o.text for o in outputs if o.text), "") or ""
            images = [image for o in outputs for image in o.images]
            base = {"task": refs["task"], "case": refs["case"], "part": refs["part"]}
            key = (refs["task"], refs["part"])
            if key in (("maze", "text"), ("sliding", "text")):
                pred = rules.parse_moves(text)
                records[index] = {**base, "moves": pred, **rules.text_moves_score(pred, refs["moves"])}
            elif key == ("maze", "image"):
                records[index] = {**base, **self._maze_images(refs, images)}
            elif key == ("sliding", "image"):
                pred = [rules.parse_sliding_image(image) for image in images]
                gt = [rules.parse_sliding_image(img) for img in map(_open, refs["gt_frames"]) if img is not None]
                records[index] = {**base, **rules.sequence_text_score(pred, gt)}
            elif key == ("jigsaw", "text"):
                choice, status = rules.parse_jigsaw_choice(text)
                records[index] = {**base, "choice": choice, "status": status,
                                  "text_correct": float(choice is not None and choice == refs["label"])}
            elif key == ("jigsaw", "image"):
                records[index] = {**base, **self._jigsaw_images(refs, images)}
            else:
                requests = self._judge_requests(refs, text, images)
                if requests is None:  # the official evaluator skips the case (reference files missing)
                    records[index] = {**base, "skipped": True}
                    continue
                for request, parser in requests:
                    judged[key].append((index, request, parser))
                records[index] = dict(base)
        for (task, part), calls in judged.items():
            self._run_judge(task, part, calls, records)
        for record in records:
            assert record is not None
            record["score"] = _headline(record)
        return records  # type: ignore[return-value]

    # rule parts

    def _maze_images(self, refs: dict[str, Any], images: list[Image.Image]) -> dict[str, Any]:
        h, w = refs["grid"]
        start_image = _open(refs["start_image"])
        if start_image is None:
            return {"error": "start image missing", "img_exact": 0.0, "img_frame_acc": 0.0}
        parsed0 = rules.parse_maze_image(start_image, grid_h=h, grid_w=w)
        if parsed0["start"] is None:
            return {"error": "start image not parsed (the official evaluator skips the case)", "skipped": True}
        walls = [[cell == "#" for cell in row] for row in parsed0["grid"]]
        expected = rules.expected_maze_grids(parsed0["start"], parsed0["goal"], walls, refs["moves"])
        pred = [rules.parse_maze_image(image, grid_h=h, grid_w=w)["grid"] for image in images]
        return rules.maze_image_score(pred, expected, walls)

    def _jigsaw_images(self, refs: dict[str, Any], images: list[Image.Image]) -> dict[str, Any]:
        if self.jigsaw_distance is None:
            return {"skipped": True, "reason": "no DreamSim distance function (jigsaw_distance=)"}
        if len(images) != 2:
            return {"image_status": f"invalid_count_{len(images)}", "d_mean": 1.0}
        gts = [_open(p) for p in refs["gt_completed"]]
        if any(g is None for g in gts):
            return {"image_status": "reference missing", "d_mean": 1.0}
        d0, d1 = (float(self.jigsaw_distance(img, gt)) for img, gt in zip(images, gts))
        return {"image_status": "ok", "d0": d0, "d1": d1, "d_mean": (d0 + d1) / 2}

    # judged parts

    def _judge_requests(self, refs: dict[str, Any], text: str,
                        images: list[Image.Image]) -> list[tuple[VisionRequest, Any]] | None:
        """The judge calls of one part; [] when there is nothing to judge (scores 0), None to skip it."""
        task, part = refs["task"], refs["part"]
        if task == "geometry" and part == "image":
            base, ref = _open(refs["original"]), _open(refs["reference"])
            if base is None or ref is None:
                return None
            if not images:
                return []
            return [(VisionRequest(OVERLAY_USER.format(aux=refs["aux"] or "(none)"), (base, ref, images[0]),
                                   OVERLAY_SYSTEM), rules.parse_overlay)]
        if task == "geometry":
            user = GEOMETRY_TEXT_USER.format(task_type=refs["kind"], problem=refs["problem"], gt=refs["solution"],
                                             cand=text)
            return [(VisionRequest(user, (), GEOMETRY_TEXT_SYSTEM), rules.parse_geometry_text)]
        if task == "science" and part == "text":
            if not text or not refs["gt"]:
                return []
            user = SCIENCE_TEXT_USER.format(scene="(none)", condition=refs["condition"] or "(none)", gt=refs["gt"],
                                            pred=text)
            return [(VisionRequest(user, (), SCIENCE_TEXT_SYSTEM), rules.parse_science_text)]
        if task == "science":
            initial = _open(refs["initial"])
            if not images or initial is None:
                return []
            user = SCIENCE_IMAGE_USER.format(condition=refs["condition"], gt=refs["gt"])
            return [(VisionRequest(user, (initial, images[0]), SCIENCE_IMAGE_SYSTEM), rules.parse_science_image)]
        if task == "code" and part == "image":
            ref = _open(refs["reference"])
            if ref is None:
                return None
            return [(VisionRequest(CODE_IMAGE_PROMPT, (ref, image)), rules.parse_code_image) for image in images]
        if task == "code":
            ref = _open(refs["reference"])
            summary = rules.render_summary(text)
            if ref is None:
                return None
            if not summary:
                return []
            return [(VisionRequest(CODE_TEXT_PROMPT + f"\n\nCandidate description:\n{summary}", (ref,)),
                     rules.parse_code_text)]
        return []

    def _run_judge(self, task: str, part: str, calls: list[tuple[int, VisionRequest, Any]],
                   records: list[dict[str, Any] | None]) -> None:
        judge = self.text_judge if (task, part) == ("geometry", "text") else self.judge
        max_tokens = {("geometry", "text"): 32767, ("science", "text"): 1024}.get((task, part), 512)
        parser = calls[0][2]
        verdicts = vision_judge_all(judge, [request for _, request, _ in calls], parser, max_tokens=max_tokens,
                                    schedule=ONE_RETRY)
        for (index, _, _), verdict in zip(calls, verdicts):
            record = records[index]
            assert record is not None
            record["judge"] = judge.id
            record.setdefault("verdicts", []).append({"value": verdict.value, "failed": verdict.failed,
                                                      "replies": verdict.replies})

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        values: dict[str, list[float]] = defaultdict(list)
        failures = 0
        for sample in samples:
            refs = sample.references
            record = records.get(sample.id)
            if record is None:
                continue
            task, part = refs["task"], refs["part"]
            verdicts = record.get("verdicts", [])
            failures += sum(v["failed"] for v in verdicts)
            for name, value in _part_metrics(task, part, record, sample).items():
                values[name].append(value)
        metrics = {name: sum(v) / len(v) for name, v in sorted(values.items()) if v}
        metrics["judge_failures"] = float(failures)
        return metrics


def _part_metrics(task: str, part: str, record: dict[str, Any], sample: Sample) -> dict[str, float]:
    """The metric contributions of one scored part (empty when the official evaluator skips it)."""
    if record.get("skipped"):
        return {}
    if task in ("maze", "sliding") and part == "text":
        return {f"{task}/text": record["text_frame_acc"], f"{task}/text_exact": record["text_exact"]}
    if task in ("maze", "sliding"):
        return {f"{task}/image": record["img_frame_acc"], f"{task}/image_exact": record["img_exact"]}
    if task == "jigsaw" and part == "text":
        return {"jigsaw/text": record["text_correct"]}
    if task == "jigsaw":
        return {"jigsaw/image": 1.0 - record["d_mean"]}
    ok = [v["value"] for v in record.get("verdicts", []) if not v["failed"]]
    asked = record.get("verdicts", [])
    if task == "geometry" and part == "image":
        if asked and not ok:
            return {}
        return {"geometry/image": float(ok[0]["overlay_ok"]) if ok else 0.0}
    if task == "geometry":
        if asked and not ok:
            return {}
        return {"geometry/text": float(ok[0]["text_ok"]) if ok else 0.0}
    if task == "science" and part == "text":
        if asked and not ok:
            return {}
        value = ok[0] if ok else {"reasoning_correct": 0, "result_correct": 0}
        return {"science/text_reasoning": float(value["reasoning_correct"]),
                "science/text_result": float(value["result_correct"])}
    if task == "science":
        if asked and not ok:
            return {}
        return {"science/image": float(ok[0]["image_correct"]) if ok else 0.0}
    if task == "code" and part == "image":
        if asked and not ok:
            return {}
        best = max(ok, key=lambda v: v["shape_color_accuracy"] + v["position_accuracy"], default=None)
        return {"code/image_shape_color": best["shape_color_accuracy"] if best else 0.0,
                "code/image_position": best["position_accuracy"] if best else 0.0,
                "code/image_match": float(any(v["image_match"] for v in ok))}
    if task == "code":
        if asked and not ok:
            return {}
        return {"code/text": float(ok[0]["text_semantic_match"]) if ok else 0.0}
    return {}


def _headline(record: dict[str, Any]) -> float:
    """One number per sample for per-sample tables: the part's main score, 0 when not scored."""
    for key in ("text_frame_acc", "img_frame_acc", "text_correct"):
        if key in record:
            return float(record[key])
    if "d_mean" in record:
        return 1.0 - float(record["d_mean"])
    ok = [v["value"] for v in record.get("verdicts", []) if not v["failed"]]
    if ok:
        first = ok[0]
        for key in ("overlay_ok", "text_ok", "result_correct", "image_correct", "text_semantic_match"):
            if key in first:
                return float(first[key])
        if "shape_color_accuracy" in first:
            return (first["shape_color_accuracy"] + first["position_accuracy"]) / 10.0
    return 0.0
