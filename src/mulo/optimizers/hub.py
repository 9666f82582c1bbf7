"""Learned optimizers from the Hugging Face hub: the μLO paper's released μLO_M (``hf:btherien/mulo``).

The hub format is PyLO's (the authors' PyTorch library): a ``PyTorchModelHubMixin`` model
``MetaMLP(input_size=39, hidden_size=32, hidden_layers=1)`` stored as two files,

* ``config.json``: ``{"input_size": 39, "hidden_size": 32, "hidden_layers": 1}``;
* ``model.safetensors``: ``network.input.{weight,bias}`` (H×39, H), ``network.linear_0.{weight,bias}`` (H×H, H),
  ``network.output.{weight,bias}`` (2×H, 2), float32, in torch's (out, in) layout.

The MLP reads the same 39 features in the same order as ours (g, p, m×3, v, m·rsqrt(v)×3, rsqrt(v), fac_g×3, row×3,
col×3, rsqrt(row)×3, rsqrt(col)×3, fac_m×3, then the 11 time features of iteration 0, 1, ...), so θ's MLP weights
are the transposes: ``w0 = input.weight.T`` etc. The learned decay parameters are not in the file: PyLO passes them
as constants (``PYLO_DECAYS``), θ offsets of the initial decays through β = 1 − (1 − β₀)·exp(10θ), which is exactly
how our θ stores them. step_mult 0.01 and exp_mult 0.001 are PyLO's values for it. Reading uses safetensors' numpy
API (no torch).

Downloads go through ``huggingface_hub`` into its cache (``HF_HOME`` / ``HF_HUB_CACHE``): a file already in the
cache is used without any network call; a failed download (offline, unknown repository) is one CheckpointError line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mulo.errors import CheckpointError, one_line
from mulo.optimizers.adafac_mlp import NUM_FEATURES, AdafacHParams, AdafacMLPLO
from mulo.registry import learned_spec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# PyLO's decay parameters of the released μLO_M (AdafacLO_naive's defaults): θ offsets of the initial decays
PYLO_DECAYS = {
    "momentum_decays": (0.15216392, 0.14245212, 0.06812963),
    "rms_decays": (0.01079706,),
    "adafactor_decays": (0.18621896, -0.10864615, -0.06185547),
}
PYLO_STEP_MULT = 0.01
PYLO_EXP_MULT = 0.001

# hub tensor name -> (our θ["nn"] key, transposed?)
LAYOUT = {
    "network.input.weight": ("w0", True), "network.input.bias": ("b0", False),
    "network.linear_0.weight": ("w1", True), "network.linear_0.bias": ("b1", False),
    "network.output.weight": ("w2", True), "network.output.bias": ("b2", False),
}


def _expected_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    """Shapes in the hub file (torch's (out, in) layout) for hidden size ``hidden``."""
    return {"network.input.weight": (hidden, NUM_FEATURES), "network.input.bias": (hidden,),
            "network.linear_0.weight": (hidden, hidden), "network.linear_0.bias": (hidden,),
            "network.output.weight": (2, hidden), "network.output.bias": (2,)}


def hub_hidden_size(config: Any, origin: str) -> int:
    """The hidden size of a hub ``config.json``; any other architecture than MetaMLP(39, H, 1) is refused."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{origin}: {CONFIG_FILE} is not a JSON object")
    want = {"input_size": NUM_FEATURES, "hidden_layers": 1}
    for key, value in want.items():
        if config.get(key) != value:
            raise CheckpointError(f"{origin}: {CONFIG_FILE} has {key}={config.get(key)!r}; the Adafactor-MLP LO "
                                  f"needs MetaMLP(input_size={NUM_FEATURES}, hidden_size=H, hidden_layers=1)")
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise CheckpointError(f"{origin}: {CONFIG_FILE} has hidden_size={hidden!r}; expected a positive integer")
    return hidden


def theta_from_hub(tensors: dict[str, np.ndarray], config: Any, origin: str = "hub model",
                   name: str = "mup_small_fc_mlp") -> tuple[AdafacMLPLO, dict]:
    """(lo, θ) from the hub's tensors and config. A missing, extra or wrongly shaped tensor is one CheckpointError
    line naming it."""
    hidden = hub_hidden_size(config, origin)
    want = _expected_shapes(hidden)
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise CheckpointError(f"{origin}: {WEIGHTS_FILE} lacks {', '.join(missing)} (expected the keys "
                              f"{', '.join(want)})")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise CheckpointError(f"{origin}: {WEIGHTS_FILE} has unexpected tensors {', '.join(extra)}")
    nn = {}
    for key, shape in want.items():
        x = np.asarray(tensors[key])
        if x.shape != shape:
            raise CheckpointError(f"{origin}: {key} has shape {x.shape}, expected {shape} for "
                                  f"MetaMLP({NUM_FEATURES}, {hidden}, 1)")
        if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
            raise CheckpointError(f"{origin}: {key} is not a finite float tensor")
        ours, transpose = LAYOUT[key]
        nn[ours] = np.ascontiguousarray((x.T if transpose else x).astype(np.float32))
    theta = {k: np.asarray(v, np.float32) for k, v in PYLO_DECAYS.items()}
    theta["nn"] = nn
    hp = AdafacHParams(hidden_size=hidden, step_mult=PYLO_STEP_MULT, exp_mult=PYLO_EXP_MULT)
    return learned_spec(name).build(hp, "fused"), theta  # the registered LO of that name (mulo.registry)


def read_hub_folder(folder: str | os.PathLike, origin: str | None = None) -> tuple[AdafacMLPLO, dict]:
    """(lo, θ) from a folder holding ``config.json`` and ``model.safetensors`` (a hub snapshot or a local copy)."""
    origin = origin or str(folder)
    config, tensors = read_hub_files(folder, origin)
    return theta_from_hub(tensors, config, origin)


def read_hub_files(folder: str | os.PathLike, origin: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(config, tensors) of a hub folder (``config.json`` + ``model.safetensors``), every failure one CheckpointError
    line: a missing or unreadable file, a dtype numpy cannot hold (BF16 is read exactly as float32)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    for f in HUB_FILES:
        if not (folder / f).is_file():
            raise CheckpointError(f"{origin}: no {f} in {folder}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{origin}: cannot read {CONFIG_FILE} ({type(e).__name__}: {e})") from None
    unsupported = _unsupported_dtypes(folder / WEIGHTS_FILE)
    if unsupported:
        name, dtype = unsupported[0]
        raise CheckpointError(f"{origin}: {WEIGHTS_FILE} holds {name} as {dtype}; supported dtypes are "
                              f"{', '.join(SUPPORTED_DTYPES)} (BF16 is read as float32)")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE)) if not _has_bf16(folder / WEIGHTS_FILE) \
            else _load_with_bf16(folder / WEIGHTS_FILE)
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{origin}: {WEIGHTS_FILE} is corrupt or unreadable ({type(e).__name__}: "
                              f"{one_line(e)})") from None
    return config, tensors


SUPPORTED_DTYPES = ("F32", "F16", "BF16", "F64")


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file ({} when it cannot be read: safetensors then says what is wrong)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size <= 100_000_000 else {}
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def _unsupported_dtypes(path: Path) -> list[tuple[str, str]]:
    """(tensor, dtype) of every tensor whose dtype is not a float numpy can hold (F8_E4M3, I8, BOOL, ...)."""
    return [(name, str(entry.get("dtype"))) for name, entry in _header(path).items()
            if name != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") not in SUPPORTED_DTYPES]


def _has_bf16(path: Path) -> bool:
    return any(isinstance(e, dict) and e.get("dtype") == "BF16" for e in _header(path).values())


def _load_with_bf16(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a file holding BF16 ones, which numpy has no dtype for: a bfloat16 is the top half of a
    float32, so widening its bits by 16 zero bits is the exact float32 value. safetensors checks the file first."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy"):
        pass  # raises SafetensorError for a malformed header or offsets
    data = path.read_bytes()
    body = data[8 + int.from_bytes(data[:8], "little"):]
    out = {}
    for name, entry in _header(path).items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = body[begin:end]
        if entry["dtype"] == "BF16":
            x = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            x = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[entry["dtype"]])
        out[name] = x.reshape(entry["shape"])
    return out


def parse_repo(spec: str) -> tuple[str, str | None]:
    """``OWNER/NAME`` or ``OWNER/NAME@REVISION`` -> (repo_id, revision or None)."""
    repo, _, revision = spec.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise CheckpointError(f"bad Hugging Face model {spec!r}: expected hf:OWNER/NAME or hf:OWNER/NAME@REVISION")
    return repo, (revision or None)


def check_endpoint(endpoint: str | None) -> None:
    """HF_ENDPOINT must be an http(s) URL with a host and a valid port: huggingface_hub parses it when imported and
    raises ValueError on a bad port or a broken IPv6 host."""
    if endpoint is None:
        return
    from urllib.parse import urlparse

    try:
        url = urlparse(endpoint)
        ok = url.scheme in ("http", "https") and bool(url.hostname)
        url.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as e:
        ok, why = False, f" ({e})"
    else:
        why = ""
    if not ok:
        raise CheckpointError(f"bad HF_ENDPOINT {endpoint[:200]!r}: expected an http(s) URL such as "
                              f"https://huggingface.co{why}")


def reachable(endpoint: str | None = None, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to the hub's host opens within ``timeout`` s, else why not. huggingface_hub itself
    retries a failed connection five times with back-off (~25 s of warnings) before it gives up."""
    import socket
    from urllib.parse import urlparse

    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {url.hostname}:{port}: {e.strerror or e}"
    return None


def download(repo_id: str, revision: str | None = None, *, cache_dir: str | os.PathLike | None = None,
             endpoint: str | None = None, fetch: Callable[..., str] | None = None,
             filenames: tuple[str, ...] = HUB_FILES) -> Path:
    """The local folder holding the hub model's ``filenames`` (``config.json`` and ``model.safetensors``).

    Each file is looked up in the hub cache first (``local_files_only``: no network call when it is there), and
    downloaded otherwise, after a quick check that the hub can be reached at all. ``fetch`` is
    ``huggingface_hub.hf_hub_download`` (tests pass a fake, which skips the reachability check)."""
    probe = fetch is None
    if fetch is None:
        check_endpoint(endpoint if endpoint is not None else os.environ.get("HF_ENDPOINT"))
        from huggingface_hub import hf_hub_download as fetch
    kwargs = dict(revision=revision, cache_dir=None if cache_dir is None else str(cache_dir))
    if endpoint is not None:
        kwargs["endpoint"] = endpoint
    paths = []
    with _quiet_hub():
        for filename in filenames:
            try:
                path = fetch(repo_id, filename, local_files_only=True, **kwargs)
            except Exception:  # not cached (huggingface_hub raises LocalEntryNotFoundError and friends)
                why = reachable(endpoint) if probe else None
                try:
                    if why is not None:
                        raise ConnectionError(why)
                    path = fetch(repo_id, filename, **kwargs)
                except Exception as e:  # offline, unknown repository or file, HTTP error: one line
                    reason = one_line(e, 200)
                    raise CheckpointError(f"cannot download {filename} of {repo_id} from the Hugging Face hub "
                                          f"({type(e).__name__}: {reason}); offline? Connect (or check HF_ENDPOINT, "
                                          f"HF_HUB_OFFLINE), or copy {' and '.join(filenames)} into a folder and "
                                          f"pass that folder as --checkpoint") from None
            paths.append(Path(path))
    folders = {p.parent for p in paths}
    if len(folders) != 1:
        raise CheckpointError(f"the hub cache holds {repo_id}'s files in different folders: {sorted(folders)}")
    return folders.pop()


class _quiet_hub:
    """Silence huggingface_hub's warnings (retries, cache notes) while we call it: failures become one line here."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("huggingface_hub")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


def load_hub(spec: str, **download_kwargs) -> tuple[AdafacMLPLO, dict, Path]:
    """(lo, θ, local folder) of ``OWNER/NAME[@REVISION]`` on the Hugging Face hub (downloaded once, then from the
    cache)."""
    repo_id, revision = parse_repo(spec)
    folder = download(repo_id, revision, **download_kwargs)
    return (*read_hub_folder(folder, origin=f"hf:{spec}"), folder)
