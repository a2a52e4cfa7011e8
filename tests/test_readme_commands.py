"""Every `umm` and `mlflow` command line in the README parses as written: each word is an
existing (sub)command, option or argument of the real CLI; those that only read the store run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from mlflow.cli import cli as mlflow_cli

from tests.conftest import REPO
from umm_harness.cli import cli as umm_cli

PROGRAMS = {"umm": umm_cli, "mlflow": mlflow_cli, ".venv/bin/mlflow": mlflow_cli}


def _readme_commands() -> list[str]:
    lines = []
    for line in (REPO / "README.md").read_text().splitlines():
        line = re.sub(r"\s#\s.*$", "", line.removeprefix("$ ")).strip()
        if line.split(" ", 1)[0] in PROGRAMS and "..." not in line:
            lines.append(line)
    return lines


def _parse(command: click.Command, args: list[str], path: str) -> None:
    """Resolve subcommands down to the leaf, then let click parse the leaf's options."""
    while isinstance(command, click.Group):
        context = command.make_context(path, list(args), resilient_parsing=True)
        name, command, args = command.resolve_command(context, context.protected_args + context.args)
        path = f"{path} {name}"
    command.make_context(path, list(args))


def test_the_readme_has_commands_to_check():
    assert len(_readme_commands()) >= 10


@pytest.mark.parametrize("line", _readme_commands())
def test_a_readme_command_parses_as_written(line):
    program, *args = shlex.split(line)
    try:
        _parse(PROGRAMS[program], args, program)
    except click.ClickException as exc:
        pytest.fail(f"README: `{line}`: {exc.format_message()}")


READS_ONLY = ("mlflow runs list", "umm models list")  # the README's commands that need nothing made first


@pytest.mark.parametrize("line", [line for line in _readme_commands()
                                  if line.removeprefix(".venv/bin/").startswith(READS_ONLY)])
def test_a_readme_command_that_reads_the_store_runs_as_written_on_a_fresh_one(line, workspace):
    program, *args = shlex.split(line)
    executable = Path(sys.executable).parent / Path(program).name
    done = subprocess.run([str(executable), *args], cwd=workspace, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README: `{line}`: {done.stderr[-2000:]}"
