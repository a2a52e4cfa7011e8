"""ImgEdit-Bench: single-turn instruction editing, judged on 1–5 rubrics (basic: 737 items, UGE: 47).

Data: the edit lists and judge prompts of PKU-YuanGroup/ImgEdit at commit 547185d
(`Benchmark/Basic/basic_edit.json`: `{key: {id, prompt, edit_type}}`, 9 edit types;
`Benchmark/Basic/prompts.json`: one judge prompt per edit type; `Benchmark/UGE/UGE_edit.json`:
`{key: {id, prompt}}`; the UGE judge prompt, the `prompt` string of `Benchmark/UGE/UGE_bench.py`),
fetched by URL and checked by git blob hash (`tasks/benchmark_files.py`), and the source images
of `Benchmark.tar` in the hub dataset `sysuyy/ImgEdit`. `--data-dir` may hold the extracted
archive: a folder (the data dir itself, `Benchmark/`, `imgedit/` or `imgedit/Benchmark/` under
it) with `singleturn/<id>` (basic) and `hard/<id>` (UGE; this folder name is TorchUMM's reading
of the archive and could not be checked here: `uge_images=` names another), and the JSON files as
`Basic/…` and `UGE/…` there or in the data dir. Without `--data-dir` everything is downloaded
(the archive with `huggingface_hub`) into `$UMM_HOME/benchmarks/imgedit/`.

Generation: an editing request with the instruction and the source image; ids `basic/<key>` and
`uge/<key>` (the official scripts read the edit of `key` from `<key>.png`).

Scoring (`tasks/scorers/imgedit_rules.py`, official rules): the judge gets the edit type's prompt
(UGE: its one prompt) with `<edit_prompt>` replaced, then [source, edit]; no system message, one
attempt (the official scripts never re-ask for a reply they cannot read). Images go as PNG of
the decoded pixels (the official script sends the files' own bytes: the same pixels). Judge: `judge=` (a vision
judge, a `JudgeConfig` or its dict; else the UMM_JUDGE_* environment); the official one is GPT-4o,
so numbers from other judges compare with each other only. Temperature 0 (the official call
leaves the API default), up to 2048 reply tokens (it sets no limit).

Deviations, each counted: a reply with no `<Name>: <digits>` line is dropped from the averages as
officially, counted as `judge_unparsable`; a missing edit (no image from the backbone), on which
the official scoring crashes, is left out and counted as `missing_edits`.

Metrics (1–5): one per edit type (`compose` is the papers' "Hybrid"), `overall` (papers' Overall: unweighted mean of the nine type
scores), `overall_weighted` (mean over scored basic images), `types`, `uge`, and the counts.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Output, Sample
from tasks.benchmark_files import BenchmarkFile, fetch, find_local
from tasks.hub_data import HubArchive, extracted_root
from tasks.judged import JudgedTask
from tasks.judges.parsing import Attempt
from tasks.judges.vision import VisionRequest, vision_judge_all
from tasks.scorers.imgedit_rules import MAX_TOKENS, image_score, parse_reply, summarize
from umm_harness.core.errors import ConfigError

COMMIT = "547185d12c08267a862b94248576e1746e479937"
_RAW = f"https://raw.githubusercontent.com/PKU-YuanGroup/ImgEdit/{COMMIT}/Benchmark"
BASIC_EDITS = BenchmarkFile(benchmark="imgedit", path="Basic/basic_edit.json", url=f"{_RAW}/Basic/basic_edit.json",
                            blob_sha1="d3c63149dff3f9e05e58b65886208bffec68f662")
BASIC_PROMPTS = BenchmarkFile(benchmark="imgedit", path="Basic/prompts.json", url=f"{_RAW}/Basic/prompts.json",
                              blob_sha1="ce9409100b71f6dcecfc34483ce009268f67f157")
UGE_EDITS = BenchmarkFile(benchmark="imgedit", path="UGE/UGE_edit.json", url=f"{_RAW}/UGE/UGE_edit.json",
                          blob_sha1="74bf9df62982adb631e379aa1a81398a2fd15a90")
UGE_SCRIPT = BenchmarkFile(benchmark="imgedit", path="UGE/UGE_bench.py", url=f"{_RAW}/UGE/UGE_bench.py",
                           blob_sha1="dc6b39b269ae1d72976c24202ed81e7bd4247619")
HUB_ID = "sysuyy/ImgEdit"
ARCHIVE = "Benchmark.tar"
SUBSETS = ("basic", "uge")
ONE_ATTEMPT = (Attempt(),)


def uge_prompt(script: Path) -> str:
    """The module-level `prompt` string of the official UGE script, read without running it."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "prompt" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ConfigError(f"imgedit: {script} defines no `prompt` string; is it the published UGE_bench.py?")


class ImgEditTask(JudgedTask):
    name: ClassVar[str] = "imgedit"
    two_stage: ClassVar[bool] = True

    def __init__(self, data_dir: Path | None = None, *, judge: Any = None, cache_dir: Path | None = None,
                 subsets: list[str] | None = None, basic_images: str = "singleturn", uge_images: str = "hard",
                 revision: str | None = None):
        super().__init__(data_dir, judge, cache_dir)
        unknown = sorted(set(subsets or []) - set(SUBSETS))
        if unknown:
            raise ConfigError(f"imgedit: unknown subset {unknown[0]!r}; subsets: {', '.join(SUBSETS)}")
        self.subsets = [s for s in SUBSETS if s in (subsets or SUBSETS)]
        self.image_folders = {"basic": basic_images, "uge": uge_images}
        self.revision = revision
        self._prompts: dict[str, str] | None = None

    # --- data ----------------------------------------------------------------------------------

    def _root(self) -> Path:
        """The folder holding the extracted archive's image folders."""
        folders = [self.image_folders[s] for s in self.subsets]

        def is_root(folder: Path) -> bool:
            return all((folder / name).is_dir() for name in folders)

        archive = HubArchive(bench="imgedit", hub_id=HUB_ID, file=ARCHIVE, revision=self.revision)
        return extracted_root(archive, self.data_dir, is_root,
                              layouts=("", "Benchmark", "imgedit", "imgedit/Benchmark"),
                              expected=f"{' and '.join(folders)} image folder(s)")

    def _file(self, file: BenchmarkFile, root: Path) -> Path:
        """A published file: beside the images, else under --data-dir, else downloaded (no --data-dir)."""
        return find_local(file, root) or fetch(file, self.data_dir)

    def samples(self) -> list[Sample]:
        root = self._root()
        prompts: dict[str, str] = {}
        samples: list[Sample] = []
        if "basic" in self.subsets:
            prompts.update(json.loads(self._file(BASIC_PROMPTS, root).read_text(encoding="utf-8")))
            edits = json.loads(self._file(BASIC_EDITS, root).read_text(encoding="utf-8"))
            samples += [self._sample("basic", key, item, str(item["edit_type"]), root) for key, item in edits.items()]
        if "uge" in self.subsets:
            prompts["uge"] = uge_prompt(self._file(UGE_SCRIPT, root))
            edits = json.loads(self._file(UGE_EDITS, root).read_text(encoding="utf-8"))
            samples += [self._sample("uge", key, item, "uge", root) for key, item in edits.items()]
        missing = sorted({s.category for s in samples} - set(prompts))
        if missing:
            raise ConfigError(f"imgedit: {BASIC_PROMPTS.path} has no judge prompt for edit type {missing[0]!r}")
        self._prompts = prompts
        return samples

    def _sample(self, subset: str, key: str, item: dict[str, Any], edit_type: str, root: Path) -> Sample:
        image = root / self.image_folders[subset] / str(item["id"])
        refs = {"key": str(key), "subset": subset, "edit_type": edit_type, "image": str(item["id"]),
                "instruction": str(item["prompt"])}
        if not image.is_file():
            return Sample(id=f"{subset}/{key}", category=edit_type, references=refs,
                          error=f"source image {image} is missing")
        return Sample.build(id=f"{subset}/{key}", category=edit_type, references=refs, task="editing",
                            prompt=refs["instruction"], images=[str(image)])

    # --- scoring -------------------------------------------------------------------------------

    def score(self, sample: Sample, outputs: list[Output]) -> dict[str, Any]:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[Output]]]) -> list[dict[str, Any]]:
        if self._prompts is None:
            self.samples()
        requests, asked = [], []
        for index, (sample, outputs) in enumerate(items):
            edit = next((output.images[0] for output in outputs if output.images), None)
            if edit is None or sample.request is None:
                continue
            refs = sample.references
            text = self._prompts[refs["edit_type"]].replace("<edit_prompt>", refs["instruction"])
            requests.append(VisionRequest(text, (sample.request.images[0], edit.convert("RGB"))))
            asked.append(index)
        verdicts = dict(zip(asked, vision_judge_all(self.judge, requests, parse_reply, max_tokens=MAX_TOKENS,
                                                    schedule=ONE_ATTEMPT))) if requests else {}
        records = []
        for index, (sample, _) in enumerate(items):
            refs = sample.references
            base = {"subset": refs["subset"], "edit_type": refs["edit_type"], "judge": self.judge.id}
            verdict = verdicts.get(index)
            if verdict is None:
                records.append({**base, "missing_edit": True, "image_score": None, "score": 0.0})
                continue
            value = None if verdict.failed else image_score(verdict.value)
            records.append({**base, "missing_edit": False, "scores": verdict.value, "image_score": value,
                            "judge_unparsable": verdict.failed, "judge_reply": verdict.reply,
                            "score": value if value is not None else 0.0})
        return records

    def aggregate(self, samples: list[Sample], records: dict[str, dict[str, Any]]) -> dict[str, float]:
        rows: list[tuple[str, float]] = []
        unparsable = missing = 0
        for sample in samples:
            record = records.get(sample.id)
            if record is None:
                continue
            unparsable += bool(record.get("judge_unparsable"))
            missing += bool(record.get("missing_edit"))
            if record.get("image_score") is not None:
                rows.append((record["edit_type"], float(record["image_score"])))
        metrics = summarize(rows)
        metrics.update(judge_unparsable=float(unparsable), missing_edits=float(missing))
        return metrics
