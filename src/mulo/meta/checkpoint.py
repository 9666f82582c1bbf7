"""Meta-training checkpoints (orbax-checkpoint).

Layout of ``<run_dir>/checkpoints/``:

* ``<step>/``: one orbax checkpoint of the *full* training state (θ, outer optimizer state, every estimator's inner
  states and PES accumulators, the skipped-step counter). Orbax writes it to a temporary directory and renames it when
  complete, so a crash mid-save leaves the previous checkpoints intact and no half-written step is ever restored.
  Everything else a resumed run needs is a pure function of (seed, step): the PRNG keys and the data stream position.
* ``latest``: text, the newest step (written atomically after each save; orbax's own step list is authoritative).
* ``identity.json``: what must match for a resume (tasks, LO, estimator, shapes); a mismatch is a CheckpointError.

The oldest checkpoints beyond ``checkpoints_to_keep`` are deleted after a *successful* save only; restoring never
deletes anything, so a corrupt newest checkpoint leaves the older ones in place.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import jax

from mulo.errors import CheckpointError
from mulo.io import atomic_write_json, atomic_write_text
from mulo.parallel import is_main_process


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read (an older one may still be)."""


@contextmanager
def _quiet_absl():
    """orbax logs its failures through absl as WARNING/ERROR lines; the CheckpointError says it in one line."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text


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
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_handlers=ocp.StandardCheckpointHandler())
        except Exception as exc:  # noqa: BLE001 - orbax raises many kinds
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_one_line(exc)}") from None

    # ---- queries ------------------------------------------------------------------------------------------------

    def steps(self) -> list[int]:
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
            raise CheckpointError(f"corrupt {path}: {_one_line(exc)}") from None
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
        try:
            self._manager.save(int(step), args=self._ocp.args.StandardSave(_pack(state)), force=True)
            self._manager.wait_until_finished()
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot save checkpoint {step} in {self.directory}: {_one_line(exc)}") from None
        if main:
            atomic_write_text(self.directory / "latest", f"{int(step)}\n")

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
        self._manager.reload()

    def _restore_step(self, template: Any, step: int) -> Any:
        packed = _pack(template)
        where = self.directory / str(step)
        try:
            with _quiet_absl():
                stored = self._manager.item_metadata(step)
            stored = dict(getattr(stored, "tree", stored) or {})
        except Exception as exc:  # noqa: BLE001
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt or incomplete: {_one_line(exc)}") from None
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
            raise CorruptCheckpoint(f"checkpoint {where} is corrupt or incomplete: {_one_line(exc)}") from None
        return _unpack(template, restored)

    def close(self) -> None:
        self._manager.close()
