"""Speed figures of the harness, measured in one process run: every figure of the scale-out work
side by side, on the tiny Janus-Pro and on a larger tiny configuration (a slower model).

Every figure is a ratio of two timings taken here, one after the other, so it stays meaningful
on a noisy machine; the load average is printed with them. Printed last as `name value` lines
(for scripts), and logged to the MLflow experiment `umm-benchmarks` so runs can be compared.

    python benchmarks/bench_harness.py [--samples 120] [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import requests
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_judges import replica_figures  # noqa: E402
from benchmarks.timing import add_device_arguments, device_name, report, seconds, timed  # noqa: E402
from model_flavors.janus import JanusPro, build_tiny  # noqa: E402
from tasks.shapes import ShapesTask  # noqa: E402
from umm_harness import evaluate as evaluate_module  # noqa: E402
from umm_harness import runner, tracking  # noqa: E402
from umm_harness.config import EvalRecipe  # noqa: E402
from umm_harness.core.ports import free_port  # noqa: E402
from umm_harness.core.requests import InferenceParams  # noqa: E402
from umm_harness.runner import limit_samples, request_for  # noqa: E402

# The larger tiny configuration: a language model of 384 wide × 6 layers (~0.1-0.2 s per sample on
# one CPU thread), so per-sample costs are seen against a model time closer to a real one.
LARGE = {"hidden": 384, "layers": 6}


def bare_loop(backbone: JanusPro, samples, batch_size: int) -> float:
    """The same adapter calls the runner makes (same requests, same batches), nothing else."""
    work = sorted(((s, k) for s in samples for k in range(s.n)),
                  key=lambda item: (item[0].request.task, len(item[0].request.prompt or ""), item[0].id, item[1]))
    start = time.perf_counter()
    for kind in ("generation", "understanding"):
        items = [item for item in work if item[0].request.task == kind]
        for i in range(0, len(items), batch_size):
            backbone.run([request_for(s, k, 0, InferenceParams()) for s, k in items[i : i + batch_size]])
    return time.perf_counter() - start


def throughput(backbone: JanusPro, kind: str, batch: int, total: int) -> float:
    samples = [s for s in ShapesTask(num_understanding=total, num_generation=total).samples()
               if s.request.task == kind][:total]
    requests_ = [request_for(s, 0, 0, InferenceParams()) for s in samples]
    backbone.run(requests_[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(requests_), batch):
        backbone.run(requests_[i : i + batch])
    return len(requests_) / (time.perf_counter() - start)


def serve_ratio(model_uri: str, rows: list[dict], count: int) -> tuple[float, float]:
    """(requests/s through `mlflow models serve`, requests/s of direct pyfunc predict)."""
    direct_model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame(rows)
    direct_model.predict(frame)
    start = time.perf_counter()
    for _ in range(count):
        direct_model.predict(frame)
    direct = count / (time.perf_counter() - start)

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        payload = {"dataframe_records": rows}
        requests.post(f"{url}/invocations", json=payload, timeout=60).raise_for_status()
        start = time.perf_counter()
        for _ in range(count):
            requests.post(f"{url}/invocations", json=payload, timeout=60).raise_for_status()
        served = count / (time.perf_counter() - start)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return served, direct


class PhaseTimer:
    """Times named functions while installed: seconds per phase, summed over calls."""

    def __init__(self, phases: list[tuple[object, str, str]]):
        self.spent: dict[str, float] = {}
        self._phases = phases
        self._originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in phases]

    def __enter__(self) -> dict[str, float]:
        for (owner, name, phase), (_, _, original) in zip(self._phases, self._originals):
            function = original.__func__ if isinstance(original, classmethod) else original

            def wrapper(*a, _f=function, _phase=phase, **k):
                with timed(self.spent, _phase):
                    return _f(*a, **k)
            setattr(owner, name, classmethod(wrapper) if isinstance(original, classmethod) else wrapper)
        return self.spent

    def __exit__(self, *exc) -> None:
        for owner, name, original in self._originals:
            setattr(owner, name, original)


def overhead(recipe: EvalRecipe, backbone: JanusPro, prefix: str, figures: dict[str, float]):
    """The whole `umm eval` against a bare loop of the same adapter calls, and where the rest goes:
    MLflow (runs, registering the model, artifacts), loading the weights (the bare loop reuses a
    loaded model), building the samples, the chart, and the wait for the scoring worker after
    the last batch (scoring itself runs beside generation)."""
    samples = limit_samples(ShapesTask().samples(), recipe.limit)
    bare = bare_loop(backbone, samples, recipe.batch_size)
    phases = [(evaluate_module, "log_benchmark", "mlflow"), (evaluate_module, "log_batch", "mlflow"),
              (evaluate_module, "ensure_registered", "register"), (JanusPro, "load", "load"),
              (ShapesTask, "samples", "samples"), (tracking, "_category_plot", "chart"),
              (runner._Scoring, "finish", "score_wait")]
    with PhaseTimer(phases) as spent:
        start = time.perf_counter()
        summary = evaluate_module.evaluate(recipe)
        full = time.perf_counter() - start
    result = summary.results["shapes"]
    figures[f"{prefix}overhead_ratio"] = full / bare
    figures[f"{prefix}model_ms_per_sample"] = 1000 * bare / len(samples)
    figures[f"{prefix}model_loop_ratio"] = result.model_seconds / bare  # runner's batches vs the bare loop
    # Seconds outside backbone calls: free of the model-time noise that moves both ratios above.
    figures[f"{prefix}outside_model_s"] = full - result.model_seconds
    figures[f"{prefix}logging_share"] = (spent["mlflow"] + spent.get("register", 0.0)) / full
    for phase in ("register", "load", "samples", "chart", "score_wait"):
        figures[f"{prefix}{phase}_s"] = spent.get(phase, 0.0)
    return summary, full


def umm_eval(*args: str) -> float:
    """Seconds of one `umm eval` in a new process (start-up included)."""
    return seconds(lambda: subprocess.run([sys.executable, "-m", "umm_harness", "eval", *args], check=True,
                                          capture_output=True, env={**os.environ, "CI": "1"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120, help="shapes samples per eval of the tiny model")
    parser.add_argument("--large-samples", type=int, default=36, help="shapes samples per eval of the larger one")
    parser.add_argument("--dp-samples", type=int, default=60,
                        help="shapes samples of the data-parallel runs (on the larger model)")
    parser.add_argument("--requests", type=int, default=40, help="requests for the serving figure")
    add_device_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    figures: dict[str, float] = {}
    results_store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
    device = ["--device", args.device, "--dtype", args.dtype, "--threads", "1"]

    with tempfile.TemporaryDirectory(prefix="umm-bench-") as tmp:
        work = Path(tmp)
        os.environ["UMM_HOME"] = str(work / "home")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        os.chdir(work)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment("umm-eval")  # creating the store (schema migrations) is set-up, not overhead
        folder = work / "home" / "tiny" / "janus-pro"
        build_tiny(folder)
        backbone = JanusPro.load(str(folder), dtype=args.dtype, device=args.device)
        recipe = EvalRecipe(limit=args.samples, batch_size=16, threads=1, device=args.device, dtype=args.dtype)

        # 1. harness overhead: the whole `umm eval` vs a bare loop of the same adapter calls,
        # on the tiny model, then on the larger configuration (its own registered model).
        first, full = overhead(recipe, backbone, "", figures)
        large_folder = work / "janus-pro-large"
        build_tiny(large_folder, **LARGE)
        large = JanusPro.load(str(large_folder), dtype=args.dtype, device=args.device)
        overhead(recipe.model_copy(update={"model": str(large_folder), "limit": args.large_samples}), large,
                 "large_", figures)
        del large

        # 2. resume: a rerun of the finished eval makes no model call.
        start = time.perf_counter()
        again = evaluate_module.evaluate(recipe)
        figures["resume_s"] = time.perf_counter() - start
        figures["resume_time_ratio"] = figures["resume_s"] / full
        figures["resume_model_calls"] = float(again.results["shapes"].computed)

        # 3. batching: outputs/s at batch 1, 8 and 32.
        for kind, short in (("understanding", "und"), ("generation", "gen")):
            rates = {batch: throughput(backbone, kind, batch, 64) for batch in (1, 8, 32)}
            figures[f"{short}_batch1_per_s"] = rates[1]
            figures[f"{short}_batch8_speedup"] = rates[8] / rates[1]
            figures[f"{short}_batch32_speedup"] = rates[32] / rates[1]

        # 4. data parallel on the larger model, each run from an empty cache: 1 rank, 2 ranks, and
        # two "nodes" on this machine (two launchers meeting at a c10d rendezvous, one rank each).
        # The start-up share is a 1-sample run's time over the 1-rank run's.
        dp = ["--model", str(large_folder), "--limit", str(args.dp_samples), "--batch-size", "8", *device]
        startup = umm_eval("--model", str(large_folder), "--limit", "1", *device)
        timings = {}
        for nproc in (1, 2):
            shutil.rmtree(work / "home" / "cache", ignore_errors=True)
            timings[nproc] = umm_eval(*dp, "--nproc", str(nproc))
        figures["dp_startup_share"] = startup / timings[1]
        figures["dp2_speedup"] = timings[1] / timings[2]
        shutil.rmtree(work / "home" / "cache", ignore_errors=True)
        endpoint = f"127.0.0.1:{free_port()}"
        start = time.perf_counter()
        nodes = [subprocess.Popen([sys.executable, "-m", "umm_harness", "eval", *dp, "--nnodes", "2",
                                   "--node-rank", str(rank), "--rdzv-endpoint", endpoint],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "1"})
                 for rank in (0, 1)]
        if any(node.wait() != 0 for node in nodes):
            raise SystemExit("the two-node eval failed")
        figures["nodes2_speedup"] = timings[1] / (time.perf_counter() - start)

        # 4b. the Ray executor (local Ray, 1 actor of half a CPU) against the local executor, same work.
        timings = {}
        for executor in ("local", "ray"):
            shutil.rmtree(work / "home" / "cache", ignore_errors=True)
            timings[executor] = umm_eval("--limit", str(args.samples), "--batch-size", "8", "--executor", executor,
                                         *device)
        figures["ray_ratio"] = timings["ray"] / timings["local"]

        # 5. serving: requests/s through `mlflow models serve` vs direct pyfunc predict.
        rows = [{"task": "understanding", "prompt": "Is there a red circle?", "images": []}]
        served, direct = serve_ratio(f"models:/{first.model_name}/{first.model_version}", rows, args.requests)
        figures["serve_requests_per_s"] = served
        figures["serve_ratio"] = served / direct

        os.chdir(REPO)  # the temporary folder goes away; the results go to the repo's own store

    # 6. judges: the same concurrent requests against 2 local judge-server replicas vs 1.
    figures.update(replica_figures())

    os.environ["MLFLOW_TRACKING_URI"] = results_store
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    report("bench_harness", figures, {"device": device_name(args.device), "dtype": args.dtype,
                                      "samples": str(args.samples)},
           f"device {device_name(args.device)} ({args.dtype})")


if __name__ == "__main__":
    main()
