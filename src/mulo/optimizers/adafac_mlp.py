"""The Adafactor-MLP learned optimizer: ``small_fc_mlp`` (SP) and ``mup_small_fc_mlp`` (μLO).

A per-parameter MLP (39 → H → H → 2) reads 28 per-tensor second-moment-normalised features of the gradient, the
parameter and their momentum / RMS / Adafactor accumulators plus 11 tanh time features, and outputs a direction and a
magnitude; the step is ``direction · exp(exp_mult · magnitude) · step_mult`` (reference_design.md §1.1). The μLO
multiplies each tensor's step by its μP update scale (``hidden_lr_mult / fan_in`` for hidden matrices, 1 otherwise,
§1.2–1.3); the SP LO ignores the scales.

Two implementations of the per-tensor MLP compute the same function:

* ``reference``: the features stacked on a trailing axis, normalised, and a matmul MLP (a literal transcription of
  §1.1, kept for tests).
* ``fused`` (default): the per-tensor normalisers are folded into the first-layer weights, the (per-tensor constant)
  time features into its bias, the row/column Adafactor features are applied on their small factored shapes and
  broadcast, and the MLP is unrolled into elementwise array ops (one array per hidden unit) that XLA fuses into a
  single loop over the tensor: no (num_params × H) activations are materialised.
  See BENCHMARKS.md ("Optimizer step") for the measured cost.

The accumulators are stored as one array per decay (tuples), not stacked, so that no slice copies are needed.
Scalars are reshaped to rank 1 for the optimizer's internal state and back for the params.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Sequence

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulo.errors import ConfigError
from mulo.optimizers.base import Optimizer

LO_NAMES = ("small_fc_mlp", "mup_small_fc_mlp")
DEFAULT_STEP_MULT = {"small_fc_mlp": 0.001, "mup_small_fc_mlp": 0.01}
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
NUM_NORMALISED_FEATURES = 28
NUM_FEATURES = NUM_NORMALISED_FEATURES + len(TIMESCALES)  # 39
NORM_EPS = 1e-5  # ε of the per-tensor second-moment normaliser x / sqrt(ε + mean(x²)), as the reference
EPS_SCALINGS = ("none", "fan_in")


@dataclass(frozen=True)
class AdafacHParams:
    """Hyper-parameters of the Adafactor-MLP LO. Stored with θ in every θ file (load_theta restores them)."""

    hidden_size: int = 32
    step_mult: float = 0.01
    exp_mult: float = 0.001
    clip_grad: bool = False
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    # "none": the normaliser's ε is NORM_EPS for every tensor (the reference); "fan_in": NORM_EPS / fan_in of the
    # tensor (see ``norm_eps``), so that ε does not swamp the tiny gradients of wide hidden layers
    eps_scaling: str = "none"

    def __post_init__(self):
        if self.eps_scaling not in EPS_SCALINGS:
            raise ConfigError(f"bad lo_eps_scaling {self.eps_scaling!r}: expected one of {', '.join(EPS_SCALINGS)}")
        if self.hidden_size < 1:
            raise ConfigError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if len(self.rms_decays) != 1 or len(self.momentum_decays) != 3 or len(self.adafactor_decays) != 3:
            raise ConfigError("the Adafactor-MLP LO needs 3 momentum, 1 RMS and 3 Adafactor decays (39 features)")
        for d in (*self.momentum_decays, *self.rms_decays, *self.adafactor_decays):
            if not 0.0 <= d < 1.0:
                raise ConfigError(f"LO decays must be in [0, 1), got {d}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("momentum_decays", "rms_decays", "adafactor_decays"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AdafacHParams":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown LO hyper-parameter(s) {sorted(unknown)}; expected some of {sorted(known)}")
        d = dict(d)
        for k in ("momentum_decays", "rms_decays", "adafactor_decays"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)


class AdafacState(NamedTuple):
    """Optimizer state: params (original shapes) and accumulators (one array per decay; scalars as rank 1)."""

    params: Any
    mom: Any  # per tensor, a tuple of 3 arrays of its shape (one per momentum decay)
    rms: Any  # per tensor, a 1-tuple
    fac_row: Any  # factored tensors (rank >= 2): 3 arrays of shape without d0; others: ()
    fac_col: Any  # factored tensors: 3 arrays of shape without d1; others: ()
    fac_diag: Any  # unfactored tensors (rank <= 1): 3 arrays of the shape; others: ()
    iteration: jax.Array  # int32, number of LO updates so far
    num_steps: jax.Array


# ----------------------------------------------------------------------------------------------- shared pieces


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


def _safe_rsqrt(x):
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


class _Acc(NamedTuple):
    """Accumulators of one tensor, one array per decay (tuples); unused Adafactor entries are empty tuples."""

    m: tuple
    v: tuple
    row: tuple
    col: tuple
    diag: tuple


def _init_acc(p: jax.Array, hp: AdafacHParams) -> _Acc:
    shape = p.shape if p.ndim else (1,)
    zeros = lambda n, s: tuple(jnp.zeros(s, jnp.float32) for _ in range(n))
    k_f = len(hp.adafactor_decays)
    dims = factored_dims(shape)
    if dims is None:
        row, col, diag = (), (), zeros(k_f, shape)
    else:
        d1, d0 = dims
        row, col, diag = zeros(k_f, tuple(np.delete(shape, d0))), zeros(k_f, tuple(np.delete(shape, d1))), ()
    return _Acc(zeros(len(hp.momentum_decays), shape), zeros(len(hp.rms_decays), shape), row, col, diag)


def _update_acc(acc: _Acc, g: jax.Array, b_m, b_v, b_f) -> _Acc:
    """New accumulators (no bias correction, as the reference). ``g`` has rank >= 1."""
    ema = lambda b, old, new: b * old + (1.0 - b) * new
    m = tuple(ema(b_m[i], x, g) for i, x in enumerate(acc.m))
    b_v, b_f = jnp.clip(b_v, 0.0, 1.0), jnp.clip(b_f, 0.0, 1.0)
    gsq = jnp.square(g)
    v = tuple(ema(b_v[i], x, gsq) for i, x in enumerate(acc.v))
    gsq = gsq + 1e-30
    dims = factored_dims(g.shape)
    if dims is None:
        return _Acc(m, v, (), (), tuple(ema(b_f[i], x, gsq) for i, x in enumerate(acc.diag)))
    d1, d0 = dims
    row_new, col_new = jnp.mean(gsq, axis=d0), jnp.mean(gsq, axis=d1)
    row = tuple(ema(b_f[i], x, row_new) for i, x in enumerate(acc.row))
    col = tuple(ema(b_f[i], x, col_new) for i, x in enumerate(acc.col))
    return _Acc(m, v, row, col, ())


def _row_col_factors(row, col, d1, d0):
    """Adafactor factors of one decay, r = safe_rsqrt(v_row / mean(v_row)) and c = safe_rsqrt(v_col), expanded to
    broadcast against p. As the reference, the mean of v_row is over its (reduced) d1 axis."""
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    r = _safe_rsqrt(row / (jnp.mean(row, axis=reduced_d1, keepdims=True) + 1e-9))
    return jnp.expand_dims(r, d0), jnp.expand_dims(_safe_rsqrt(col), d1)


def _decays(theta, hp: AdafacHParams):
    return (decay_from_param(hp.momentum_decays, theta["momentum_decays"]),
            decay_from_param(hp.rms_decays, theta["rms_decays"]),
            decay_from_param(hp.adafactor_decays, theta["adafactor_decays"]))


# ------------------------------------------------------------------------------------ reference implementation


def features_reference(p: jax.Array, g: jax.Array, acc: _Acc, iteration: jax.Array,
                       eps: float = NORM_EPS) -> jax.Array:
    """The 39 LO inputs of every element, stacked on a trailing axis: shape (*p.shape, 39), in the reference's order.
    ``acc`` holds the accumulators already updated with ``g``; p and g have rank >= 1; ``eps``: the normaliser's ε."""
    stack_last = lambda xs: jnp.stack(xs, axis=-1)
    m, v = stack_last(acc.m), stack_last(acc.v)
    feats = [g[..., None], p[..., None], m, v]
    rs = jax.lax.rsqrt(v + 1e-6)
    feats += [m * rs, rs]
    dims = factored_dims(p.shape)
    if dims is not None:
        d1, d0 = dims
        rcs = [_row_col_factors(r, c, d1, d0) for r, c in zip(acc.row, acc.col)]
        rc = stack_last([jnp.broadcast_to(r * c, p.shape) for r, c in rcs])
        row_t = stack_last([jnp.broadcast_to(jnp.expand_dims(r, d0), p.shape) for r in acc.row])
        col_t = stack_last([jnp.broadcast_to(jnp.expand_dims(c, d1), p.shape) for c in acc.col])
        feats += [g[..., None] * rc, row_t, col_t, jax.lax.rsqrt(row_t + 1e-8), jax.lax.rsqrt(col_t + 1e-8), m * rc]
    else:
        diag = stack_last(acc.diag)
        fac_g = g[..., None] * _safe_rsqrt(diag + 1e-9)
        feats += [fac_g, diag, diag, jax.lax.rsqrt(diag + 1e-8), jax.lax.rsqrt(diag + 1e-8),
                  m * (diag + 1e-6) ** -0.5]
    stack = jnp.concatenate(feats, axis=-1)
    axes = tuple(range(p.ndim))
    stack = stack * jax.lax.rsqrt(eps + jnp.mean(jnp.square(stack), axis=axes, keepdims=True))
    tf = jnp.broadcast_to(time_features(iteration), p.shape + (len(TIMESCALES),))
    return jnp.concatenate([stack, tf], axis=-1)


def mlp_reference(nn: dict, x: jax.Array) -> jax.Array:
    """39 → H → ReLU → H → ReLU → 2 as matmuls on the trailing axis."""
    h = jax.nn.relu(x @ nn["w0"] + nn["b0"])
    h = jax.nn.relu(h @ nn["w1"] + nn["b1"])
    return h @ nn["w2"] + nn["b2"]


def _dir_mag_reference(nn, p, g, acc, iteration, eps=NORM_EPS):
    out = mlp_reference(nn, features_reference(p, g, acc, iteration, eps))
    return out[..., 0], out[..., 1]


# ---------------------------------------------------------------------------------------- fused implementation


def _fused_inputs(p, g, acc):
    """The LO's normalised-feature inputs for the fused path, grouped by shape.

    Returns (full, small): ``full`` is a list of (factors, [rows of w0]) where the feature is the product of the
    factors (arrays broadcastable to p's shape, at least one of full shape); ``small`` a list of (array of a factored
    shape, broadcastable to p's shape, [rows of w0]). A feature that appears twice in the reference stack (v_diag and
    rsqrt(v_diag) for unfactored tensors) appears once with both rows. Products are kept as factors so that the
    normaliser's reduction and the MLP loop each compute them in their own fused loop, instead of XLA writing every
    product feature to memory to share it.
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
        rcs = [_row_col_factors(r, c, d1, d0) for r, c in zip(acc.row, acc.col)]
        full += [((g, r, c), [10 + i]) for i, (r, c) in enumerate(rcs)]
        full += [((m[i], r, c), [25 + i]) for i, (r, c) in enumerate(rcs)]
        for i in range(3):
            row_i = jnp.expand_dims(acc.row[i], d0)
            col_i = jnp.expand_dims(acc.col[i], d1)
            small += [(row_i, [13 + i]), (col_i, [16 + i]),
                      (jax.lax.rsqrt(row_i + 1e-8), [19 + i]), (jax.lax.rsqrt(col_i + 1e-8), [22 + i])]
    else:
        diag = acc.diag
        full += [((g, _safe_rsqrt(diag[i] + 1e-9)), [10 + i]) for i in range(3)]
        # the reference feeds v_diag twice and rsqrt(v_diag) twice: same values, same normaliser -> add the weights
        full += [((diag[i],), [13 + i, 16 + i]) for i in range(3)]
        full += [((jax.lax.rsqrt(diag[i] + 1e-8),), [19 + i, 22 + i]) for i in range(3)]
        full += [((m[i], (diag[i] + 1e-6) ** -0.5), [25 + i]) for i in range(3)]
    return full, small


def _product(factors):
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def _mean_squares(features: list[tuple], shape: tuple[int, ...]) -> list[jax.Array]:
    """mean(x²) of each feature (a product of factors broadcast to ``shape``) in a single pass: one variadic
    reduction over the last axis (which XLA vectorises and fuses with the products), then a sum over the rest. This is
    several times faster than one reduction per feature, and as accurate (pairwise over rows)."""
    squares = [_product([jnp.square(f) for f in factors]) for factors in features]
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


def _effective_weights(w0, feats, mean_squares=None, eps=NORM_EPS):
    """(K, H): each feature's first-layer weights (summed over its rows) times its per-tensor normaliser
    1/sqrt(eps + mean(x²)). The mean over a broadcast (row/column) feature equals the mean over its factored array."""
    rows = jnp.stack([sum(w0[i] for i in idx) for _, idx in feats])
    if mean_squares is None:
        mean_squares = [jnp.mean(jnp.square(x)) for x, _ in feats]
    norms = jax.lax.rsqrt(eps + jnp.stack(mean_squares))
    return rows * norms[:, None]


def _dir_mag_fused(nn, p, g, acc, iteration, eps=NORM_EPS):
    """Same function as ``_dir_mag_reference`` without materialising per-element feature stacks or activations.

    Layer 1 per element is h1_j = relu(Σ_k W'[k, j]·f_k + c_j) where W' = w0 · (per-tensor normaliser) and c_j, the
    bias plus the time features' contribution plus the factored row/column features' contribution, is computed on
    the small factored shape and broadcast. Layers 2 and 3 are unrolled into elementwise array ops (one array per
    hidden unit), which XLA fuses into a single loop over the tensor.
    """
    # The optimisation barrier keeps XLA from constant-folding the weights into per-element literals when theta is a
    # compile-time constant (closed over), which makes compilation run out of memory.
    w0, b0, w1, b1, w2, b2 = jax.lax.optimization_barrier(tuple(nn[k] for k in ("w0", "b0", "w1", "b1", "w2", "b2")))
    h = w0.shape[1]
    full, small = _fused_inputs(p, g, acc)
    w_full = _effective_weights(w0, full, _mean_squares([f for f, _ in full], p.shape), eps)  # (Kf, H)
    bias = b0 + time_features(iteration) @ w0[NUM_NORMALISED_FEATURES:]  # (H,)
    # per hidden unit, the small features' contributions, one array per distinct small shape (row-type and
    # column-type) so that nothing of p's full size is materialised: offsets[g] has shape (H, *broadcastable shape)
    offsets = [bias.reshape((h,) + (1,) * p.ndim)]
    if small:
        w_small = _effective_weights(w0, small, eps=eps)  # (Ks, H)
        by_shape: dict[tuple, jax.Array] = {}
        for k, (x, _) in enumerate(small):
            term = w_small[k].reshape((h,) + (1,) * p.ndim) * x[None]
            by_shape[x.shape] = by_shape[x.shape] + term if x.shape in by_shape else term
        offsets = list(by_shape.values())
        offsets[0] = offsets[0] + bias.reshape((h,) + (1,) * p.ndim)
    # materialise the weights and the small offsets before the big loop, so that it does not recompute them per element
    w_full, offsets = jax.lax.optimization_barrier((w_full, offsets))
    xs = [_product(f) for f, _ in full]
    h1 = []
    for j in range(h):
        a = offsets[0][j]
        for o in offsets[1:]:
            a = a + o[j]
        for k, x in enumerate(xs):
            a = a + w_full[k, j] * x
        h1.append(jax.nn.relu(a))
    h2 = []
    for j in range(h):
        a = b1[j]
        for k in range(h):
            a = a + w1[k, j] * h1[k]
        h2.append(jax.nn.relu(a))
    direction = b2[0]
    magnitude = b2[1]
    for k in range(h):
        direction = direction + w2[k, 0] * h2[k]
        magnitude = magnitude + w2[k, 1] * h2[k]
    return direction, magnitude


IMPLEMENTATIONS = {"reference": _dir_mag_reference, "fused": _dir_mag_fused}
# the config key lo_impl; "pallas" updates each matrix with the kernel of adafac_pallas (other tensors: fused)
LO_IMPLS = ("reference", "fused", "pallas")


# ---------------------------------------------------------------------------------------- the learned optimizer


@dataclass(frozen=True)
class AdafacMLPLO:
    """``small_fc_mlp`` (SP: update scales ignored) or ``mup_small_fc_mlp`` (μLO: step × μP update scale)."""

    name: str
    hparams: AdafacHParams = field(default_factory=AdafacHParams)
    impl: str = "fused"  # one of LO_IMPLS (config key lo_impl): how the per-parameter MLP is computed (same function)
    # with impl="fused" or "pallas", tensors with fewer elements than this use the reference path: they cost little to
    # run either way, and each fused tensor adds a large kernel (seconds of compilation)
    fused_min_size: int = 4096

    def __post_init__(self):
        if self.name not in LO_NAMES:
            raise ConfigError(f"unknown learned optimizer {self.name!r}; expected one of {LO_NAMES}")
        if self.impl not in LO_IMPLS:
            raise ConfigError(f"bad value {self.impl!r} for config key 'lo_impl': expected one of "
                              f"{', '.join(LO_IMPLS)}")

    @property
    def uses_mup(self) -> bool:
        return self.name == "mup_small_fc_mlp"

    def init_theta(self, key: jax.Array) -> dict:
        """Meta-parameters: MLP weights (truncated normal ±2σ, σ = 1/sqrt(fan_in), no variance correction; biases 0)
        and the decay parameters (0, i.e. the initial decays)."""
        hp = self.hparams
        sizes = [NUM_FEATURES, hp.hidden_size, hp.hidden_size, 2]
        keys = jax.random.split(key, 3)
        nn = {}
        for i in range(3):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            nn[f"w{i}"] = jax.random.truncated_normal(keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32) / np.sqrt(
                fan_in)
            nn[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
        return {
            "momentum_decays": jnp.zeros((len(hp.momentum_decays),), jnp.float32),
            "rms_decays": jnp.zeros((len(hp.rms_decays),), jnp.float32),
            "adafactor_decays": jnp.zeros((len(hp.adafactor_decays),), jnp.float32),
            "nn": nn,
        }

    def opt_fn(self, theta: Any, update_scales: Any = None) -> Optimizer:
        """The inner optimizer for meta-parameters ``theta`` (may be traced). ``update_scales``: pytree of per-tensor
        μP scales shaped like the params (used by the μLO only; None means 1 everywhere)."""
        hp = self.hparams
        from mulo.optimizers import adafac_pallas  # imports Pallas only when an LO is used

        def dir_mag(nn, p, g, acc, t, eps):
            use_fused = self.impl != "reference" and p.size >= self.fused_min_size
            return (_dir_mag_fused if use_fused else _dir_mag_reference)(nn, p, g, acc, t, eps)
        scales = update_scales if self.uses_mup else None

        def init(params, num_steps: int = 0) -> AdafacState:
            if scales is not None and jax.tree.structure(scales) != jax.tree.structure(params):
                raise ValueError("update_scales must have the structure of the params: got "
                                 f"{jax.tree.structure(scales)} for params {jax.tree.structure(params)}")
            accs = jax.tree.map(lambda p: _init_acc(jnp.asarray(p), hp), params)
            pick = lambda i: jax.tree.map(lambda p, a: a[i], params, accs)
            return AdafacState(params=params, mom=pick(0), rms=pick(1), fac_row=pick(2), fac_col=pick(3),
                               fac_diag=pick(4), iteration=jnp.asarray(0, jnp.int32),
                               num_steps=jnp.asarray(num_steps, jnp.int32))

        def update(state: AdafacState, grads, loss=None, key=None) -> AdafacState:
            del loss, key
            if hp.clip_grad:
                grads, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
                grads = jax.tree.map(jnp.nan_to_num, grads)
            b_m, b_v, b_f = _decays(theta, hp)
            nn = theta["nn"]
            t = state.iteration
            sc = scales if scales is not None else jax.tree.map(lambda _: 1.0, state.params)

            def one(p, g, m, v, row, col, diag, s):
                shape = p.shape
                p1, g1 = jnp.reshape(p, m[0].shape), jnp.reshape(g, m[0].shape).astype(jnp.float32)
                acc = _update_acc(_Acc(m, v, row, col, diag), g1, b_m, b_v, b_f)
                if (self.impl == "pallas" and p1.size >= self.fused_min_size and adafac_pallas.applies(p1.shape)
                        and hp.eps_scaling == "none"):  # the kernel has the reference's ε
                    new_p, new_m, new_v = adafac_pallas.update_matrix(
                        nn, p1.astype(jnp.float32), g1, _Acc(m, v, row, col, diag), acc, (b_m, b_v, b_f), t, hp, s,
                        precision=jax.config.jax_default_matmul_precision)
                    return new_p.astype(p.dtype).reshape(shape), acc._replace(m=new_m, v=new_v)
                direction, magnitude = dir_mag(nn, p1, g1, acc, t, norm_eps(shape, hp.eps_scaling))
                step = direction * jnp.exp(hp.exp_mult * magnitude) * hp.step_mult
                new_p = (p1 - step * s).astype(p.dtype).reshape(shape)
                return new_p, acc

            out = jax.tree.map(one, state.params, grads, state.mom, state.rms, state.fac_row, state.fac_col,
                               state.fac_diag, sc)
            is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], _Acc)
            new_params = jax.tree.map(lambda o: o[0], out, is_leaf=is_pair)
            pick = lambda i: jax.tree.map(lambda o: o[1][i], out, is_leaf=is_pair)
            return AdafacState(params=new_params, mom=pick(0), rms=pick(1), fac_row=pick(2), fac_col=pick(3),
                               fac_diag=pick(4), iteration=state.iteration + 1, num_steps=state.num_steps)

        def params(state: AdafacState):
            return state.params

        return Optimizer(init=init, update=update, params=params)


def num_meta_params(theta: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(theta)))


def hparams_from_config(name: str, cfg: Any) -> AdafacHParams:
    get = (lambda k: cfg[k]) if hasattr(cfg, "__getitem__") else (lambda k: getattr(cfg, k))
    step_mult = get("adafac_step_mult")
    if step_mult is None:
        step_mult = DEFAULT_STEP_MULT[name]
    return AdafacHParams(hidden_size=int(get("hidden_size")), step_mult=float(step_mult),
                         exp_mult=float(get("adafac_exp_mult")), clip_grad=bool(get("lo_clip_grad")),
                         eps_scaling=str(get("lo_eps_scaling")))


# ---------------------------------------------------------------------------------------------------- registration

# config key -> hyper-parameter: the keys a θ file overrides at meta-test (its run name and config.py say so)
CONFIG_KEYS = {"hidden_size": "hidden_size", "adafac_step_mult": "step_mult", "adafac_exp_mult": "exp_mult",
               "lo_clip_grad": "clip_grad", "lo_eps_scaling": "eps_scaling"}


def _register(name: str, is_mup: bool, help: str) -> None:
    from mulo.registry import LearnedSpec, register_learned

    register_learned(LearnedSpec(
        name=name, is_mup=is_mup, help=help, config_keys=CONFIG_KEYS, label_key="hidden_size",
        build=lambda hparams, impl: AdafacMLPLO(name=name, hparams=(
            hparams if isinstance(hparams, AdafacHParams) else AdafacHParams.from_dict(hparams)), impl=impl),
        hparams_from_config=lambda cfg: hparams_from_config(name, cfg).to_dict()))


_register("small_fc_mlp", False, "the Adafactor-MLP LO in standard parametrisation")
_register("mup_small_fc_mlp", True, "the μLO: the Adafactor-MLP LO, each step times the task's μP update scale")
