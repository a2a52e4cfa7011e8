"""A real `mlflow models serve` process for tests: started on a free 127.0.0.1 port, stopped after.
(The local judge server has its own starter: `tasks.judges.server.running`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tasks.judges.server import free_port


@contextmanager
def served(model: str, cwd: Path, timeout_s: float = 180) -> Iterator[str]:
    """The base URL of `mlflow models serve -m <model>` once it answers /ping."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited early:\n{process.stdout.read().decode()[-3000:]}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer /ping within {timeout_s:.0f} s")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def invoke(url: str, records: list[dict], params: dict | None = None) -> requests.Response:
    payload = {"dataframe_records": records, **({"params": params} if params else {})}
    return requests.post(f"{url}/invocations", json=payload, timeout=120)
