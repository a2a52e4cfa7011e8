"""What a logged model records about the environment its backbone needs, and the code it runs on.

Contract for backbone adapters (class attributes on a `Backbone` subclass):

- `pip_requirements`: pip requirement strings the backbone needs beyond the flavor's base
  (`BASE_REQUIREMENTS`: mlflow, torch, transformers, pydantic, pillow, pandas, pyyaml, ...). A pin
  here replaces the base's pin of the same package, so an upstream model that needs
  `transformers==4.49.0` writes exactly that. Write what installs here: `torch==2.13.0` (the CPU
  wheel on machines without a GPU), PyPI releases, no torchvision beside that torch.
- `upstream`: `Upstream(repo=<url>, commit=<sha>)` for routes that run the authors' code. The
  instance returned by `load(..., repo_path=...)` sets `self.repo_path` to the checkout it
  imported (an instance that runs without it, e.g. behind an engine, leaves it None);
  `save_model` copies that checkout into the model's `code/upstream/` (refusing a checkout at
  another commit), and loading the logged model calls `load(..., repo_path=<model>/code/upstream)`.
- `env_manager`: where `umm eval|infer` run the model when the user does not say: `"local"` (in the
  harness's process; the default, for backbones whose needs fit the harness's) or `"uv"` /
  `"virtualenv"` (a scoring server in the model's own environment, built by MLflow).

`save_model` then writes `requirements.txt`, `python_env.yaml` and `conda.yaml` and names both in
the pyfunc flavor's `env` (MLflow's uv manager reads the conda entry too), so a registered
version is self-contained: code + environment + weights (copied or by reference).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import mlflow
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from model_flavors.upstream_checkout import COMMIT_MARKER, checkout_commit
from umm_harness.core.backbone import Backbone
from umm_harness.core.errors import ConfigError

log = logging.getLogger(__name__)

# What the flavor's own code (and the tiny transformers backbones) import in a model's environment.
BASE_REQUIREMENTS: tuple[str, ...] = (
    "torch==2.13.0",
    f"mlflow=={mlflow.__version__}",
    "transformers>=5.0,<6",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "pydantic>=2.7,<3",
    "pillow>=10",
    "pandas>=2.1",
    "pyyaml>=6",
)
UPSTREAM_DIR = "upstream"  # inside the model's code/ folder
ENV_FILES = {"virtualenv": "python_env.yaml", "conda": "conda.yaml"}


def _name(requirement: str, owner: str) -> str:
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement as exc:
        raise ConfigError(f"{owner}.pip_requirements: '{requirement}' is not a pip requirement ({exc})") from None


# Weights that keep LoRA adapters unmerged (peft's adapter_config.json beside them) load through peft.
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_REQUIREMENTS: tuple[str, ...] = ("peft>=0.17",)


def requirements_for(cls: type[Backbone], *, adapters: bool = False) -> list[str]:
    """The base requirements with the backbone's own added (the backbone's pin of a package wins),
    and peft when the weights carry unmerged adapters."""
    own = {_name(r, cls.__name__): r for r in cls.pip_requirements}
    base = [r for r in BASE_REQUIREMENTS if _name(r, "BASE_REQUIREMENTS") not in own]
    extra = [r for r in ADAPTER_REQUIREMENTS if adapters and _name(r, "ADAPTER_REQUIREMENTS") not in own]
    return [*base, *own.values(), *extra]


def write_environment(path: Path, cls: type[Backbone], *, adapters: bool = False) -> dict[str, str]:
    """`requirements.txt`, `python_env.yaml` and `conda.yaml` in `path`; returns the pyfunc `env` entry."""
    (path / "requirements.txt").write_text("\n".join(requirements_for(cls, adapters=adapters)) + "\n")
    python = ".".join(map(str, sys.version_info[:3]))  # exact: MLflow builds this very version
    python_env = {"python": python, "build_dependencies": ["pip"], "dependencies": ["-r requirements.txt"]}
    (path / ENV_FILES["virtualenv"]).write_text(yaml.safe_dump(python_env, sort_keys=False))
    conda = {"name": "mlflow-env", "channels": ["conda-forge"],
             "dependencies": [f"python={python}", "pip", {"pip": ["-r requirements.txt"]}]}
    (path / ENV_FILES["conda"]).write_text(yaml.safe_dump(conda, sort_keys=False))
    return dict(ENV_FILES)


def bundle_upstream(cls: type[Backbone], repo_path: Path | str | None, code_dir: Path) -> dict[str, str] | None:
    """Copy the checkout a `cls` instance runs on into `code_dir/upstream`; the flavor's record of it."""
    pinned = cls.upstream
    if pinned is None or repo_path is None:  # not an upstream route, or this instance runs without the code
        return None
    repo_path = Path(repo_path)
    if not repo_path.is_dir():
        raise ConfigError(f"backbone '{cls.key}': its upstream checkout {repo_path} is not a folder; load it "
                          f"with repo_path=<a checkout of {pinned.repo} at {pinned.commit[:12]}>")
    commit = checkout_commit(repo_path)
    if commit is None:
        log.warning("%s: cannot tell its commit (no .git, no %s); recording the pinned %s",
                    repo_path, COMMIT_MARKER, pinned.commit[:12])
    elif not (commit.startswith(pinned.commit) or pinned.commit.startswith(commit)):
        raise ConfigError(f"{repo_path} is at commit {commit[:12]}, but backbone '{cls.key}' is written "
                          f"against {pinned.commit[:12]}: check out that commit (git -C {repo_path} checkout "
                          f"{pinned.commit}) before logging the model")
    shutil.copytree(repo_path, code_dir / UPSTREAM_DIR,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
    (code_dir / UPSTREAM_DIR / COMMIT_MARKER).write_text(commit or pinned.commit)  # the copy has no .git
    return {"repo": pinned.repo, "commit": pinned.commit, "path": UPSTREAM_DIR, "verified": str(commit is not None)}
