"""How fast could an exact learned-optimizer step be on this machine? A lower bound from arithmetic.

    python scripts/bench.py bound [--width 1024] [--batch 128] [--repeats 10]

Measures (1) the fastest rate at which this machine multiplies float32 matrices (a large square GEMM through XLA,
the best case for any kernel), (2) the Adam training step of muMLP depth 3 at the given width and batch, and
(3) counts the multiply-adds the per-parameter MLP of ``mup_small_fc_mlp`` (H = 32) cannot avoid. Even if the LO's
multiply-adds ran at the GEMM rate and everything else in it were free, its step would take at least
``adam_ms + flops_lo / gemm_rate``; the printed ratio to Adam is therefore a lower bound for any exact implementation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_optimizers import _machine, bench_one

HIDDEN = 32
# multiply-adds per parameter of the fused LO for a matrix: 16 per-element features into layer 1, then H x H, then
# H x 2; only layers 2 and 3 are counted as unavoidable (layer 1 needs at least one multiply-add per input feature)
MACS_COMPUTED = 16 * HIDDEN + HIDDEN * HIDDEN + HIDDEN * 2
MACS_UNAVOIDABLE = HIDDEN * HIDDEN + HIDDEN * 2


def gemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py bound", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    rate = gemm_gflops(repeats=args.repeats)
    adam = bench_one(args.width, args.batch, "adam", "fused", args.repeats)
    n = adam["params"]
    print(f"machine: {_machine()}, jax {jax.__version__}")
    print(f"float32 GEMM (2048^3, best of {args.repeats}): {rate:.0f} GFLOP/s")
    print(f"adam step, muMLP w{args.width} d3, batch {args.batch}, {n:,} params: {adam['mean_ms']:.1f} ms "
          f"({6 * args.batch * n / adam['mean_ms'] / 1e6:.0f} GFLOP/s for ~6*batch*params)")
    for label, macs in (("computed by the fused LO", MACS_COMPUTED), ("unavoidable (layers 2-3)", MACS_UNAVOIDABLE)):
        flops = 2 * macs * n
        lo_ms = flops / (rate * 1e9) * 1e3
        bound = (adam["mean_ms"] + lo_ms) / adam["mean_ms"]
        print(f"LO multiply-adds {label}: {macs}/param = {flops / 1e9:.1f} GFLOP -> >= {lo_ms:.0f} ms at the GEMM rate"
              f" -> muLO step >= {bound:.2f}x Adam")
    return 0


if __name__ == "__main__":
    sys.exit(main())
