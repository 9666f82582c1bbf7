"""The μP coordinate check of a user's model (the CLI's ``coord-check``, for any init/apply pair).

    result = mulo.mup.coord_check(init_fn, apply_fn, widths=(64, 256, 1024), optimizer=make_tx, batch=batch)
    result.plot("coord_check/")          # coord_check.png and coord_check_delta.png, as the CLI draws them
    result.ratios()                      # {(layer, t): mean |x| at the widest / at the narrowest width}

Protocol (microsoft/mup's, as ``mulo.evaluate.coord_check``): at every width a fresh model trains on the one fixed
``batch`` for ``steps`` steps; at t = 1, 2, ... (t = 1 is before any update) every activation ``apply_fn`` returns is
recorded as mean |x_t| and std(x_t - x_1), and every parameter leaf as the RMS of its value and of the update made at
step t. Under μP the activations' curves are flat in width; in the standard parametrisation with Adam they grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from mulo.evaluate.coord_check import activation_stats, l1_table, plot
from mulo.mup.infer import leaf_path


@dataclass(frozen=True)
class CoordCheck:
    """records: the activations, ``{"width", "t", "layer", "l1", "delta_std", "loss"}`` (the CLI's records);
    param_records: ``{"width", "t", "param", "rms", "update_rms"}`` per parameter leaf."""

    records: list
    param_records: list

    def ratios(self, key: str = "l1") -> dict:
        """``{(layer, t): value at the widest width / at the narrowest}`` of the activations."""
        widths = sorted({r["width"] for r in self.records})
        table = {}
        for r in self.records:
            table.setdefault((r["layer"], r["t"]), {})[r["width"]] = r[key]
        return {k: v[widths[-1]] / v[widths[0]] if v[widths[0]] else float("inf") for k, v in table.items()}

    def l1_table(self) -> dict:
        """``{layer: {t: {width: mean |x|}}}``."""
        return l1_table(self.records)

    def plot(self, out_dir: str | Path, title: str = "coordinate check") -> list[Path]:
        """The CLI's two figures in ``out_dir``: mean |x| and std(x_t - x_1) per layer against width."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "coord_check.png", out_dir / "coord_check_delta.png"]
        plot(self.records, paths[0], title)
        plot(self.records, paths[1], title + " (std of x_t - x_1)", key="delta_std")
        return paths


def _rms(x) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(x, jnp.float32))))


def coord_check(init_fn: Callable[[int], Any], apply_fn: Callable[[Any, Any], tuple], widths: Sequence[int],
                optimizer: optax.GradientTransformation | Callable[[int], optax.GradientTransformation],
                batch: Any, steps: int = 3) -> CoordCheck:
    """Coordinate check of the model ``init_fn(width) -> params`` with ``apply_fn(params, batch) -> (loss,
    activations)`` (activations: a dict name -> array), trained on ``batch`` by ``optimizer`` (an optax
    transformation, or ``width -> transformation`` when it depends on the width, as MuAdam's and the μLO's update
    scales do). The μP initialisation and readout multiplier are the model's: ``init_fn`` and ``apply_fn`` decide."""
    if len(set(widths)) < 2:
        raise ValueError(f"a coordinate check needs at least two widths, got {list(widths)}")
    records, param_records = [], []
    for width in sorted(set(widths)):
        params = init_fn(width)
        tx = optimizer if isinstance(optimizer, optax.GradientTransformation) else optimizer(width)
        opt_state = tx.init(params)
        names = [leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]

        @jax.jit
        def step(params, opt_state):
            (loss, acts), grads = jax.value_and_grad(lambda p: apply_fn(p, batch), has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            new = optax.apply_updates(params, updates)
            sizes = [(_rms(p), _rms(n - p)) for p, n in zip(jax.tree.leaves(params), jax.tree.leaves(new))]
            return new, opt_state, loss, acts, sizes

        acts0 = None
        for t in range(1, steps + 1):
            params, opt_state, loss, acts, sizes = step(params, opt_state)
            acts0 = acts if acts0 is None else acts0
            stats = jax.device_get(activation_stats(acts, acts0))
            for layer, (l1, dstd) in stats.items():
                records.append({"width": width, "t": t, "layer": layer, "l1": float(l1), "delta_std": float(dstd),
                                "loss": float(loss)})
            for name, (rms, upd) in zip(names, jax.device_get(sizes)):
                param_records.append({"width": width, "t": t, "param": name, "rms": float(rms),
                                      "update_rms": float(upd)})
    return CoordCheck(records=records, param_records=param_records)
