"""Where a learned optimizer comes from, by name: ``hf:OWNER/NAME[@REVISION]`` (the Hugging Face hub),
``pretrained:NAME`` (``mulo.pretrained``: a θ file shipped in ``pretrained/`` or a hub model), a folder in the hub
layout (``config.json`` + ``model.safetensors``), or ``velo:NAME`` / ``velo:PATH`` (Google's released VeLO and its
conversions, ``mulo.optimizers.velo_weights``: ``velo:google`` is Google's own checkpoint, downloaded once over HTTPS
into ``~/.cache/mulo/velo``, ``mulo.optimizers.url_cache``; the others come from the Hugging Face hub). Meta-test,
coord-check and ``as_optax`` go through ``load_source``; plain θ files and meta-train run directories are resolved
by their callers as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mulo.errors import CheckpointError
from mulo.optimizers import hub
from mulo.pretrained import PRETRAINED, PRETRAINED_DIR, names

HF_PREFIX = "hf:"
PRETRAINED_PREFIX = "pretrained:"
VELO_PREFIX = "velo:"


def is_hub_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in hub.HUB_FILES)


def is_named(spec: Any) -> bool:
    """True for the sources ``load_source`` resolves (hf:, pretrained:, a hub-layout folder)."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    s = os.fspath(spec)
    return s.startswith((HF_PREFIX, PRETRAINED_PREFIX, VELO_PREFIX)) or is_hub_folder(s)


def pretrained_location(name: str) -> str:
    """``hf:...`` or the path of the shipped θ file of ``pretrained:NAME``; an unknown name is one line."""
    for p in PRETRAINED:
        if p.name == name:
            return p.location if p.location.startswith(HF_PREFIX) else str(PRETRAINED_DIR / p.location)
    raise CheckpointError(f"unknown pretrained learned optimizer {name!r}; expected one of {', '.join(names())}")


def load_source(spec: str | os.PathLike, impl: str = "fused", **download_kwargs) -> tuple[Any, Any, dict]:
    """(lo, θ, extra) of a named source; ``extra["source"]`` says where it came from (and ``path``, the file or
    folder read). ``download_kwargs`` go to ``mulo.optimizers.hub.download`` (cache_dir, endpoint, fetch)."""
    from dataclasses import replace

    from mulo.optimizers.theta_io import load_theta

    s = os.fspath(spec)
    if s.startswith(VELO_PREFIX):
        lo, theta, extra = load_velo(s[len(VELO_PREFIX):], impl=impl, **download_kwargs)
        return lo, theta, {**extra, "source": s}
    if s.startswith(PRETRAINED_PREFIX):
        location = pretrained_location(s[len(PRETRAINED_PREFIX):])
        if location.startswith(HF_PREFIX):
            lo, theta, extra = load_source(location, impl=impl, **download_kwargs)
        else:
            lo, theta, extra = load_theta(location, impl=impl)
            extra = {**extra, "path": location}
        return lo, theta, {**extra, "source": s}
    if s.startswith(HF_PREFIX):
        lo, theta, folder = hub.load_hub(s[len(HF_PREFIX):], **download_kwargs)
    elif is_hub_folder(s):
        lo, theta = hub.read_hub_folder(s)
        folder = Path(s)
    else:
        raise CheckpointError(f"{s!r} is not a named learned optimizer: expected hf:OWNER/NAME, pretrained:NAME "
                              f"({', '.join(names())}) or a folder with {' and '.join(hub.HUB_FILES)}")
    # "path": the weights file read (meta-test names its run after its hash)
    return replace(lo, impl=impl), theta, {"source": s, "path": str((folder / hub.WEIGHTS_FILE).resolve()),
                                           "format": "hub (PyLO MetaMLP)"}


def load_velo(name: str, impl: str = "fused", **download_kwargs) -> tuple[Any, Any, dict]:
    """(lo, θ, extra) of ``velo:NAME`` (``velo_weights.NAMES``: downloaded once into the hub cache, or into mulo's
    cache for ``google``) or ``velo:PATH`` (a flax msgpack file: Google's checkpoint or theta.state; or a folder
    holding PyLO's ``VeLO_RNN`` and ``VeLO_MLP`` folders)."""
    from mulo.optimizers import velo_weights as W

    if name == "velo-4000":
        folder = hub.download("amoudgl/velo-4000", filenames=(W.FLAX_FILE,), **download_kwargs)
        path = folder / W.FLAX_FILE
        lo, theta = W.read_flax_file(path, origin=f"velo:{name}", impl=impl)
    elif name == "pylo":
        rnn, mlp = (hub.download(repo, **download_kwargs) for repo in W.PYLO_REPOS)
        lo, theta = W.read_pylo_folders(rnn, mlp, origin=f"velo:{name}", impl=impl)
        path = rnn / hub.WEIGHTS_FILE
    elif name == "google":
        from mulo.optimizers.url_cache import cache_path, cached_download

        path = cached_download(W.GOOGLE_URL, cache_path("velo", W.GOOGLE_CHECKPOINT, "params"),
                               by_hand="pass its path as velo:PATH (or use velo:velo-4000, a copy on the Hugging Face "
                                       "hub)")
        lo, theta = W.read_flax_file(path, origin=f"velo:{name} ({path})", impl=impl)
    elif Path(name).is_file():
        lo, theta = W.read_flax_file(name, impl=impl)
        path = Path(name)
    elif Path(name).is_dir() and all((Path(name) / d).is_dir() for d in ("VeLO_RNN", "VeLO_MLP")):
        lo, theta = W.read_pylo_folders(Path(name) / "VeLO_RNN", Path(name) / "VeLO_MLP", origin=name, impl=impl)
        path = Path(name) / "VeLO_RNN" / hub.WEIGHTS_FILE
    else:
        raise CheckpointError(f"unknown VeLO {name!r}: expected velo:NAME ({', '.join(W.NAMES)}), a flax msgpack "
                              f"file or a folder holding VeLO_RNN and VeLO_MLP")
    return lo, theta, {"path": str(Path(path).resolve()), "format": "VeLO (HyperV2 theta)"}
