"""A user's checkout of a model's own repository: found, checked for layout and commit, imported
under a private package name.

Upstream research code uses generic top-level names (`models`, `training`, `modeling`) that
clash with each other and with this project's packages, so a checkout's packages are imported
as `_umm_<model>.<name>` (relative imports inside them keep working) and never put on sys.path.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

from umm_harness.core.backbone import Upstream
from umm_harness.core.errors import ConfigError

log = logging.getLogger(__name__)
COMMIT_MARKER = ".upstream-commit"  # a snapshot that is not a git clone names its commit here


def checkout_commit(repo: Path) -> str | None:
    """The commit a checkout is at: from `.git` (no git needed), or the commit marker a snapshot
    bundled into a logged model carries; None if neither says."""
    marker = repo / COMMIT_MARKER
    if marker.is_file():
        return marker.read_text().strip() or None
    git = repo / ".git"
    if git.is_file():  # a worktree: ".git" holds "gitdir: <path>"
        text = git.read_text().strip()
        if not text.startswith("gitdir:"):
            return None
        git = (repo / text.split(":", 1)[1].strip()).resolve()
    head_file = git / "HEAD"
    if not head_file.is_file():
        return None
    head = head_file.read_text().strip()
    if not head.startswith("ref:"):
        return head
    ref = head.split(":", 1)[1].strip()
    for base in (git, _common_dir(git)):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    return None


def same_code(imported: Path, wanted: Path) -> bool:
    """Whether two checkouts (or folders inside them) are at one known commit: then code already
    imported from one (a user's checkout) serves for the other (the copy a logged model bundles)."""

    def commit_above(path: Path) -> str | None:
        return next((c for folder in (path, *path.parents) if (c := checkout_commit(folder))), None)

    commit = commit_above(imported)
    return commit is not None and commit == commit_above(wanted)


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git


class UpstreamCheckout(Upstream):
    """A backbone's `upstream` (repository and commit, what the flavor bundles) plus how to find and
    check a user's checkout of it: the files that identify one and the variable that names one."""

    name: str
    markers: tuple[str, ...]
    env: str

    @property
    def any_commit_env(self) -> str:
        return f"{self.env}_ANY_COMMIT"

    def how_to_get(self) -> str:
        return (f"clone {self.repo}, `git checkout {self.commit[:12]}`, then set `repo_path` in the recipe "
                f"(backbone_options) or {self.env}=<checkout>")

    def commit_of(self, repo: Path) -> str | None:
        return checkout_commit(repo)

    def resolve(self, repo_path: str | Path | None) -> Path:
        chosen = repo_path or os.environ.get(self.env)
        if not chosen:
            raise ConfigError(f"{self.name} runs on its authors' code and no checkout is set: {self.how_to_get()}")
        repo = Path(chosen).expanduser()
        if not repo.is_dir():
            raise ConfigError(f"{self.name} checkout '{repo}' does not exist: {self.how_to_get()}")
        absent = [marker for marker in self.markers if not (repo / marker).exists()]
        if absent:
            raise ConfigError(f"'{repo}' is not a checkout of {self.repo} (no {', '.join(absent)}): {self.how_to_get()}")
        commit = self.commit_of(repo)
        if commit is None:
            log.warning("cannot tell which commit %s is; the %s adapter was written against %s", repo, self.name,
                        self.commit[:12])
        elif commit != self.commit and os.environ.get(self.any_commit_env) != "1":
            raise ConfigError(f"{self.name} checkout '{repo}' is at commit {commit[:12]}, but the adapter was written "
                              f"against {self.commit[:12]}; check that commit out, or set {self.any_commit_env}=1 "
                              f"to try this one anyway")
        return repo.resolve()


def private_package(alias: str, folder: Path) -> types.ModuleType:
    """`folder` as the package `alias` (without running its __init__), so its modules import as alias.x."""
    parent, _, _ = alias.rpartition(".")
    if parent and parent not in sys.modules:
        sys.modules[parent] = types.ModuleType(parent)
        sys.modules[parent].__path__ = []
    existing = sys.modules.get(alias)
    if existing is not None:
        paths = list(getattr(existing, "__path__", []))
        if paths != [str(folder)] and not (len(paths) == 1 and same_code(Path(paths[0]), folder)):
            raise ConfigError(f"{alias} is already imported from {paths}; one checkout per process")
        return existing
    package = types.ModuleType(alias)
    package.__path__ = [str(folder)]
    sys.modules[alias] = package
    return package


def module_from_file(alias: str, file: Path) -> types.ModuleType:
    """One upstream file imported as module `alias` (for files whose package __init__ pulls in too much)."""
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.spec_from_file_location(alias, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[alias]
        raise
    return module


def diffusers_modelmixin_standin(module_name: str, requirements: tuple[str, ...]) -> None:
    """Put the installed diffusers' `ModelMixin`, `ConfigMixin` and `register_to_config` in place of
    an upstream module that is a vendored copy of an old diffusers `modeling_utils` (MMaDA's and
    Show-o's import names diffusers >=0.35 removed, e.g. `FLAX_WEIGHTS_NAME`). Their models only
    subclass those three names."""
    if module_name in sys.modules:
        return
    try:
        from diffusers import ConfigMixin, ModelMixin
        from diffusers.configuration_utils import register_to_config
    except ImportError:
        raise ConfigError(f"{module_name} needs diffusers: pip install {' '.join(requirements)}") from None
    module = types.ModuleType(module_name)
    module.ModelMixin, module.ConfigMixin, module.register_to_config = ModelMixin, ConfigMixin, register_to_config
    sys.modules[module_name] = module


def import_or_explain(name: str, upstream: UpstreamCheckout, requirements: tuple[str, ...]) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"importing {upstream.name}'s code ({name}) failed: {exc}; install what it needs: "
                          f"pip install {' '.join(repr(r) for r in requirements)}") from None
