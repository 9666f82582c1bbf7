"""Meta-training checkpoints (orbax-checkpoint).

Layout of ``<run_dir>/checkpoints/``:

* ``<step>/``: one orbax checkpoint of the *full* training state (θ, outer optimizer state, every estimator's inner
  states and PES accumulators, the skipped-step counter). Orbax writes it to a temporary directory and renames it when
  complete, so a crash mid-save leaves the previous checkpoints intact and no half-written step is ever restored.
  Everything else a resumed run needs is a pure function of (seed, step): the PRNG keys and the data stream position.
* ``latest``: text, the newest step (written atomically after each save; orbax's own step list is authoritative).
* ``identity.json``: what must match for a resume (tasks, LO, estimator, shapes); a mismatch is a CheckpointError.
* ``<step>/sha256.json``: the sha256 of every file of the step, written after the save completes and checked before
  a restore reads anything, so bytes damaged in place (same size, still decodable) are found: such a checkpoint is
  treated like any corrupt one. Checkpoints written before this file existed load without the check.

The oldest checkpoints beyond ``checkpoints_to_keep`` are deleted after a *successful* save only; restoring never
deletes anything, so a corrupt newest checkpoint leaves the older ones in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import jax

from mulo.errors import CheckpointError, one_line
from mulo.io import atomic_write_json, atomic_write_text
from mulo.parallel import is_main_process


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read (an older one may still be)."""


CHECKSUMS = "sha256.json"


@contextmanager
def _quiet_absl():
    """orbax logs its failures through absl as WARNING/ERROR lines, and a failed read leaves coroutines whose
    exceptions Python prints as "Exception ignored in ..." when they are collected; the CheckpointError says it in
    one line."""
    import gc
    import logging

    from absl import logging as absl_logging

    aio = logging.getLogger("asyncio")  # "Future exception was never retrieved" of a failed write's other tasks
    old, hook, aio_level = absl_logging.get_verbosity(), sys.unraisablehook, aio.level
    absl_logging.set_verbosity(absl_logging.FATAL)
    aio.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    except BaseException:
        gc.collect()  # a failure's abandoned coroutines and futures go now, while their exceptions are not printed
        raise
    finally:
        sys.unraisablehook = hook
        aio.setLevel(aio_level)
        absl_logging.set_verbosity(old)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksums(step_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a checkpoint step but the checksum file itself."""
    return {str(p.relative_to(step_dir)): _digest(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}


def damaged_file(step_dir: Path) -> str | None:
    """Why the step's files do not match its ``sha256.json`` (None when they do, or when it has none: a checkpoint
    from before checksums)."""
    path = step_dir / CHECKSUMS
    if not path.exists():
        return None
    try:
        want = json.loads(path.read_text(encoding="utf-8"))
        items = list(want.items())
    except (OSError, ValueError, AttributeError):
        return f"its {CHECKSUMS} is unreadable"
    for name, digest in items:
        try:
            if _digest(step_dir / name) != digest:
                return f"{name} does not match its sha256"
        except OSError:
            return f"{name} is missing"
    return None


def _save_reason(exc: BaseException) -> str:
    """Why a save failed, short: a full disk is said as such (orbax reports it inside a long TensorStore error)."""
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in text or "os_error_code='28'" in text:
        return "no space left on device"
    return one_line(exc)


def _pack(state: Any) -> dict:
    """The state as a flat {index: array} dict without zero-size arrays (orbax cannot store those; e.g. the LO's
    factored accumulators of a bias). The tree structure comes back from the template at restore."""
    return {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(state)) if x.size > 0}


def _unpack(template: Any, packed: dict) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(treedef, [packed.get(f"{i:05d}", x) if x.size > 0 else x
                                        for i, x in enumerate(leaves)])


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int, identity: Mapping[str, Any] | None = None):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).resolve()
        self.identity = json.loads(json.dumps(dict(identity or {}), default=str))
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        try:
            with _quiet_absl():  # it reads every step's metadata; a damaged one is said once, at restore
                self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                      item_handlers=ocp.StandardCheckpointHandler())
        except Exception as exc:  # noqa: BLE001 - orbax raises many kinds
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {one_line(exc)}") from None

    # ---- queries ------------------------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        with _quiet_absl():
            self._manager.reload()
            return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    # ---- identity -----------------------------------------------------------------------------------------------

    def check_identity(self) -> None:
        path = self.directory / "identity.json"
        if not path.is_file():
            raise CheckpointError(f"checkpoint directory {self.directory} has no identity.json: not a mulo "
                                  f"meta-training checkpoint")
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"corrupt {path}: {one_line(exc)}") from None
        saved.setdefault("num_processes", 1)  # checkpoints from before multi-process runs
        procs = saved.get("num_processes"), self.identity.get("num_processes", saved["num_processes"])
        if procs[0] != procs[1]:
            raise CheckpointError(f"checkpoint in {self.directory} was written by {procs[0]} process(es) and this run "
                                  f"has {procs[1]}: resume it with {procs[0]} process(es)")
        diff = sorted(k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k))
        if diff:
            shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs run {self.identity.get(k)!r}" for k in diff[:3])
            raise CheckpointError(f"checkpoint in {self.directory} does not match this run ({shown}); use another "
                                  f"output_dir or name_suffix, or the original settings")

    # ---- save / restore -----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any) -> None:
        """Save (blocking) and then move the ``latest`` pointer; a failure raises CheckpointError. Every process of
        a multi-process run calls it (orbax writes each process's shards and syncs); only process 0 writes the
        identity and the pointer."""
        main = is_main_process()
        if main:
            atomic_write_json(self.directory / "identity.json", self.identity)
        existed = (self.directory / str(int(step))).exists()  # a step already there is never removed below
        try:
            with _quiet_absl():  # a failed write is logged by orbax's writer thread with its traceback
                self._manager.save(int(step), args=self._ocp.args.StandardSave(_pack(state)), force=True)
                self._manager.wait_until_finished()
            if main:  # a step without its checksums is incomplete: a failure here removes it like a failed save
                where = self.directory / str(int(step))
                atomic_write_json(where / CHECKSUMS, file_checksums(where))
        except Exception as exc:  # noqa: BLE001
            removed = self._remove_partial(int(step), existed) if main else False
            kept = [s for s in self.steps() if s != int(step)]
            what = ("; the partial checkpoint was removed" if removed else "") + \
                (f", checkpoints up to step {kept[-1]} are kept" if kept else "")
            raise CheckpointError(f"cannot save checkpoint {step} in {self.directory}: {_save_reason(exc)}{what}"
                                  ) from None
        if main:
            atomic_write_text(self.directory / "latest", f"{int(step)}\n")

    def _remove_partial(self, step: int, existed: bool) -> bool:
        """Remove what a failed save of ``step`` left (orbax's ``<step>.orbax-checkpoint-tmp*`` directory, or a
        ``<step>`` directory it created without its checksums); older checkpoints are not touched."""
        import shutil

        partial = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        made = self.directory / str(step)
        if not existed and made.is_dir() and not (made / CHECKSUMS).exists():
            partial.append(made)
        for p in partial:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        with _quiet_absl():
            self._manager.reload()
        return bool(partial)

    def restore(self, template: Any, step: int | None = None) -> tuple[int, Any]:
        """(step, state) of ``step``, shaped like ``template``. Without ``step``: the newest *loadable* checkpoint;
        newer ones that are corrupt or incomplete are said in one warning line each and moved aside
        (``corrupt-<step>-<time>``, never deleted), so the run continues from the one before and later saves do not
        collide with them. A checkpoint of another run (arrays of other shapes) is an error, not a fallback."""
        self.check_identity()
        if step is not None:
            return int(step), self._restore_step(template, int(step))
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        first: CorruptCheckpoint | None = None
        for s in reversed(steps):
            try:
                state = self._restore_step(template, s)
            except CorruptCheckpoint as exc:
                first = first or exc
                continue
            if first is not None:
                newer = [t for t in steps if t > s]
                print(f"warning: {first}; resuming from step {s}, the newest loadable checkpoint (the corrupt "
                      f"{'ones are' if len(newer) > 1 else 'one is'} kept as corrupt-<step>-<time>)", file=sys.stderr)
                self._move_aside(newer)
            return s, state
        raise CheckpointError(f"no loadable checkpoint in {self.directory} (all {len(steps)} corrupt; newest: "
                              f"{first})")

    def _move_aside(self, steps: list[int]) -> None:
        if not is_main_process():
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for s in steps:
            src = self.directory / str(s)
            if src.exists():
                os.replace(src, self.directory / f"corrupt-{s}-{stamp}")
        with _quiet_absl():
            self._manager.reload()

    def _restore_step(self, template: Any, step: int) -> Any:
        packed = _pack(template)
        where = self.directory / str(step)
        damage = damaged_file(where)
        if damage is not None:  # found before orbax reads a damaged byte
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt: {damage}")
        try:
            with _quiet_absl():
                stored = self._manager.item_metadata(step)
            stored = dict(getattr(stored, "tree", stored) or {})
        except Exception as exc:  # noqa: BLE001
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt or incomplete: {one_line(exc)}") from None
        if packed and not stored:  # the array metadata is gone: a damaged checkpoint, not another run's
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt or incomplete: its array metadata is missing")
        bad = [k for k in set(stored) | set(packed) if k not in stored or k not in packed
               or tuple(getattr(stored[k], "shape", ())) != tuple(packed[k].shape)]
        if bad:
            raise CheckpointError(f"checkpoint {where} does not match this run: {len(bad)} of {len(packed)} arrays "
                                  f"differ in presence or shape (other task, LO or num_tasks?)")
        abstract = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                    for k, x in packed.items()}  # restored straight into the template's (sharded) layout
        try:
            with _quiet_absl():
                restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        except Exception as exc:  # noqa: BLE001
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt or incomplete: {one_line(exc)}") from None
        return _unpack(template, restored)

    def close(self) -> None:
        self._manager.close()
