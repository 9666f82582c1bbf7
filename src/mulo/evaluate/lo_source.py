"""Where meta-test's (and coord-check's) optimizer comes from: ``optimizer_source(optimizer, lo, ...)`` of the
config's ``optimizer`` and ``lo`` sections.

* a hand-designed optimizer: built by its registration from the ``optimizer`` section;
* a learned one from ``--checkpoint``: a meta-train run directory, its ``checkpoints/latest``, a step folder or a θ
  file (``resolve_checkpoint``, which reads the layout meta-train writes: ``mulo.layout``), or a named source
  (``hf:OWNER/NAME``, ``pretrained:NAME``, a hub-layout folder: ``mulo.optimizers.sources``);
* or from ``--wandb_checkpoint_id entity/project/run_id``: the run's θ file is downloaded (all wandb access goes
  through ``wandb_api``).

A learned optimizer's hyper-parameters come from its θ file (``load_theta``), never from the command line (the
``lo`` section gives its name and implementation); ``lo_keys`` names the keys they override.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mulo.errors import CheckpointError, ConfigError, MuloError, one_line
from mulo.layout import CHECKPOINTS, LATEST, THETA_DIR, THETA_FINAL, is_theta_step_file


# ---------------------------------------------------------------------------------------------------------------------
# locating a learned optimizer's theta file

# Meta-training writes (mulo.meta.train): <run>/theta/theta_step<N>.<ext> at every save, <run>/theta_final.<ext> at the
# end, and <run>/checkpoints/latest (text: the newest step N of the full orbax state in <run>/checkpoints/<N>/).


def _step_of(path: Path) -> int:
    """The largest integer in a file name (``theta_step500.msgpack`` -> 500); -1 when there is none."""
    digits = "".join(c if c.isdigit() else " " for c in Path(path).name).split()
    return max((int(d) for d in digits), default=-1)


def _is_theta_name(name: str) -> bool:
    low = name.lower()
    return (("theta" in low or "global_step" in low) and not low.startswith(".")
            and not low.endswith((".tmp", ".json", ".lock", ".partial")))


def _theta_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for sub in (folder, folder / THETA_DIR):
        if sub.is_dir():
            found += [p for p in sub.iterdir() if p.is_file() and _is_theta_name(p.name)]
    return found


def _theta_of_step(run: Path, step: int, pointer: Path) -> Path:
    hits = [p for p in _theta_files(run) if is_theta_step_file(p, step)]
    if not hits:
        raise CheckpointError(f"{pointer} points at step {step}, but {run / 'theta'} has no theta_step{step} file")
    return hits[0]


def _run_dir_of(path: Path) -> Path:
    """The meta-train run directory that holds ``path`` (a pointer or step folder inside ``checkpoints/``)."""
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def _follow_pointer(pointer: Path) -> Path:
    """A ``latest`` pointer: a step number (meta-train's checkpoints/latest), a path, or a symlink."""
    if pointer.is_symlink():
        try:
            return pointer.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link, or one that points to itself (a loop)
            raise CheckpointError(f"checkpoint pointer {pointer} is a broken symbolic link (missing target or a "
                                  f"loop): point it at a theta file or pass the run directory") from None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint pointer {pointer}: {exc}") from None
    if not text:
        raise CheckpointError(f"checkpoint pointer {pointer} is empty")
    first = text.splitlines()[0].strip()
    if first.isdigit():
        return _theta_of_step(_run_dir_of(pointer), int(first), pointer)
    target = Path(first)
    return target if target.is_absolute() else pointer.parent / target


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The theta file meant by ``path``. Accepted:

    * a theta file (``save_theta``'s output, e.g. ``<run>/theta_final.*`` or ``<run>/theta/theta_step500.*``);
    * a meta-train run directory: its newest theta file (``theta_final`` or the latest ``theta_step<N>``);
    * a ``latest`` pointer (``<run>/checkpoints/latest`` holding a step number, or a file/symlink naming a path);
    * a ``<run>/checkpoints/`` folder or one of its ``<N>/`` step folders (the theta file of that step).

    Raises ``CheckpointError`` (one line) when nothing usable is found."""
    p = Path(path).expanduser()
    for _ in range(5):
        if not p.exists() and not p.is_symlink():
            raise CheckpointError(f"checkpoint not found: {p}")
        if p.name == LATEST and not p.is_dir():
            p = _follow_pointer(p)
            continue
        if p.is_file():
            return p
        if p.is_dir():
            if p.parent.name == CHECKPOINTS and p.name.isdigit():  # an orbax step folder
                return _theta_of_step(_run_dir_of(p), int(p.name), p)
            if p.name == CHECKPOINTS and (p / LATEST).exists():
                p = p / LATEST
                continue
            files = _theta_files(p)
            if files:  # newest first by modification time; at equal times the final file, then the larger step
                return max(files, key=lambda f: (f.stat().st_mtime, f.stem == THETA_FINAL, _step_of(f)))
            for pointer in (p / LATEST, p / CHECKPOINTS / LATEST):
                if pointer.exists():
                    p = pointer
                    break
            else:
                raise CheckpointError(f"no theta file in {p}: expected a meta-train run directory (theta_final.* or "
                                      f"theta/theta_step<N>.*), its checkpoints/latest, or a theta file")
            continue
        break
    raise CheckpointError(f"cannot resolve checkpoint {path}: expected a theta file, a 'latest' pointer or a "
                          f"meta-train run directory")


# ---------------------------------------------------------------------------------------------------------------------
# wandb: the one place that talks to the wandb public API


def wandb_api() -> Any:
    """The wandb public API object (``wandb.Api``); tests pass a fake with ``run(path).files()`` instead."""
    import wandb

    return wandb.Api(timeout=30)


def fetch_wandb_checkpoint(run_path: str, dest: str | os.PathLike,
                           api_factory: Callable[[], Any] = wandb_api) -> Path:
    """Download the theta file of the wandb run ``entity/project/run_id`` into ``dest``; return its path.

    The run's files whose names look like theta files (``theta`` or ``global_step`` in the name) are candidates;
    ``theta_final.*`` wins, else the one with the largest step number. Any failure (offline, no API key, unknown
    run, no theta file) raises ``CheckpointError`` with one line."""
    parts = run_path.strip().strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"bad value {run_path!r} for config key 'wandb_checkpoint_id': expected "
                          f"entity/project/run_id")
    run_path = "/".join(parts)
    try:
        api = api_factory()
        run = api.run(run_path)
        files = list(run.files())
    except MuloError:
        raise
    except Exception as exc:  # network errors, auth errors, wandb.errors.CommError for unknown runs, ...
        msg = one_line(exc, 200)
        raise CheckpointError(f"cannot fetch wandb run {run_path} ({type(exc).__name__}: {msg}); wandb may be "
                              f"offline or the run unknown: download its theta file and pass --checkpoint PATH"
                              ) from None
    candidates = [f for f in files if _is_theta_name(Path(f.name).name)]
    if not candidates:
        names = ", ".join(sorted(f.name for f in files)[:10]) or "none"
        raise CheckpointError(f"wandb run {run_path} has no theta file (its files: {names})")
    best = max(candidates, key=lambda f: (Path(f.name).stem == THETA_FINAL, _step_of(Path(f.name))))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        best.download(root=str(dest), replace=True)
    except Exception as exc:
        msg = one_line(exc, 200)
        raise CheckpointError(f"cannot download {best.name} from wandb run {run_path} ({type(exc).__name__}: "
                              f"{msg})") from None
    path = dest / best.name
    if not path.is_file():
        raise CheckpointError(f"downloading {best.name} from wandb run {run_path} produced no file at {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# which optimizer


@dataclass(frozen=True)
class OptimizerSource:
    """How to build the optimizer for a task, and what to record about it."""

    name: str  # the hand-designed optimizer's name, or the learned optimizer's from its checkpoint
    make: Callable[[Any], Any]  # task -> Optimizer
    info: dict = field(default_factory=dict)  # checkpoint path, hyper-parameters (JSON-able)
    learned: tuple | None = None  # (lo, theta) for a learned optimizer


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def optimizer_source(optimizer: Mapping[str, Any], lo: Mapping[str, Any], *, num_steps: int,
                     checkpoint: str | None = None, wandb_checkpoint_id: str | None = None,
                     download_dir: str | os.PathLike = "wandb_checkpoints",
                     api_factory: Callable[[], Any] = wandb_api,
                     record: Mapping[str, Any] | None = None) -> OptimizerSource:
    """The optimizer of the config sections ``optimizer`` and ``lo`` (``mulo.registry.SECTIONS``).

    * ``optimizer["name"]`` a hand-designed optimizer: built by its registration from the section's other entries
      over ``num_steps`` steps; ``record`` (e.g. the μP multipliers) is stored beside its hyper-parameters;
    * ``optimizer["name"] == "lo"``: the learned optimizer ``lo["name"]`` in ``lo["impl"]``, its θ and hyper-parameters
      from ``checkpoint`` (a run directory, θ file, ``pretrained:NAME``, ``hf:OWNER/NAME``, ...) or the wandb run
      ``wandb_checkpoint_id`` (its θ file downloaded into ``download_dir``) -- never from the section's other keys."""
    from mulo.registry import LO_CHOICE, component

    name = optimizer["name"]
    if name != LO_CHOICE:
        if checkpoint or wandb_checkpoint_id:
            raise ConfigError(f"optimizer {name!r} is hand-designed and takes no checkpoint: drop "
                              f"--checkpoint/--wandb_checkpoint_id or choose a learned optimizer")
        spec = component("optimizer", name)
        hparams = spec.hparams_of({k: v for k, v in optimizer.items() if k != "name"})
        info = {"hparams": {**dataclasses.asdict(hparams), **dict(record or {})}}
        return OptimizerSource(name=spec.name, make=lambda task: spec.build(hparams, task, num_steps), info=info)

    wanted, impl = lo["name"], ({"impl": lo["impl"]} if lo.get("impl") else {})  # none: the loader's default
    if checkpoint and wandb_checkpoint_id:
        raise ConfigError("give either --checkpoint or --wandb_checkpoint_id, not both")
    if wandb_checkpoint_id:
        path = fetch_wandb_checkpoint(wandb_checkpoint_id, download_dir, api_factory)
    elif checkpoint:
        from mulo.optimizers.sources import is_named

        # hf:OWNER/NAME, pretrained:NAME or a hub-layout folder: mulo.optimizers.sources loads it below
        path = None if is_named(checkpoint) else resolve_checkpoint(checkpoint)
    else:
        raise ConfigError(f"optimizer {wanted!r} is a learned optimizer: pass --checkpoint (a meta-train run "
                          f"directory, its 'latest' or a theta file) or --wandb_checkpoint_id entity/project/run_id")
    from mulo.optimizers import load_theta

    if path is None:
        from mulo.optimizers.sources import load_source

        learned, theta, extra = load_source(checkpoint, **impl)
        path = extra["path"]  # the θ or weights file read
    else:
        learned, theta, extra = load_theta(path, **impl)  # θ brings the hyper-parameters, the section the impl
    if getattr(learned, "name", wanted) != wanted:
        raise CheckpointError(f"checkpoint {path} holds a {learned.name!r} learned optimizer, but the config's lo.name "
                              f"is {wanted!r}")
    info = {"checkpoint": str(Path(path).resolve()), "hparams": _jsonable(getattr(learned, "hparams", {})),
            "checkpoint_extra": _jsonable(extra or {})}
    if wandb_checkpoint_id:
        info["wandb_checkpoint_id"] = wandb_checkpoint_id
    return OptimizerSource(name=learned.name, make=lambda task: learned.opt_fn(theta, task.update_scales), info=info,
                           learned=(learned, theta))


def lo_keys(name: str) -> dict[str, str]:
    """Today's flat config key -> hyper-parameter (``lo`` section key) of the learned optimizer ``name`` (its
    registration's ``config_keys``, ``mulo.registry``): the keys its θ file overrides; {} for a hand-designed one."""
    from mulo.registry import LEARNED_OPTIMIZERS

    spec = LEARNED_OPTIMIZERS.get(name)
    return dict(spec.config_keys) if spec is not None else {}
