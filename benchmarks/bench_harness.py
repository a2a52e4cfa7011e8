"""Speed figures of the harness, measured in one process run on the tiny Janus-Pro.

Every figure is a ratio of two timings taken here, one after the other, so it stays meaningful
on a noisy machine. Printed last as `name value` lines (for scripts), and logged to the MLflow
experiment `umm-benchmarks` so runs can be compared over time.

    python benchmarks/bench_harness.py [--samples 120] [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import requests
import torch
import transformers

from model_flavors.janus import JanusPro, build_tiny
from tasks.shapes import ShapesTask
from umm_harness import evaluate as evaluate_module
from umm_harness.config import EvalRecipe
from umm_harness.runner import request_for, limit_samples
from umm_harness.core.ports import free_port
from umm_harness.core.requests import InferenceParams

REPO = Path(__file__).resolve().parents[1]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` / `--dtype`: the GPU in bf16 when there is one, so the GPU paths are what is measured."""
    gpu = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if gpu else "cpu", help="default: cuda when present")
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32", help="default: bfloat16 on cuda")


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@contextmanager
def timed(store: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    store[key] = store.get(key, 0.0) + time.perf_counter() - start


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120, help="shapes samples per eval")
    parser.add_argument("--requests", type=int, default=40, help="requests for the serving figure")
    add_device_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    figures: dict[str, float] = {}
    results_store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")

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

        # 1. harness overhead: the whole `umm eval` vs a bare loop of the same adapter calls.
        samples = limit_samples(ShapesTask().samples(), args.samples)
        bare = bare_loop(backbone, samples, 16)
        # Where the rest of the time goes: MLflow (runs, registry, artifacts), loading the
        # weights (the bare loop reuses a loaded model), and the benchmark's own scorer.
        spent: dict[str, float] = {}
        phases = [(evaluate_module, name, "mlflow") for name in ("log_benchmark", "log_batch", "ensure_registered")]
        phases += [(JanusPro, "load", "load"), (ShapesTask, "score", "scoring")]
        originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in phases]
        for (owner, name, phase), (_, _, original) in zip(phases, originals):
            function = original.__func__ if isinstance(original, classmethod) else original

            def wrapper(*a, _f=function, _phase=phase, **k):
                with timed(spent, _phase):
                    return _f(*a, **k)
            setattr(owner, name, classmethod(wrapper) if isinstance(original, classmethod) else wrapper)
        start = time.perf_counter()
        first = evaluate_module.evaluate(recipe)
        full = time.perf_counter() - start
        for owner, name, original in originals:
            setattr(owner, name, original)
        result = first.results["shapes"]
        figures["overhead_ratio"] = full / bare
        figures["model_loop_ratio"] = result.model_seconds / bare  # runner's batches vs the bare loop
        # Seconds outside backbone calls: free of the model-time noise that moves both ratios above.
        figures["outside_model_s"] = full - result.model_seconds
        figures["logging_share"] = spent["mlflow"] / full
        figures["load_share"] = spent["load"] / full
        figures["scoring_share"] = spent["scoring"] / full

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

        # 4. data parallel: 2 ranks vs 1 on the same work, each from an empty cache.
        timings = {}
        for nproc in (1, 2):
            shutil.rmtree(work / "home" / "cache", ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "umm_harness", "eval", "--limit", str(args.samples * 2),
                            "--batch-size", "8", "--nproc", str(nproc), "--threads", "1",
                            "--device", args.device, "--dtype", args.dtype],
                           check=True, capture_output=True, env={**os.environ, "CI": "1"})
            timings[nproc] = time.perf_counter() - start
        figures["dp2_speedup"] = timings[1] / timings[2]

        # 4b. two "nodes" on this machine: two launchers meeting at a c10d rendezvous, one rank each.
        shutil.rmtree(work / "home" / "cache", ignore_errors=True)
        endpoint = f"127.0.0.1:{free_port()}"
        start = time.perf_counter()
        nodes = [subprocess.Popen([sys.executable, "-m", "umm_harness", "eval", "--limit", str(args.samples * 2),
                                   "--batch-size", "8", "--threads", "1", "--nnodes", "2", "--node-rank", str(rank),
                                   "--rdzv-endpoint", endpoint, "--device", args.device, "--dtype", args.dtype],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "1"})
                 for rank in (0, 1)]
        if any(node.wait() != 0 for node in nodes):
            raise SystemExit("the two-node eval failed")
        figures["nodes2_speedup"] = timings[1] / (time.perf_counter() - start)

        # 4c. the Ray executor (local Ray, 2 actors of half a CPU) against the local executor, same work.
        timings = {}
        for executor in ("local", "ray"):
            shutil.rmtree(work / "home" / "cache", ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "umm_harness", "eval", "--limit", str(args.samples),
                            "--batch-size", "8", "--executor", executor, "--threads", "1",
                            "--device", args.device, "--dtype", args.dtype],
                           check=True, capture_output=True, env={**os.environ, "CI": "1"})
            timings[executor] = time.perf_counter() - start
        figures["ray_ratio"] = timings["ray"] / timings["local"]

        # 5. serving: requests/s through `mlflow models serve` vs direct pyfunc predict.
        rows = [{"task": "understanding", "prompt": "Is there a red circle?", "images": []}]
        served, direct = serve_ratio(f"models:/{first.model_name}/{first.model_version}", rows, args.requests)
        figures["serve_requests_per_s"] = served
        figures["serve_ratio"] = served / direct

        os.chdir(REPO)  # the temporary folder goes away; the results go to the repo's own store

    os.environ["MLFLOW_TRACKING_URI"] = results_store
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("umm-benchmarks")
    with mlflow.start_run(run_name="bench_harness"):
        mlflow.set_tags({"device": device_name(args.device), "dtype": args.dtype, "samples": str(args.samples)})
        mlflow.log_metrics(figures)
    print(f"device {device_name(args.device)} ({args.dtype})")
    for name, value in figures.items():
        print(f"{name} {value:.4g}")


if __name__ == "__main__":
    main()
