"""What running a model in its own environment costs, on the tiny Janus-Pro.

The isolated route (`--env-manager uv`: `mlflow models serve` in an environment MLflow builds,
the harness's `ServedBackbone` posting one request per batch over 127.0.0.1) against the same
adapter called in this process, on identical batches with per-sample seeds, alternating the two.
`*_cost_ratio` compares what each route adds around the adapter's own work within the same call
(wall ÷ the adapter's time, isolated over in-process), so it holds on a machine whose load moves
between calls; `*_wall_ratio` is the plain ratio of median wall times. Also: the first start of the model (MLflow builds the environment:
uv creates it and installs the model's requirements, from uv's wheel cache as it is on this machine)
and a second start (the environment is found by its hash and reused); `env_*_s` is the time until
the environment is ready, `*_start_s` until the model answers (it loads inside the environment).
Before that, for each upstream backbone (`--environments`), the time MLflow takes to build its
environment in an empty root and to find it again (backbones with the same requirements share one).
Printed as `name value` lines (with the machine's load average at the end) and logged to the MLflow
experiment `umm-benchmarks`.

    python benchmarks/bench_isolation.py [--batches 8] [--batch-size 16] [--threads 1] [--environments-only]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_harness import REPO  # noqa: E402
from benchmarks.timing import device_name, report  # noqa: E402
from model_flavors import flavor  # noqa: E402
from model_flavors.janus import JanusPro, build_tiny  # noqa: E402
from tasks.shapes import ShapesTask  # noqa: E402
from umm_harness import isolation  # noqa: E402
from umm_harness.core.requests import InferenceParams, InferenceRequest  # noqa: E402
from umm_harness.runner import request_for  # noqa: E402


def batches(kind: str, batch_size: int, count: int) -> list[list[InferenceRequest]]:
    """`count` batches of shapes requests of one kind, each sample with its own seed (as the runner makes them)."""
    total = batch_size * count
    samples = [s for s in ShapesTask(num_understanding=total, num_generation=total).samples()
               if s.request.task == kind][:total]
    requests = [request_for(sample, 0, 0, InferenceParams()) for sample in samples]
    return [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]


def same_outputs(a, b) -> bool:
    return all(x.text == y.text and [i.tobytes() for i in x.images] == [i.tobytes() for i in y.images]
               for x, y in zip(a, b, strict=True))


def per_batch(local: JanusPro, served: isolation.ServedBackbone, work: list[list[InferenceRequest]]):
    """Per route: (wall seconds, model seconds) of every batch, alternating the routes; and whether the
    outputs agree. Model seconds are the adapter's own time (its results' `elapsed_s`), measured in the
    serving process for the isolated route, so wall − model is what the route adds to that very call."""
    local.run(work[0]), served.run(work[0])  # warm-up of both
    timings: dict[str, list[tuple[float, float]]] = {"local": [], "isolated": []}
    agree = True
    for index, batch in enumerate(work):
        order = [("local", local), ("isolated", served)]
        outputs = []
        for route, backbone in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            results = backbone.run(batch)
            timings[route].append((time.perf_counter() - start, sum(r.elapsed_s for r in results)))
            outputs.append(results)
        agree &= same_outputs(*outputs)
    return timings, agree


def route_figures(kind: str, timings: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    median = statistics.median
    wall = {route: median(w for w, _ in pairs) for route, pairs in timings.items()}
    added = {route: median(w - m for w, m in pairs) for route, pairs in timings.items()}
    relative = {route: median(w / m for w, m in pairs) for route, pairs in timings.items()}
    return {
        f"{kind}_local_batch_s": wall["local"],
        f"{kind}_isolated_batch_s": wall["isolated"],
        f"{kind}_wall_ratio": wall["isolated"] / wall["local"],  # two routes on a shared machine: noisy
        f"{kind}_local_added_ms": 1000 * added["local"],
        f"{kind}_isolated_added_ms": 1000 * added["isolated"],  # transport, JSON, PNG, MLflow's parsing
        f"{kind}_cost_ratio": relative["isolated"] / relative["local"],  # the target figure (≤ 1.10)
    }


def environment_times(keys: list[str], env_manager: str, root: Path) -> dict[str, float]:
    """Per backbone: building its environment in an empty root (`env_build_s.<key>`; uv's wheel cache as
    it is on this machine) and finding it again (`env_reuse_s.<key>`). A backbone whose requirements
    are another's gets that environment (`env_shared.<key>` 1, no build)."""
    from mlflow.utils.virtualenv import _get_or_create_virtualenv

    from model_flavors.registry import backbone_class

    figures: dict[str, float] = {}
    built: set[str] = set()
    os.environ["MLFLOW_ENV_ROOT"] = str(root / "envs")
    try:
        for key in keys:
            cls = backbone_class(key)
            model_dir = root / "models" / cls.key  # its environment only: weights by reference, no checkout
            flavor.save_model(flavor.Checkpoint(backbone=cls.key, source=(cls.hub_ids or ("none/none",))[0]),
                              model_dir, copy_weights=False)
            timed = []
            for _ in range(2):
                start = time.perf_counter()
                activate = _get_or_create_virtualenv(model_dir, env_manager=env_manager,
                                                     extra_envs=isolation.manager_variables(env_manager))
                timed.append(time.perf_counter() - start)
            figures[f"env_shared.{cls.key}"] = float(activate in built)
            figures[f"env_build_s.{cls.key}"], figures[f"env_reuse_s.{cls.key}"] = timed
            built.add(activate)
    finally:
        os.environ.pop("MLFLOW_ENV_ROOT")
    return figures


def janus_figures(args: argparse.Namespace) -> dict[str, float]:
    """The tiny Janus-Pro in-process and served: per-batch cost of both routes, first and second start."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        work_dir = Path(tmp)
        build_tiny(work_dir / "tiny", seed=0)
        local = JanusPro.load(str(work_dir / "tiny"))
        model_dir = work_dir / "model"
        flavor.save_model(local, model_dir)
        conf = flavor.flavor_conf(model_dir)
        # An empty environment root: the first start builds the environment, the second reuses it.
        os.environ["MLFLOW_ENV_ROOT"] = str(work_dir / "envs")

        served = isolation.serve_backbone(str(model_dir), args.env_manager, conf)
        assert served.server.built, f"expected a fresh build in {work_dir / 'envs'} (log: {served.server.log_path})"
        figures["env_build_s"] = served.server.environment_s or float("nan")
        figures["first_start_s"] = served.server.startup_s
        try:
            for kind in ("understanding", "generation"):
                timings, agree = per_batch(local, served, batches(kind, args.batch_size, args.batches))
                figures.update(route_figures(kind, timings))
                figures[f"{kind}_identical"] = float(agree)
        finally:
            served.close()

        again = isolation.serve_backbone(str(model_dir), args.env_manager, conf)
        figures["env_reuse_s"] = again.server.environment_s or float("nan")
        figures["second_start_s"] = again.server.startup_s
        figures["env_reused"] = float(not again.server.built)
        again.close()

    os.environ.pop("MLFLOW_ENV_ROOT")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per task kind")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the served model")
    parser.add_argument("--env-manager", default="uv", choices=["uv", "virtualenv"])
    parser.add_argument("--environments", default="bagel,omnigen2,mmada,show_o,blip3o_next",
                        help="backbones whose environment build and reuse times are measured ('' for none)")
    parser.add_argument("--environments-only", action="store_true", help="skip the tiny Janus-Pro figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("umm_harness.isolation").setLevel(logging.INFO)  # the first build's progress
    torch.set_num_threads(args.threads)
    figures: dict[str, float] = {}
    results_store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")

    keys = [key.strip() for key in args.environments.split(",") if key.strip()]
    if keys:
        with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
            figures.update(environment_times(keys, args.env_manager, Path(tmp)))
    if not args.environments_only:
        figures.update(janus_figures(args))
    figures["load_average_1m"] = os.getloadavg()[0]  # other work on the machine: the figures move with it
    os.chdir(REPO)
    mlflow.set_tracking_uri(results_store)
    report("bench_isolation", figures, {"device": device_name(), "env_manager": args.env_manager,
                                        "batch_size": str(args.batch_size), "threads": str(args.threads)},
           f"device {device_name()} ({args.env_manager}, batches of {args.batch_size})")


if __name__ == "__main__":
    main()
