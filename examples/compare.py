"""What both examples do with a model: μP from mulo.mup, then the shipped μLO against MuAdam tuned at the narrowest
width, at every width, on the same batches.

    model(width) -> (init_fn(width) -> params, loss_fn(params, batch) -> loss, overrides)

For every width: ``mup.infer`` gives the metadata, ``mup.mup_init`` the μP initialisation and ``mup.update_scales`` the
scales both optimizers take. MuAdam's learning rate is the best of ``muadam_lrs`` at the narrowest width (final train
loss), then used unchanged at every width, as the μLO paper's baselines.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import optax

import mulo.mup as mup
from mulo.optimizers import as_optax, sources
from mulo.optimizers.muadam import muadam_transform

LO = "pretrained:cpu_mulo_m_fmnist"


def arguments(doc: str, widths: str, steps: int, batch: int, lrs: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--widths", default=widths, help="comma-separated widths (default %(default)s)")
    p.add_argument("--steps", type=int, default=steps, help="training steps per run (default %(default)s)")
    p.add_argument("--batch", type=int, default=batch, help="batch size (default %(default)s)")
    p.add_argument("--muadam_lrs", default=lrs, help="MuAdam learning rates swept at the narrowest width")
    p.add_argument("--lo_impl", default="fused", choices=("fused", "reference"),
                   help="how the μLO computes (the same function; reference compiles faster on small models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    args.widths = sorted(int(w) for w in args.widths.split(","))
    args.muadam_lrs = [float(x) for x in args.muadam_lrs.split(",")]
    if args.steps < 1 or args.batch < 1 or len(args.widths) < 1:
        p.error("steps, batch and widths must be positive")
    return args


def train(loss_fn: Callable, params: Any, tx: optax.GradientTransformation, batches: Iterator[dict],
          steps: int) -> tuple[Any, np.ndarray]:
    """``steps`` jitted optax steps; returns the final params and the per-step train losses."""
    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)  # the μLO reads the params
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for _, batch in zip(range(steps), batches):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
    return params, np.asarray(jax.device_get(losses), np.float64)


def final(losses: np.ndarray) -> float:
    """Mean train loss over the last 5% of steps (at least one); inf if any step diverged."""
    tail = losses[-max(1, math.ceil(0.05 * len(losses))):]
    return float(np.mean(tail)) if np.all(np.isfinite(losses)) else float("inf")


def compare(args: argparse.Namespace, model: Callable, batches: Callable[[int], Iterator[dict]],
            evaluate: Callable[[Callable, Any], dict]) -> dict:
    """Sweep MuAdam at the narrowest width, then the μLO and the chosen MuAdam at every width. ``batches(seed)``:
    the train batches; ``evaluate(loss_fn, params)``: held-out metrics."""
    init_fn, loss_fn, overrides = model
    setups = {}
    for width in args.widths:
        meta = mup.infer(init_fn, width, overrides=overrides)
        params = mup.mup_init(init_fn(width), meta, jax.random.key(args.seed))
        setups[width] = (meta, params, mup.update_scales(meta))
        print(f"width {width}: {sum(np.size(p) for p in jax.tree.leaves(params)):,} params; μP inferred:")
        print("\n".join("  " + line for line in mup.describe(meta)) if width == args.widths[0] else "  (as above)")
    narrow = args.widths[0]
    sweep = {}
    for lr in args.muadam_lrs:
        _, losses = train(loss_fn, setups[narrow][1], muadam_transform(lr, setups[narrow][2]),
                          batches(args.seed), args.steps)
        sweep[lr] = final(losses)
        print(f"MuAdam lr {lr:g} at width {narrow}: final train loss {sweep[lr]:.4f}")
    best_lr = min(sweep, key=sweep.get)
    lo = sources.load_source(LO, impl=args.lo_impl)[:2]
    results = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "widths": args.widths,
               "muadam_sweep": {str(k): v for k, v in sweep.items()}, "muadam_lr": best_lr, "runs": []}
    for width in args.widths:
        meta, params, scales = setups[width]
        for name, tx in (("μLO " + LO, as_optax(lo, update_scales=scales, num_steps=args.steps)),
                         (f"MuAdam lr {best_lr:g}", muadam_transform(best_lr, scales))):
            start = time.perf_counter()
            trained, losses = train(loss_fn, params, tx, batches(args.seed), args.steps)
            row = {"width": width, "optimizer": name, "final_train_loss": final(losses),
                   "seconds": round(time.perf_counter() - start, 1), **evaluate(loss_fn, trained)}
            results["runs"].append(row)
            print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results
