"""Interrupted commands never leave runs RUNNING or logged models PENDING.

- SIGTERM (what `timeout` and job schedulers send), SIGHUP and Ctrl-C raise `Interrupted` in the
  main thread. MLflow's run contexts end the runs as they unwind; the CLI then marks every run
  that was active when the signal came as KILLED, fails the logged models those runs left
  PENDING, and exits 128 + the signal number (130 for Ctrl-C).
- SIGKILL cannot be caught. Every run a `umm` command starts carries the process that owns it
  (`umm.host`, `umm.pid`, `umm.process_start`, set by `ProcessTags`, an MLflow run context
  provider); when the next command opens the store, runs whose owner is gone are closed the same
  way, with a warning that says so. Their finished work is in the result cache, so a rerun resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_installed = False
_active_at_signal: list[str] = []


class Interrupted(BaseException):  # not an Exception: no `except Exception` may swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, a process identity
    that survives pid reuse. None where there is no /proc."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


class ProcessTags:
    """Tags every run a `umm` command starts with the process that owns it: an MLflow run context
    provider (`RunContextProvider`'s two methods; importing MLflow here would be circular, as
    MLflow imports this module while it starts)."""

    def in_context(self) -> bool:
        return _installed

    def tags(self) -> dict[str, str]:
        return {"umm.host": socket.gethostname(), "umm.pid": str(os.getpid()),
                "umm.process_start": _process_start(os.getpid()) or ""}


def _raise(signum: int, frame: FrameType | None) -> None:
    import mlflow

    run = mlflow.active_run()
    if run is not None and not _active_at_signal:
        from mlflow.tracking.fluent import _active_run_stack

        _active_at_signal.extend(r.info.run_id for r in _active_run_stack.get())
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """While inside: terminate signals raise `Interrupted`, and the runs started are tagged."""
    global _installed
    previous = {sig: signal.signal(sig, _raise) for sig in _SIGNALS}
    _installed = True
    try:
        yield
    finally:
        _installed = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _close(run_ids: list[str], why: str) -> list[str]:
    """Mark runs KILLED (whatever their context manager wrote) and fail their PENDING models."""
    from mlflow import MlflowClient

    client = MlflowClient()
    closed = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        client.set_terminated(run_id, status="KILLED")
        client.set_tag(run_id, "umm.killed", why)
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        for model in models:  # (a `status = 'PENDING'` filter matches nothing in MLflow 3.17)
            if str(model.status) == "PENDING":
                client.finalize_logged_model(model.model_id, "FAILED")
        closed.append(run_id)
    return closed


def end_interrupted_runs(interruption: Interrupted) -> list[str]:
    """After `Interrupted` unwound the command: the runs it had open, now KILLED."""
    run_ids, _active_at_signal[:] = list(_active_at_signal), []
    return _close(run_ids, f"{signal.Signals(interruption.signum).name} to process {os.getpid()}")


def _owner_alive(tags: dict[str, str]) -> bool:
    try:
        pid = int(tags["umm.pid"])
    except (KeyError, ValueError):
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = tags.get("umm.process_start")
    return not started or _process_start(pid) in (None, started)


def close_abandoned_runs() -> list[str]:
    """Close the runs that a killed command on this machine left RUNNING; returns their ids."""
    import mlflow

    from umm_harness.search_filters import quoted

    running = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=(
        f"attributes.status = 'RUNNING' and tags.`umm.host` = {quoted(socket.gethostname())}"))
    abandoned = [run for run in running if not _owner_alive(run.data.tags)]
    for run in abandoned:
        log.warning("run %s (%s) was left RUNNING by an earlier command that was killed (process %s): marked "
                    "KILLED; what it finished is in the cache and is resumed, not recomputed",
                    run.info.run_id, run.info.run_name, run.data.tags.get("umm.pid"))
    return _close([run.info.run_id for run in abandoned], "its process was killed (found by a later command)")
