"""The learned optimizers' per-parameter features and accumulators: one module for every implementation.

The plain (``reference``) and fused paths of the Adafactor-MLP LO (``adafac_mlp``), its Pallas kernel
(``adafac_pallas``) and later LOs compute their inputs from these pieces, so the paths cannot drift apart:

* accumulators (``Acc``, ``init_acc``, ``update_acc``): momenta, RMS and Adafactor row/column (or, for vectors and
  scalars, "diagonal") second moments of the gradient, one array per decay, no bias correction (the reference's);
* ``features_reference``: the 28 second-moment-normalised features plus 11 tanh time features of every element,
  stacked on a trailing axis, in the reference's order (reference_design.md §1.1);
* the fused path's view of the same features (``fused_inputs``: products kept as factors, row/column features on
  their small shapes), their per-tensor mean squares in one pass (``mean_squares``) and the first-layer weights with
  the normalisers folded in (``effective_weights``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
NUM_NORMALISED_FEATURES = 28
NUM_FEATURES = NUM_NORMALISED_FEATURES + len(TIMESCALES)  # 39
NORM_EPS = 1e-5  # ε of the per-tensor second-moment normaliser x / sqrt(ε + mean(x²)), as the reference


def factored_dims(shape: Sequence[int]) -> tuple[int, int] | None:
    """(d1, d0): d0 the largest axis, d1 the second largest (numpy argsort order, as the reference); None if rank < 2."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    return int(order[-2]), int(order[-1])


def decay_from_param(initial: Sequence[float], theta_decay: jax.Array) -> jax.Array:
    """β = 1 − (1 − β₀)·exp(10·θ): θ = 0 gives the initial decay β₀."""
    return 1.0 - (1.0 - jnp.asarray(initial, jnp.float32)) * jnp.exp(10.0 * theta_decay)


def norm_eps(shape: Sequence[int], eps_scaling: str) -> float:
    """ε of the second-moment normaliser for a tensor of ``shape``: NORM_EPS, or NORM_EPS / fan_in with
    ``eps_scaling="fan_in"``, where fan_in is ``shape[0]`` for tensors of rank >= 2 (the (in, out) layout of haiku
    and flax kernels; mulo.tasks' μP metadata uses the same rule) and 1 for vectors and scalars."""
    if eps_scaling == "none" or len(shape) < 2:
        return NORM_EPS
    return NORM_EPS / int(shape[0])


def time_features(iteration: jax.Array) -> jax.Array:
    """tanh(t/τ − 1) for the 11 timescales τ (shape (11,))."""
    return jnp.tanh(jnp.asarray(iteration, jnp.float32) / jnp.asarray(TIMESCALES, jnp.float32) - 1.0)


def safe_rsqrt(x):
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


class Acc(NamedTuple):
    """Accumulators of one tensor, one array per decay (tuples); unused Adafactor entries are empty tuples."""

    m: tuple
    v: tuple
    row: tuple
    col: tuple
    diag: tuple


def init_acc(p: jax.Array, num_momentum: int, num_rms: int, num_adafactor: int) -> Acc:
    """Zero accumulators of one tensor (scalars as rank 1): momenta and RMS of its shape, Adafactor row/column
    factors for rank >= 2, a full-shape "diagonal" one otherwise."""
    shape = p.shape if p.ndim else (1,)
    zeros = lambda n, s: tuple(jnp.zeros(s, jnp.float32) for _ in range(n))
    k_f = num_adafactor
    dims = factored_dims(shape)
    if dims is None:
        row, col, diag = (), (), zeros(k_f, shape)
    else:
        d1, d0 = dims
        row, col, diag = zeros(k_f, tuple(np.delete(shape, d0))), zeros(k_f, tuple(np.delete(shape, d1))), ()
    return Acc(zeros(num_momentum, shape), zeros(num_rms, shape), row, col, diag)


def update_acc(acc: Acc, g: jax.Array, b_m, b_v, b_f) -> Acc:
    """New accumulators (no bias correction, as the reference). ``g`` has rank >= 1."""
    ema = lambda b, old, new: b * old + (1.0 - b) * new
    m = tuple(ema(b_m[i], x, g) for i, x in enumerate(acc.m))
    b_v, b_f = jnp.clip(b_v, 0.0, 1.0), jnp.clip(b_f, 0.0, 1.0)
    gsq = jnp.square(g)
    v = tuple(ema(b_v[i], x, gsq) for i, x in enumerate(acc.v))
    gsq = gsq + 1e-30
    dims = factored_dims(g.shape)
    if dims is None:
        return Acc(m, v, (), (), tuple(ema(b_f[i], x, gsq) for i, x in enumerate(acc.diag)))
    d1, d0 = dims
    row_new, col_new = jnp.mean(gsq, axis=d0), jnp.mean(gsq, axis=d1)
    row = tuple(ema(b_f[i], x, row_new) for i, x in enumerate(acc.row))
    col = tuple(ema(b_f[i], x, col_new) for i, x in enumerate(acc.col))
    return Acc(m, v, row, col, ())


def row_col_factors(row, col, d1, d0):
    """Adafactor factors of one decay, r = safe_rsqrt(v_row / mean(v_row)) and c = safe_rsqrt(v_col), expanded to
    broadcast against p. As the reference, the mean of v_row is over its (reduced) d1 axis."""
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    r = safe_rsqrt(row / (jnp.mean(row, axis=reduced_d1, keepdims=True) + 1e-9))
    return jnp.expand_dims(r, d0), jnp.expand_dims(safe_rsqrt(col), d1)


def factored_stacks(shape, acc: Acc) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(r·c, row, col) of a factored tensor, one column per Adafactor decay, broadcast to (*shape, k): the
    Adafactor normaliser of each element and the row / column second moments it comes from."""
    d1, d0 = factored_dims(shape)
    stack_last = lambda xs: jnp.stack(xs, axis=-1)
    rcs = [row_col_factors(r, c, d1, d0) for r, c in zip(acc.row, acc.col)]
    rc = stack_last([jnp.broadcast_to(r * c, shape) for r, c in rcs])
    row = stack_last([jnp.broadcast_to(jnp.expand_dims(r, d0), shape) for r in acc.row])
    col = stack_last([jnp.broadcast_to(jnp.expand_dims(c, d1), shape) for c in acc.col])
    return rc, row, col


def features_reference(p: jax.Array, g: jax.Array, acc: Acc, iteration: jax.Array,
                       eps: float = NORM_EPS) -> jax.Array:
    """The 39 LO inputs of every element, stacked on a trailing axis: shape (*p.shape, 39), in the reference's order.
    ``acc`` holds the accumulators already updated with ``g``; p and g have rank >= 1; ``eps``: the normaliser's ε."""
    stack_last = lambda xs: jnp.stack(xs, axis=-1)
    m, v = stack_last(acc.m), stack_last(acc.v)
    feats = [g[..., None], p[..., None], m, v]
    rs = jax.lax.rsqrt(v + 1e-6)
    feats += [m * rs, rs]
    if factored_dims(p.shape) is not None:
        rc, row_t, col_t = factored_stacks(p.shape, acc)
        feats += [g[..., None] * rc, row_t, col_t, jax.lax.rsqrt(row_t + 1e-8), jax.lax.rsqrt(col_t + 1e-8), m * rc]
    else:
        diag = stack_last(acc.diag)
        fac_g = g[..., None] * safe_rsqrt(diag + 1e-9)
        feats += [fac_g, diag, diag, jax.lax.rsqrt(diag + 1e-8), jax.lax.rsqrt(diag + 1e-8),
                  m * (diag + 1e-6) ** -0.5]
    stack = jnp.concatenate(feats, axis=-1)
    axes = tuple(range(p.ndim))
    stack = stack * jax.lax.rsqrt(eps + jnp.mean(jnp.square(stack), axis=axes, keepdims=True))
    tf = jnp.broadcast_to(time_features(iteration), p.shape + (len(TIMESCALES),))
    return jnp.concatenate([stack, tf], axis=-1)


def fused_inputs(p, g, acc, diag_mom_eps: float = 1e-6):
    """The LO's normalised-feature inputs for the fused path, grouped by shape.

    Returns (full, small): ``full`` is a list of (factors, [rows of w0]) where the feature is the product of the
    factors (arrays broadcastable to p's shape, at least one of full shape); ``small`` a list of (array of a factored
    shape, broadcastable to p's shape, [rows of w0]). A feature that appears twice in the reference stack (v_diag and
    rsqrt(v_diag) for unfactored tensors) appears once with both rows. Products are kept as factors so that the
    normaliser's reduction and the MLP loop each compute them in their own fused loop, instead of XLA writing every
    product feature to memory to share it. ``diag_mom_eps``: ε of an unfactored tensor's m·(v_diag + ε)^-0.5 (the
    Adafactor-MLP LO's 1e-6; VeLO's HyperV2 has none).
    """
    m, v = acc.m, acc.v[0]
    rs = jax.lax.rsqrt(v + 1e-6)
    full = [((g,), [0]), ((p,), [1])]
    full += [((m[i],), [2 + i]) for i in range(3)] + [((v,), [5])]
    full += [((m[i], rs), [6 + i]) for i in range(3)] + [((rs,), [9])]
    small = []
    dims = factored_dims(p.shape)
    if dims is not None:
        d1, d0 = dims
        rcs = [row_col_factors(r, c, d1, d0) for r, c in zip(acc.row, acc.col)]
        full += [((g, r, c), [10 + i]) for i, (r, c) in enumerate(rcs)]
        full += [((m[i], r, c), [25 + i]) for i, (r, c) in enumerate(rcs)]
        for i in range(3):
            row_i = jnp.expand_dims(acc.row[i], d0)
            col_i = jnp.expand_dims(acc.col[i], d1)
            small += [(row_i, [13 + i]), (col_i, [16 + i]),
                      (jax.lax.rsqrt(row_i + 1e-8), [19 + i]), (jax.lax.rsqrt(col_i + 1e-8), [22 + i])]
    else:
        diag = acc.diag
        full += [((g, safe_rsqrt(diag[i] + 1e-9)), [10 + i]) for i in range(3)]
        # the reference feeds v_diag twice and rsqrt(v_diag) twice: same values, same normaliser -> add the weights
        full += [((diag[i],), [13 + i, 16 + i]) for i in range(3)]
        full += [((jax.lax.rsqrt(diag[i] + 1e-8),), [19 + i, 22 + i]) for i in range(3)]
        full += [((m[i], (diag[i] + diag_mom_eps) ** -0.5), [25 + i]) for i in range(3)]
    return full, small


def product(factors):
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def mean_squares(features: list[tuple], shape: tuple[int, ...]) -> list[jax.Array]:
    """mean(x²) of each feature (a product of factors broadcast to ``shape``) in a single pass: one variadic
    reduction over the last axis (which XLA vectorises and fuses with the products), then a sum over the rest. This is
    several times faster than one reduction per feature, and as accurate (pairwise over rows)."""
    squares = [product([jnp.square(f) for f in factors]) for factors in features]
    if len(squares) == 1 or math.prod(shape) < 2:
        return [jnp.mean(jnp.broadcast_to(x, shape)) for x in squares]
    rows = (1, shape[0]) if len(shape) == 1 else (math.prod(shape[:-1]), shape[-1])
    sums = _row_sums(*(jnp.broadcast_to(x, shape).reshape(rows) for x in squares))
    n = math.prod(shape)
    return [jnp.sum(t) / n for t in sums]


@jax.custom_jvp
def _row_sums(*arrays):
    """Sums over axis 1 of several (rows, cols) arrays in one variadic reduction (one pass over memory)."""
    zero = tuple(jnp.zeros((), x.dtype) for x in arrays)
    return jax.lax.reduce(arrays, zero, lambda a, b: tuple(x + y for x, y in zip(a, b)), (1,))


@_row_sums.defjvp
def _row_sums_jvp(primals, tangents):
    # linear: the tangents' row sums, with ordinary (differentiable, transposable) reductions
    return _row_sums(*primals), tuple(jnp.sum(t, axis=1) for t in tangents)


def effective_weights(w0, feats, mean_squares=None, eps=NORM_EPS):
    """(K, H): each feature's first-layer weights (summed over its rows) times its per-tensor normaliser
    1/sqrt(eps + mean(x²)). The mean over a broadcast (row/column) feature equals the mean over its factored array."""
    rows = jnp.stack([sum(w0[i] for i in idx) for _, idx in feats])
    if mean_squares is None:
        mean_squares = [jnp.mean(jnp.square(x)) for x, _ in feats]
    norms = jax.lax.rsqrt(eps + jnp.stack(mean_squares))
    return rows * norms[:, None]
