"""Running a logged model in its own environment, built by MLflow, behind a loopback scoring server.

Most unified models run only on their authors' code, whose pins conflict with ours. A logged
`umm` model records its backbone's environment and upstream code (the contract for adapters is in
`model_flavors.environment`: `pip_requirements`, `upstream`, `env_manager`). With `--env-manager uv`
or `virtualenv`, the harness starts MLflow's own scoring server for the model,
`mlflow models serve -m <uri> --env-manager <manager>`: MLflow builds the environment from the
model's `python_env.yaml` (or reuses the one it built before: its environments are keyed by a hash
of the python version and the requirements) and loads the model there. `ServedBackbone` speaks to
it over 127.0.0.1 with the flavor's pyfunc protocol: one POST per batch, each row carrying its own
params (so the harness's per-sample seeds hold), images as base64 PNG both ways, and an error raised
inside the model returned as a message that becomes this batch's error here. Tasks, scoring, the
result cache and MLflow logging stay in the harness's process.

uv does not read pip's configuration, so the package sources pip is configured with on this
machine (find-links, extra indexes, constraints) are handed to uv through its own variables.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import ctypes
import hashlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import requests
from PIL import Image

from umm_harness.core.backbone import EnvManager, ModelInfo, TaskBatches
from umm_harness.core.errors import ConfigError
from umm_harness.core.home import umm_home
from umm_harness.core.ports import free_port
from umm_harness.core.requests import (InferenceParams, InferenceRequest, InferenceResult, TaskKind, decode_image,
                                       encode_png)

if TYPE_CHECKING:
    from mlflow.utils.environment import Environment

log = logging.getLogger(__name__)

ENV_MANAGERS: tuple[str, ...] = get_args(EnvManager)
# A batch of a large model may take many minutes; the harness, not the server, decides when to give up.
REQUEST_TIMEOUT_S = 24 * 3600
# MLflow's own lines that say whether the environment was built now or found.
_BUILT = re.compile(r"Creating a new environment in (\S+)")
_REUSED = re.compile(r"Environment (\S+) already exists")
_SERVING = re.compile(r"Running command .*exec uvicorn")  # the environment is ready; the server starts in it


class EnvironmentBuildError(ConfigError):
    """The model's environment could not be built, or the model did not load in it."""


class ServedModelError(RuntimeError):
    """A batch failed inside the model's own environment."""


def pip_sources_for_uv() -> dict[str, str]:
    """uv's variables for the package sources pip is configured with (`pip config list`): without
    them uv resolves `torch==2.13.0` from the public index (a multi-GB CUDA build), not the local wheel."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings: dict[str, list[str]] = {}
    for line in listing.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        settings.setdefault(option, []).extend(value.strip().strip("'\"").split())
    wanted = {"find-links": ("UV_FIND_LINKS", ","), "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
              "index-url": ("UV_INDEX_URL", " "), "constraint": ("UV_CONSTRAINT", " ")}
    variables = {}
    for option, (variable, separator) in wanted.items():
        values = list(dict.fromkeys(settings.get(option, [])))
        if values and variable not in os.environ:  # the user's own uv settings win
            variables[variable] = separator.join(values[:1] if option == "index-url" else values)
    if "extra-index-url" in settings and "UV_INDEX_STRATEGY" not in os.environ:
        variables["UV_INDEX_STRATEGY"] = "unsafe-best-match"  # pip's way: every index offers every version
    if "cert" in settings and "SSL_CERT_FILE" not in os.environ:
        variables["SSL_CERT_FILE"] = settings["cert"][0]
    return variables


def manager_variables(env_manager: str) -> dict[str, str]:
    """What MLflow's environment manager needs from this process: `uv` (beside this interpreter) on
    PATH, and for uv the package sources pip is configured with."""
    bin_dir = Path(sys.executable).parent
    variables = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {**variables, **(pip_sources_for_uv() if env_manager == "uv" else {})}


def prepare_environment(model_dir: Path, env_manager: str, *, purpose: str,
                        extra_requirements: Sequence[str] = ()) -> Environment:
    """MLflow's environment for the model in `model_dir` (its `python_env.yaml`), with
    `extra_requirements` installed on top, built by `env_manager` on first use and found by its hash
    afterwards: the same call `mlflow models serve` makes, with `purpose` and a digest of the extra
    requirements as MLflow's `env_id` (part of the hash), so it never reuses the serving environment
    without them. The build's output (uv's or pip's progress) goes to this process's stderr."""
    from mlflow.utils.environment import Environment
    from mlflow.utils.virtualenv import _get_or_create_virtualenv

    if env_manager not in ("uv", "virtualenv"):
        raise ConfigError(f"env manager '{env_manager}': a model's own environment is built by uv or virtualenv")
    digest = hashlib.sha256("\n".join(sorted(extra_requirements)).encode()).hexdigest()[:12]
    variables = manager_variables(env_manager)
    started = time.perf_counter()
    log.info("preparing the %s environment of %s for %s (a first use builds it)", env_manager, model_dir, purpose)
    try:
        activate = _get_or_create_virtualenv(model_dir, env_id=f"umm-{purpose}-{digest}", env_manager=env_manager,
                                             # MLflow joins them into one shell line unquoted ("a>=1" would redirect)
                                             pip_requirements_override=[shlex.quote(r) for r in extra_requirements] or None,
                                             extra_envs=dict(variables))
    except Exception as exc:  # MLflow's ShellCommandException; the installer's own output is above
        lines = str(exc).strip().splitlines()
        raise EnvironmentBuildError(f"{model_dir}: its {env_manager} environment for {purpose} could not be built: "
                                    f"{lines[-1] if lines else type(exc).__name__} (the installer's output is above)") from None
    log.info("the %s environment for %s is ready after %.1f s", env_manager, purpose, time.perf_counter() - started)
    return Environment(activate, extra_env=variables)


def _end_with_parent() -> None:
    """Run in the server's process before it starts: it gets SIGTERM when the thread that started it
    ends, even if the harness is killed (Linux; MLflow passes this on to the scoring server it starts)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class ModelServer:
    """`mlflow models serve` of one model in its own environment, on a free loopback port."""

    uri: str
    env_manager: str
    process: subprocess.Popen
    url: str
    log_path: Path
    environment: str | None = None  # the environment folder MLflow used
    built: bool = False  # True when this start built the environment (False: reused)
    environment_s: float | None = None  # from start until the environment was ready (built or found)
    startup_s: float = 0.0  # from start until the model answered
    _started: float = field(default_factory=time.perf_counter)
    _tail: deque = field(default_factory=lambda: deque(maxlen=200))
    _pumping: threading.Thread | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    @classmethod
    def start(cls, uri: str, env_manager: str, *, model_config: dict[str, Any] | None = None,
              timeout_s: float = 3600) -> ModelServer:
        """Start the server and wait until it answers; the first start of an environment builds it
        (its progress is logged). An environment that cannot be built, or a model that does not
        load in it, raises `EnvironmentBuildError` with the server's last lines."""
        if env_manager not in ("uv", "virtualenv"):
            raise ConfigError(f"env manager '{env_manager}': a served model needs uv or virtualenv")
        port = free_port()
        env = {**os.environ, **manager_variables(env_manager),
               "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
               # MLflow's INFO lines say whether the environment was built or reused (read below),
               # whatever level the calling command quietened MLflow's own logging to
               "MLFLOW_LOGGING_LEVEL": "INFO",
               "SERVING_MODEL_CONFIG": json.dumps(model_config or {})}
        log_dir = umm_home() / "servers"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', uri)}-{port}.log"
        command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager", env_manager,
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        log.info("starting %s in its own environment (%s); a first start builds it — log: %s",
                 uri, env_manager, log_path)
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_end_with_parent)
        server = cls(uri, env_manager, process, f"http://127.0.0.1:{port}", log_path)
        _RUNNING.add(server)
        ready = threading.Event()
        server._pumping = threading.Thread(target=server._pump, args=(ready,), daemon=True)
        server._pumping.start()
        server._wait(timeout_s)
        ready.set()  # from now on the server's lines go to the debug log only
        server.startup_s = time.perf_counter() - server._started
        log.info("%s answers at %s after %.1f s (environment %s in %.1f s%s)", uri, server.url, server.startup_s,
                 "built" if server.built else "reused", server.environment_s or float("nan"),
                 f": {server.environment}" if server.environment else "")
        return server

    def _pump(self, ready: threading.Event) -> None:
        """Copy the server's output to its log file; show it while starting (the build's progress)."""
        assert self.process.stdout is not None
        with self.log_path.open("w") as out:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                out.write(line + "\n")
                out.flush()
                self._tail.append(line)
                if match := _BUILT.search(line):
                    self.built, self.environment = True, match.group(1)
                elif match := _REUSED.search(line):
                    self.environment = match.group(1)
                elif _SERVING.search(line) and self.environment_s is None:
                    self.environment_s = time.perf_counter() - self._started
                log.log(logging.DEBUG if ready.is_set() else logging.INFO, "[%s] %s", self.env_manager, line)

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                self._pumping.join(timeout=10)  # the pump reads to the end of the output first
                self.stop()
                raise EnvironmentBuildError(
                    f"{self.uri}: its environment ({self.env_manager}) could not be built or the model did not "
                    f"load in it (exit {self.process.returncode}): {self._last_lines()} — full log: {self.log_path}")
            try:
                if self._session.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EnvironmentBuildError(f"{self.uri}: the server did not answer within {timeout_s:.0f} s: "
                                        f"{self._last_lines()} — full log: {self.log_path}")
            time.sleep(0.3)

    def _last_lines(self, count: int = 6) -> str:
        """What went wrong, from the server's output: the installer's own error lines (uv, pip), else
        the last Python exception that is not MLflow's wrapper around them, else the last lines."""
        lines = [line.strip() for line in self._tail if line.strip()]
        installer = [line for line in lines if re.match(r"(error:|ERROR:|×|╰─▶|help:)", line)]
        raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)
                  and "ShellCommandException" not in line]
        return " | ".join((installer or raised[-1:] or lines)[-count:]) or "(no output)"

    def predict(self, frame: dict[str, Any], what: str) -> list[dict[str, Any]]:
        """POST one batch (`dataframe_split`); the rows' predictions, or `ServedModelError`."""
        try:
            response = self._session.post(f"{self.url}/invocations", json={"dataframe_split": frame},
                                          timeout=REQUEST_TIMEOUT_S)
        except requests.ConnectionError:
            raise ServedModelError(f"{self.uri}: the model's server stopped during {what} "
                                   f"(exit {self.process.poll()}): {self._last_lines()} — log: {self.log_path}") from None
        if response.status_code != 200:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            # MLflow's server puts the whole input before the model's own message ("...\nError: <it>").
            message = message.rsplit("\nError: ", 1)[-1].strip()
            raise ServedModelError(f"{self.uri} (in its {self.env_manager} environment): {what} failed: "
                                   f"{message[:2000]}")
        return response.json()["predictions"]

    def stop(self) -> None:
        _RUNNING.discard(self)
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._session.close()

    def __hash__(self) -> int:
        return id(self)


_RUNNING: set[ModelServer] = set()
atexit.register(lambda: [server.stop() for server in list(_RUNNING)])


def _png(value: str, row_index: int) -> Image.Image:
    """An image the server answered: base64 bytes only (never a path on this machine)."""
    try:
        return decode_image(base64.b64decode(value, validate=True))
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ServedModelError(f"row {row_index}: the server answered an image that is not base64 PNG ({exc})") from None


class ServedBackbone(TaskBatches):
    """The harness's side of a served model: the backbone contract (`key`, `capabilities`, `run`),
    each batch one request to the model's scoring server."""

    attn_implementation: str | None = None  # chosen inside the model's environment
    compiled: bool = False

    def __init__(self, server: ModelServer, key: str, capabilities: frozenset[TaskKind], info: ModelInfo):
        self.server, self.key, self.capabilities, self.info = server, key, capabilities, info

    def run_task(self, task: TaskKind, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        frame = {"columns": ["task", "prompt", "images", "params"],
                 "data": [[r.task, r.prompt, [encode_png(image, compress_level=1) for image in r.images],
                           r.params.model_dump_json(exclude_none=True)] for r in requests]}
        rows = self.server.predict(frame, f"a batch of {len(requests)} {task} request(s)")
        if len(rows) != len(requests):
            raise ServedModelError(f"{self.server.uri}: {len(rows)} answers to {len(requests)} requests")
        return [InferenceResult(text=row.get("text"), images=[_png(value, row_index) for value in row.get("images") or []],
                                params=InferenceParams.model_validate_json(row["params"]),
                                elapsed_s=float(row.get("elapsed_s") or 0.0)) for row_index, row in enumerate(rows)]

    def close(self) -> None:
        self.server.stop()


def serve_backbone(uri: str, env_manager: str, conf: dict[str, Any], *, device: str = "cpu",
                   model_config: dict[str, Any] | None = None) -> ServedBackbone:
    """Start `uri` (an `umm` model; `conf` is its flavor entry) in its own environment, with as many
    torch threads as this process has (it waits while the model works)."""
    import torch

    config = {"device": device, "threads": torch.get_num_threads(), **(model_config or {})}
    server = ModelServer.start(uri, env_manager, model_config=config)
    info = ModelInfo(backbone=conf["backbone"], source=conf.get("base_model") or uri,
                     revision=conf.get("revision"), dtype=conf.get("dtype", "float32"))
    return ServedBackbone(server, conf["backbone"], frozenset(conf["capabilities"]), info)


if __name__ == "__main__":  # eval "$(python -m umm_harness.isolation)" before `mlflow models serve --env-manager uv`
    print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in pip_sources_for_uv().items()))
