"""muP coordinate check: per-layer activation size versus width over the first training steps (the command:
``mulo.app.commands.coord_check``).

    python src/main.py coord-check --config config/coord_check/mumlp_fashionmnist.py [--widths 64,256,1024 ...]

Protocol of microsoft/mup's ``get_coord_data``: for each width (the width of config key ``task`` replaced by each
of ``widths``), a fresh model (init from ``seed``) trains on ONE fixed batch (``local_batch_size`` examples of the
train split, the same batch at every width) for ``coord_steps`` steps with ``optimizer`` (hand-designed at
``learning_rate``; a learned one from ``checkpoint`` or ``wandb_checkpoint_id``, as in meta-test). At step t = 1, 2, ... (t = 1 is before any update) it records, for every layer output of ``task.activations`` (eval
mode), the mean |x_t| and the std of x_t - x_1 (the change since init). Under correct muP the curves are flat in
width; under SP with Adam they blow up after one step.

Writes ``coord_check.json``, ``coord_check.png`` (one panel per layer, x = width, log scales, one line per step) and
``coord_check_delta.png`` (the same for std(x_t - x_1)) into the run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mulo.io import atomic_write_bytes


def activation_stats(acts: dict, acts0: dict) -> dict[str, tuple[float, float]]:
    """Per layer, the mean |x_t| and the std of x_t - x_1 (``acts0``: the activations at t = 1)."""
    return {k: (jnp.mean(jnp.abs(v)), jnp.std(v - acts0[k])) for k, v in acts.items()}


def coord_data(tasks: Sequence[Any], make_optimizer: Callable[[Any], Any], steps: int, batch_size: int,
               seed: int = 0) -> list[dict]:
    """Records ``{"width", "task", "t", "layer", "l1", "delta_std", "loss"}`` for every task, step and layer.

    ``make_optimizer(task) -> Optimizer`` (``mulo.optimizers.base.Optimizer``), so learned optimizers plug in the same
    way. All tasks must share a dataset; they all see the same fixed batch.
    """
    records = []
    for task in tasks:
        batch = next(task.dataset.batches("train", (batch_size,), seed))
        batch = jax.tree.map(jnp.asarray, batch)
        init_key, run_key = jax.random.split(jax.random.key(seed))
        params = task.init(init_key)
        opt = make_optimizer(task)
        state = opt.init(params, steps)

        acts_fn = jax.jit(task.activations)
        stats_fn = jax.jit(activation_stats)

        @jax.jit
        def step(state, key):
            loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, key)
            return opt.update(state, grads, loss, key), loss

        acts0 = acts_fn(params, batch)
        width = task.spec.width
        for t in range(1, steps + 1):
            acts = acts_fn(opt.params(state), batch)
            stats = jax.device_get(stats_fn(acts, acts0))
            state, loss = step(state, jax.random.fold_in(run_key, t))
            loss = float(loss)
            for layer, (l1, dstd) in stats.items():
                records.append({"task": task.name, "width": width, "t": t, "layer": layer, "l1": float(l1),
                                "delta_std": float(dstd), "loss": loss})
    return records


def l1_table(records: list[dict]) -> dict[str, dict[int, dict[int, float]]]:
    """``{layer: {t: {width: l1}}}``."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for r in records:
        out.setdefault(r["layer"], {}).setdefault(r["t"], {})[r["width"]] = r["l1"]
    return out


def plot(records: list[dict], path: Path, title: str, key: str = "l1") -> None:
    """One panel per layer: x = width, y = ``key``, log-log, one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in records))
    steps = sorted({r["t"] for r in records if key == "l1" or r["t"] > 1})  # x_1 - x_1 = 0
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        for t in steps:
            pts = sorted((r["width"], r[key]) for r in records if r["layer"] == layer and r["t"] == t)
            xs, ys = zip(*pts)
            ys = [max(y, 1e-12) for y in ys]
            ax.plot(xs, ys, marker="o", label=f"t={t}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("width")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("mean |x|" if key == "l1" else key)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def train_losses(task: Any, optimizer: Any, steps: int, batch_size: int, seed: int = 0,
                 num_inits: int = 1) -> np.ndarray:
    """Per-step training losses, shape (num_inits, steps), of ``task`` under ``optimizer`` (for "wider is better").

    The ``steps`` train batches come from ``seed`` and are shared by all ``num_inits`` initialisations (keys split from
    ``seed``), which run in parallel under ``vmap`` inside one jitted ``lax.scan``. Meant for small checks: all the
    batches are materialised at once.
    """
    data = jax.tree.map(jnp.asarray, next(task.dataset.batches("train", (steps, batch_size), seed)))
    init_keys = jax.random.split(jax.random.key(seed), num_inits)

    def one_run(init_key):
        state = optimizer.init(task.init(init_key), steps)
        keys = jax.random.split(jax.random.fold_in(init_key, 1), steps)

        def body(state, inputs):
            batch, key = inputs
            loss, grads = jax.value_and_grad(task.loss)(optimizer.params(state), batch, key)
            return optimizer.update(state, grads, loss, key), loss

        return jax.lax.scan(body, state, (data, keys))[1]

    return np.asarray(jax.jit(jax.vmap(one_run))(init_keys), np.float64)
