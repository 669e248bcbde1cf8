"""The package's layout stays as docs/design.md describes it.

The import layers themselves are checked by import-linter (``make lint``, contracts
in pyproject.toml); these tests guard what it does not: that every module is named
by a layer, that project modules are imported at module level (so a cycle cannot
hide inside a function), and that no module grows back into a catch-all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "longvideo_r1"
MAX_LINES = 700


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    names = []
    for layer in layers:
        names += [n.strip() for n in layer.replace("|", ":").split(":")]
    return names


def test_every_subpackage_and_top_level_module_sits_in_a_layer():
    named = set(_layers())
    top = {
        _dotted(p).split(".")[:2][-1]
        for p in _modules()
        if p.parent != PACKAGE or p.name not in ("__init__.py",)
    }
    missing = sorted(f"longvideo_r1.{t}" for t in top if f"longvideo_r1.{t}" not in named)
    assert not missing, f"not placed in pyproject's import layers: {missing}"


def _function_level_project_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("longvideo_r1")
            ):
                found.append(f"{path.name}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import) and any(
                a.name.startswith("longvideo_r1") for a in node.names
            ):
                found.append(f"{path.name}:{node.lineno} import")
    return found


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_project_modules_are_imported_at_module_level(path):
    assert _function_level_project_imports(path) == []


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_no_module_outgrows_one_concept(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_dotted(path)} has {lines} lines; split it by concept"


def test_the_checks_see_a_function_level_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from longvideo_r1.tree import NodeId\n    return NodeId\n")
    assert _function_level_project_imports(sample) == ["sample.py:2 from longvideo_r1.tree"]
