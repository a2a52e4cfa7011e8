"""Real server processes for tests: `mlflow models serve` and `mlflow ui` on a free 127.0.0.1 port,
each in its own process group, stopped after. (The local judge server has its own starter:
`tasks.judges.server.running`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import requests

from umm_harness.core.ports import free_port


@contextmanager
def mlflow_process(args: list[str], cwd: Path, ready_path: str, *, env: dict[str, str] | None = None,
                   timeout_s: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow <args> --host 127.0.0.1 --port <free> --workers 1`, logging to a file in `cwd`;
    yields (base URL, process) once GET `ready_path` answers 200, and stops the process group after."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **(env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = cwd / f"mlflow-{args[0]}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(bin_dir / "mlflow"), *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow {args[0]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow {args[0]} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, process
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def served(model: str, cwd: Path, timeout_s: float = 180, env_manager: str = "local") -> Iterator[str]:
    """The base URL of `mlflow models serve -m <model> --env-manager <env_manager>` once it answers
    /ping (uv gets this machine's package sources, as the harness gives them)."""
    from umm_harness.isolation import pip_sources_for_uv

    env = pip_sources_for_uv() if env_manager == "uv" else None
    with mlflow_process(["models", "serve", "-m", model, "--env-manager", env_manager], cwd, "/ping", env=env,
                        timeout_s=timeout_s) as (url, _):
        yield url


@contextmanager
def registered_and_served(backbone, name: str, root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`backbone` registered as `name` version 1 in a store of its own in `root`, then served by
    `mlflow models serve -m models:/<name>/1`: yields (base URL, process). For module-scoped
    fixtures, which cannot use a test's `workspace`."""
    from model_flavors import flavor
    from tests.conftest import _forget_mlflow_state

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        _forget_mlflow_state()
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=mlflow.create_experiment("serving")):
            flavor.log_model(backbone, registered_model_name=name)
        _forget_mlflow_state()
    with mlflow_process(["models", "serve", "-m", f"models:/{name}/1", "--env-manager", "local"], root, "/ping",
                        env={"MLFLOW_TRACKING_URI": uri}) as served:
        yield served


def invoke(url: str, records: list[dict], params: dict | None = None) -> requests.Response:
    payload = {"dataframe_records": records, **({"params": params} if params else {})}
    return requests.post(f"{url}/invocations", json=payload, timeout=120)
