"""What a training tells a person at a terminal: a progress bar with the loss from the first step
(quiet under CI and in logs), and a notice before DeepSpeed compiles one of its C++ ops, which on
first use takes minutes of silence (2.5 min for its shared-memory op on this machine)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import pytest

from model_flavors import flavor

pytest.importorskip("deepspeed")

STEPS = 3
RECIPE = {"steps": STEPS, "batch_size": 2, "data": {"num_understanding": 2, "num_generation": 2},
          "checkpoint_every": 0}


@contextmanager
def _terminal(monkeypatch) -> Iterator[bytearray]:
    """stderr on a 120-column pseudo-terminal while the block runs; yields what it showed, complete
    once the block has ended."""
    controller, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    shown = bytearray()
    reader = threading.Thread(target=lambda: _drain(controller, shown), daemon=True)
    reader.start()
    with os.fdopen(terminal_fd, "w", buffering=1) as terminal, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        yield shown
    reader.join(timeout=10)


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal side was closed
            return
        if not chunk:
            return
        into.extend(chunk)


@pytest.fixture
def base(workspace, tiny_janus):
    mlflow.set_experiment("base")
    with mlflow.start_run():
        flavor.log_model(tiny_janus, registered_model_name="janus-pro-tiny")
    return workspace


@pytest.mark.slow
def test_a_training_shows_a_bar_with_the_loss_from_the_first_step(base, monkeypatch):
    from training.recipe import train_recipe
    from training.run import train

    monkeypatch.delenv("CI", raising=False)
    with _terminal(monkeypatch) as shown:
        train(train_recipe(**RECIPE))
    frames = [frame for frame in shown.decode(errors="replace").replace("\n", "\r").split("\r")
              if "train (sft)" in frame]
    assert frames and f"0/{STEPS}" in frames[0], shown  # on screen before the first step ends
    for step in range(1, STEPS + 1):  # drawn after every step, with its loss
        first = next(frame for frame in frames if f"{step}/{STEPS}" in frame)
        assert "loss=" in first, first


def test_the_training_bar_is_quiet_under_ci(monkeypatch):
    from training.engine import StepRecord
    from training.recipe import train_recipe
    from training.run import _with_progress

    records = [StepRecord(step=s, loss=1.0, parts={}, lr=1e-3, seconds=0.1, samples_per_s=1.0, rss_mb=1.0)
               for s in (1, 2, 3)]
    monkeypatch.setenv("CI", "true")
    with _terminal(monkeypatch) as shown:
        assert list(_with_progress(iter(records), train_recipe(**RECIPE), 0, is_main=True)) == records
    assert not shown


def test_the_deepspeed_ops_to_compile_are_named_before_the_process_group_starts(monkeypatch, tmp_path):
    from training import engine

    with engine.process_env():
        engine.setup_distributed("cpu")  # builds (or finds) DeepSpeed's ops in torch's extension cache
    assert engine.ops_to_compile() == []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: compiling is ahead
    assert engine.ops_to_compile() == ["deepspeed_shm_comm"]
