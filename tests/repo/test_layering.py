"""Layers point down: the paper packages (tasks, data, optimizers, meta, evaluate, mup) import nothing from the run
machinery in ``mulo.app`` — not at module level, not inside functions, not through ``importlib``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mulo"
PAPER_PACKAGES = ("tasks", "data", "optimizers", "meta", "evaluate", "mup")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported name) of every import of ``mulo.app`` in ``source`` (the module ``module``), anywhere in it."""
    package = module.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = ".".join(package[:len(package) - node.level] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        hits = [n for n in names if n == "mulo.app" or n.startswith("mulo.app.")]
        if hits:
            found.append((node.lineno, hits[0]))
    return found


def _paper_modules() -> list[Path]:
    return sorted(p for pkg in PAPER_PACKAGES for p in (SRC / pkg).rglob("*.py"))


def test_the_scan_sees_every_kind_of_import():
    source = ("import mulo.app.config\n"
              "from mulo import app\n"
              "def f():\n    from mulo.app.rundir import claim\n"
              "def g():\n    import importlib\n    importlib.import_module('mulo.app.runlog')\n"
              "from ..app import cli\n"
              "from mulo.apple import x\n"  # not mulo.app
              "from mulo.layout import THETA_DIR\n")
    assert sorted(line for line, _ in app_imports(source, "mulo.meta.train")) == [1, 2, 4, 7, 8]


def test_every_paper_package_is_scanned():
    modules = {_module_name(p).split(".")[1] for p in _paper_modules()}
    assert modules == set(PAPER_PACKAGES)


@pytest.mark.parametrize("path", _paper_modules(), ids=lambda p: _module_name(p))
def test_paper_module_imports_nothing_from_app(path):
    hits = app_imports(path.read_text(encoding="utf-8"), _module_name(path))
    assert not hits, f"{_module_name(path)} imports the run machinery: " + ", ".join(f"line {n}: {m}" for n, m in hits)
