"""Real server processes for tests, each on a free 127.0.0.1 port and stopped after: `mlflow models
serve` (`served`) and the local OpenAI-compatible judge server (`judge_server_process`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@contextmanager
def judge_server_process(model_dir: Path, log_path: Path, *, api_key: str | None = None,
                         name: str = "tiny-judge", timeout_s: float = 90) -> Iterator[str]:
    """`python -m tasks.judges.server` on `model_dir`; yields its base URL (…/v1) once /models answers."""
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "tasks.judges.server", "--model", str(model_dir), "--port", str(port),
               "--served-model-name", name, "--threads", "1"]
    env = {**os.environ, "UMM_JUDGE_SERVER_API_KEY": api_key or ""}
    url = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"judge server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/models", headers=headers, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"judge server did not answer in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
