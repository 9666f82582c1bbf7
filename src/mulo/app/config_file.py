"""Reading config files: an MMEngine Python config (``_base_`` inheritance, imports checked) into a plain dict, and
whether a file is a run directory's resolved config.py."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from mulo.app.schema import clip, to_plain
from mulo.errors import ConfigError, one_line

RESOLVED_HEADER = "# Resolved mulo config: every key, as this run used it."  # a run directory's config.py


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read an MMEngine Python config file (with `_base_` inheritance) into a plain dict."""
    from mmengine.config import Config as MMConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = MMConfig.fromfile(str(path))
        check_imports(path)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # mmengine raises many kinds (SyntaxError, FileNotFoundError, ...)
        msg = clip(one_line(exc, None), 300)
        raise ConfigError(f"cannot read config file {path}: {type(exc).__name__}: {msg}") from None
    return to_plain(cfg.to_dict())


def check_imports(path: Path) -> None:
    """MMEngine reads a config without ``_base_`` with lazy imports, so ``import nonexistent`` passed silently: every
    top-level import of the file must name an importable module."""
    import importlib.util

    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ConfigError(f"cannot read config file {path}: line {node.lineno}: no module named {name!r}")


def is_run_config(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory's config.py (written by ``mulo.app.config.dump_text``, now or before)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == RESOLVED_HEADER
    except OSError:
        return False
