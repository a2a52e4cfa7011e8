"""Scoring beside generation: a worker process scores each sample as soon as its outputs are cached.

Scoring in a thread of the evaluating process slowed the model loop (both want the GIL); a
process does not. The worker receives the task and its samples once, then (sample index, cached
outputs) as batches land, reads the images from the cache folder itself and sends each record
back, pickled, so it arrives exactly as computed. The runner saves records as they arrive: a
scorer failure loses nothing already scored, and generation goes on to the end before the
scorer's own exception is raised in the evaluating process.

The worker is a fresh interpreter (`python -m umm_harness.scoring_worker`), not a fork: the
evaluating process may hold a GPU context and threads, and multiprocessing's spawn would run the
caller's main script again. It starts while the model loop runs, in the evaluating process's
environment and folder, and talks over two pipes.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tasks.base import Output, Sample, Task
from umm_harness.cache import CachedOutput, read_output

log = logging.getLogger(__name__)

CHUNK = 64  # samples per `score_many` call: judged tasks batch their judge calls

Record = dict[str, Any]


def score_items(task: Task, items: list[tuple[Sample, list[Output]]]) -> list[Record]:
    """The task's records for (sample, outputs) pairs, through `score_many` where it has one."""
    score_many = getattr(task, "score_many", None)
    return score_many(items) if score_many else [task.score(sample, outputs) for sample, outputs in items]


class ScoringWorker:
    """One benchmark's scorer in its own process. `submit` never waits for scoring; `collect` takes
    the records that came back so far; `finish` waits for the rest."""

    def __init__(self, payload: bytes):
        # The task and samples go through a file: the evaluating process writes it at disk speed
        # instead of waiting on a pipe until the new interpreter has started and reads.
        handle, self._payload = tempfile.mkstemp(prefix="umm-scorer-", suffix=".pkl")
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        requests_in, requests_out = os.pipe()
        replies_in, replies_out = os.pipe()
        # The worker holds only the ends it uses, so either side dying gives the other an end of
        # file instead of a hang; its own session keeps a Ctrl-C for the evaluating process.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "umm_harness.scoring_worker", self._payload, str(requests_in), str(replies_out)],
            pass_fds=(requests_in, replies_out), start_new_session=True)
        os.close(requests_in)
        os.close(replies_out)
        self._requests = Connection(requests_out, readable=False)
        self._replies = Connection(replies_in, writable=False)
        self._outstanding = 0
        self._error: BaseException | None = None
        self.unavailable: str | None = None  # why the worker could not load the task: score here

    @classmethod
    def start(cls, task: Task, samples: list[Sample], images_dir: Path) -> ScoringWorker | None:
        """A worker for `task`, or None when the task cannot travel to one (it holds something
        that does not pickle, a class defined inside a function): then it scores in this process."""
        try:
            payload = pickle.dumps(sys.path) + pickle.dumps((task, samples, images_dir))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            log.info("%s: scoring after generation, in this process (the task does not pickle: %s)", task.name, exc)
            return None
        return cls(payload)

    def submit(self, items: list[tuple[int, list[CachedOutput]]]) -> None:
        """(index in the worker's samples, that sample's cached outputs) pairs, ready to score."""
        if not items or self._error is not None or self.unavailable is not None:
            return
        try:
            self._requests.send(items)
        except OSError:  # the worker is gone: `finish` reports why
            return
        self._outstanding += len(items)

    def collect(self, wait: bool = False) -> list[tuple[str, Record]]:
        """(sample id, record) pairs that came back; with `wait`, at least one unless all are in."""
        found: list[tuple[str, Record]] = []
        while self._outstanding and self._error is None and self.unavailable is None and (
                self._replies.poll() or (wait and not found)):
            try:
                kind, body = self._replies.recv()
            except EOFError:
                self._error = RuntimeError(f"the scoring worker died (exit code {self._process.wait()})")
                break
            if kind == "unavailable":
                self.unavailable = body
                self._outstanding = 0
            elif kind == "error":
                self._error = body
            else:
                found += body
                self._outstanding -= len(body)
        return found

    def finish(self, on_records: Callable[[list[tuple[str, Record]]], None]) -> None:
        """Wait for every submitted sample, handing each reply to `on_records`; re-raises the scorer's error."""
        while self._outstanding and self._error is None and self.unavailable is None:
            on_records(self.collect(wait=True))
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._requests.close()  # the worker's end of file: it stops
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # still inside a scorer call (an error left it behind)
            self._process.kill()
            self._process.wait()
        self._replies.close()
        Path(self._payload).unlink(missing_ok=True)


def _serve(payload: Path, requests: Connection, replies: Connection) -> None:
    # Below the model loop when CPUs are short: a sample left unscored waits for the last batch,
    # a slowed model loop delays everything.
    os.nice(10)
    try:
        with payload.open("rb") as file:
            sys.path[:] = pickle.load(file)  # the evaluating process's: its task's module imports here too
            task, samples, images_dir = pickle.load(file)
    except Exception as exc:  # noqa: BLE001 - the evaluating process scores itself instead
        replies.send(("unavailable", f"{type(exc).__name__}: {exc}"))
        return
    finally:
        payload.unlink()
    inbox: queue.Queue[list[tuple[int, list[CachedOutput]]] | None] = queue.Queue()
    # A reader thread keeps the request pipe drained, so the evaluating process never blocks on a
    # full pipe while this one is busy scoring or sending.
    threading.Thread(target=_drain, args=(requests, inbox), daemon=True).start()
    chunk = CHUNK if hasattr(task, "score_many") else 1
    pending: list[tuple[int, list[CachedOutput]]] = []
    done = False
    while pending or not done:
        while not done:  # take whatever has arrived; wait only when there is nothing to score
            try:
                items = inbox.get(block=not pending)
            except queue.Empty:
                break
            if items is None:
                done = True
            else:
                pending += items
        batch, pending = pending[:chunk], pending[chunk:]
        if not batch:
            continue
        try:
            scored = [(samples[index], [read_output(images_dir, entry) for entry in outputs])
                      for index, outputs in batch]
            records = score_items(task, scored)
            replies.send(("records", [(sample.id, record) for (sample, _), record in zip(scored, records)]))
        except Exception as exc:  # noqa: BLE001 - handed to the evaluating process, raised there
            replies.send(("error", _portable(exc)))
            return


def _portable(exc: Exception) -> Exception:
    """The scorer's exception carrying the worker's traceback, when it survives pickling (so a
    ConfigError still reaches the CLI as one); else a RuntimeError with that traceback."""
    trace = traceback.format_exc()
    exc.add_note(f"(raised in the scoring worker)\n{trace}")
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to travel
        return RuntimeError(f"the scorer failed in the scoring worker:\n{trace}")
    return exc


def _drain(requests: Connection, inbox: queue.Queue) -> None:
    while True:
        try:
            inbox.put(requests.recv())
        except (EOFError, OSError):  # the evaluating process closed its end (done) or died
            inbox.put(None)
            return


if __name__ == "__main__":
    payload_file, requests_fd, replies_fd = sys.argv[1:]
    _serve(Path(payload_file), Connection(int(requests_fd), writable=False), Connection(int(replies_fd), readable=False))
