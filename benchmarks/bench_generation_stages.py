"""Time per sample of each stage of the five generation benchmarks, on the tiny models.

The tiny Janus-Pro generates (`--stage generate`), then the benchmark's own scorer scores the
logged images (`--stage score`): GenEval's Mask2Former + CLIP and DPG-Bench's BLIP VQA as tiny
random models loaded from folders, WISE / UEval / Uni-MMMU judged by a tiny chat VLM behind
`python -m tasks.judges.server`. Each stage is timed as a user sees it (`evaluate`, logging
included) and divided by the benchmark's sample count. DPG-Bench, UEval and Uni-MMMU read the
synthesized fixtures of the tests (their published data is not on this machine).

    python benchmarks/bench_generation_stages.py [--limit 6]

The figures say where a stage's time goes on this machine with models of ~1 M parameters; a
7B generator or a 72B judge moves them by orders of magnitude, so compare runs, not papers.
Printed last as `name value` lines and logged to the MLflow experiment `umm-benchmarks`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' fixture builders

from benchmarks.timing import add_device_arguments, device_name, report  # noqa: E402
from model_flavors.janus import build_tiny  # noqa: E402
from tasks import dpg_bench as dpg_module  # noqa: E402
from tasks.benchmark_files import git_blob_sha1  # noqa: E402
from tasks.judges.server import running  # noqa: E402
from tasks.judges.tiny import build_tiny_vision_judge  # noqa: E402
from tests.test_generation_scoring import ROWS  # noqa: E402
from tests.test_generation_tasks import _uni_data, _write_table, write_ueval  # noqa: E402
from tests.tiny_scorers import save_tiny_scorers  # noqa: E402
from umm_harness.config import EvalRecipe  # noqa: E402
from umm_harness.evaluate import evaluate  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
BENCHMARKS = ("geneval", "dpg_bench", "wise", "ueval", "uni_mmmu")


def data_dirs(work: Path) -> dict[str, Path]:
    table = _write_table(work / "dpg" / "dpg_bench.csv", ROWS)
    # The hand-made question table stands in for the published one (not on this machine).
    dpg_module.QUESTIONS = dpg_module.QUESTIONS.model_copy(update={"blob_sha1": git_blob_sha1(table)})
    write_ueval(work / "ueval")
    return {"geneval": SHARED_DATA / "geneval", "dpg_bench": work / "dpg", "wise": SHARED_DATA / "wise",
            "ueval": work / "ueval", "uni_mmmu": _uni_data(work / "uni_mmmu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=6, help="items per benchmark")
    add_device_arguments(parser)  # the generator's; the tiny scorers and judge pick their own
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    results_store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
    figures: dict[str, float] = {}
    rows = []

    with tempfile.TemporaryDirectory(prefix="umm-bench-stages-") as tmp:
        work = Path(tmp)
        os.environ["UMM_HOME"] = str(work / "home")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment("umm-eval")  # creating the store is set-up, not a stage
        build_tiny(work / "home" / "tiny" / "janus-pro")
        scorers = save_tiny_scorers(work / "scorers")
        dirs = data_dirs(work)
        options = {"geneval": {"detector_model": str(scorers["mask2former"]), "clip_model": str(scorers["clip"])},
                   "dpg_bench": {"vqa": str(scorers["blip"])}}
        vlm = build_tiny_vision_judge(work / "vlm")
        with running(vlm, work / "judge.log", name="tiny-vlm") as url:
            for benchmark in BENCHMARKS:
                recipe = EvalRecipe(suite=benchmark, limit=args.limit, seed=0, threads=1, data_dir=dirs[benchmark],
                                    device=args.device, dtype=args.dtype,
                                    judge={"backend": "openai", "base_url": url, "model": "tiny-vlm"},
                                    task_options={benchmark: options[benchmark]} if benchmark in options else {})
                start = time.perf_counter()
                generated = evaluate(recipe.model_copy(update={"stage": "generate"}))
                generate_s = time.perf_counter() - start
                start = time.perf_counter()
                evaluate(recipe.model_copy(update={"stage": "score", "from_run": generated.run_id}))
                score_s = time.perf_counter() - start
                result = generated.results[benchmark]
                samples, outputs = len(result.samples), result.computed
                figures[f"{benchmark}_generate_s_per_sample"] = generate_s / samples
                figures[f"{benchmark}_score_s_per_sample"] = score_s / samples
                rows.append((benchmark, samples, outputs, generate_s / samples, score_s / samples))

    os.environ["MLFLOW_TRACKING_URI"] = results_store
    mlflow.set_tracking_uri(results_store)
    print(f"{'benchmark':10s} {'samples':>7s} {'outputs':>7s} {'generate s/sample':>18s} {'score s/sample':>15s}")
    for benchmark, samples, outputs, generate, score in rows:
        print(f"{benchmark:10s} {samples:7d} {outputs:7d} {generate:18.3f} {score:15.3f}")
    report("bench_generation_stages", figures,
           {"device": device_name(args.device), "dtype": args.dtype, "limit": str(args.limit)},
           f"device {device_name(args.device)} ({args.dtype})")


if __name__ == "__main__":
    main()
