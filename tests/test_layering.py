"""The three layers, read from the imports (with `ast`; nothing is executed).

- `umm_harness/core/` (contracts and shared infrastructure) imports nothing else of the project;
- plugins — `model_flavors/` (backbones) and `tasks/` (benchmarks) — import from `umm_harness`
  only `umm_harness.core`, and never each other;
- training methods reach a model through the training contract: nothing in `training/` imports a
  backbone family module (only the flavor machinery, `model_flavors.flavor`);
- orchestration (`umm_harness/*.py` outside `core/`) may import everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("umm_harness", "model_flavors", "tasks", "training")


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in `path`, `from a import b` read as `a.b` too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rule_broken(layer: str, module: str) -> str | None:
    """Why importing `module` from a file of `layer` breaks the layering, or None."""
    if not any(_within(module, top) for top in PROJECT):
        return None
    if layer == "core":
        return None if _within(module, "umm_harness.core") else "core imports only umm_harness.core"
    if layer in ("model_flavors", "tasks"):
        other = "tasks" if layer == "model_flavors" else "model_flavors"
        if _within(module, other):
            return f"{layer} never imports {other}"
        if _within(module, "training"):
            return f"{layer} never imports training"
        if _within(module, "umm_harness") and not _within(module, "umm_harness.core"):
            return f"{layer} imports from umm_harness only umm_harness.core"
    if layer == "training" and _within(module, "model_flavors") and not _within(module, "model_flavors.flavor"):
        return "training reaches models through the training contract, not a backbone module"
    return None


def layer_of(relative: Path) -> str | None:
    parts = relative.parts
    if parts[:2] == ("umm_harness", "core"):
        return "core"
    if parts[0] in ("model_flavors", "tasks", "training"):
        return parts[0]
    return None  # orchestration, tests, benchmarks: free


def violations(root: Path) -> list[str]:
    out = []
    for path in sorted(p for top in PROJECT for p in (root / top).rglob("*.py")):
        relative = path.relative_to(root)
        layer = layer_of(relative)
        if layer is None:
            continue
        package = ".".join(relative.with_suffix("").parts[:-1]) if path.name != "__init__.py" \
            else ".".join(relative.parts[:-1])
        for line, module in imported_modules(path, package):
            reason = rule_broken(layer, module)
            if reason:
                out.append(f"{relative}:{line}: imports {module}: {reason}")
    return out


def test_the_project_keeps_its_layers():
    assert violations(ROOT) == []


@pytest.mark.parametrize(("file", "source", "reason"), [
    ("umm_harness/core/requests.py", "from umm_harness.cache import ResultCache\n", "core imports only"),
    ("model_flavors/janus.py", "from umm_harness.evaluate import evaluate\n", "only umm_harness.core"),
    ("model_flavors/janus.py", "import umm_harness.runner\n", "only umm_harness.core"),
    ("model_flavors/janus.py", "from tasks import shapes\n", "never imports tasks"),
    ("tasks/judges/tiny.py", "from model_flavors.janus import build_tiny\n", "never imports model_flavors"),
    ("model_flavors/flavor.py", "from . import registry\n", None),  # the same package
    ("tasks/scorers/vqa.py", "from ..judges import base\n", None),  # tasks.judges: same layer
    ("training/sft.py", "from model_flavors.janus import JanusPro\n", "training contract"),
    ("training/run.py", "from model_flavors import flavor\n", None),
    ("umm_harness/evaluate.py", "from model_flavors.janus import JanusPro\n", None),  # orchestration
])
def test_a_wrong_import_is_caught(tmp_path, file, source, reason):
    path = tmp_path / file
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations(tmp_path)
    if reason is None:
        assert found == []
    else:
        assert len(found) == 1 and reason in found[0] and found[0].startswith(f"{file}:1:")


def test_core_holds_the_contracts_plugins_need():
    core = {p.stem for p in (ROOT / "umm_harness" / "core").glob("*.py")}
    assert {"requests", "backbone", "errors", "seeding", "acceleration", "home", "ports", "training"} <= core
