"""VeLO's per-parameter MLP (``mulo.optimizers.velo``): its 30 normalised features per parameter, the mixing of the
MLP bank by an LSTM's controls, and the two implementations of the mixed MLP (config key ``lo_impl``): the feature
stack (``dir_mag_reference``, the oracle) and the fused one (``dir_mag_fused``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mulo.optimizers.features import (Acc, effective_weights, factored_dims, factored_stacks, fused_inputs,
                                      mean_squares, product, safe_rsqrt)

PARAM_FEATURE_GROUPS = ("g", "clip_g", "p", "m", "rms", "m_rsqrt_rms", "rsqrt_rms", "fac_g", "g_rsqrt_rms", "row",
                        "col", "rsqrt_row", "rsqrt_col", "fac_m")
PARAM_FEATURES = 30
NORM_EPS = 1e-5


def param_feature_groups(p, g, acc: Acc, mom_eps: float = 0.0) -> list[jax.Array]:
    """The 14 feature groups of one tensor (rank >= 1), each (*p.shape, k), 30 columns in all."""
    stack = lambda xs: jnp.stack(xs, axis=-1)
    m, v = stack(acc.m), acc.v[0][..., None]
    rsqrt = jax.lax.rsqrt(v + 1e-6)
    if factored_dims(p.shape) is not None:
        rc, row, col = factored_stacks(p.shape, acc)
        fac_g, fac_m = g[..., None] * rc, m * rc
    else:
        row = col = stack(acc.diag)
        fac_g, fac_m = g[..., None] * safe_rsqrt(row + 1e-9), m * (row + mom_eps) ** -0.5  # HyperV2: ε = 0
    return [g[..., None], jnp.clip(g, -0.1, 0.1)[..., None], p[..., None], m, v, m * rsqrt, rsqrt, fac_g,
            g[..., None] * rsqrt, row, col, jax.lax.rsqrt(row + 1e-8), jax.lax.rsqrt(col + 1e-8), fac_m]


def param_features(p, g, acc: Acc, mom_eps: float = 0.0) -> jax.Array:
    """(*p.shape, 30): the groups' columns, each normalised over the tensor by its second moment."""
    axes = tuple(range(p.ndim))
    normed = [x * jax.lax.rsqrt(NORM_EPS + jnp.mean(jnp.square(x), axis=axes, keepdims=True))
              for x in param_feature_groups(p, g, acc, mom_eps)]
    return jnp.concatenate(normed, axis=-1)


def mix_mlp(ff: dict, controls: jax.Array, interp_mult: float) -> dict:
    """One tensor's MLP: ``interp_mult · mean_k(controls_k · θ_k)`` over the bank's leading axis."""
    def mix(w):
        return interp_mult * jnp.mean(w * controls.reshape((-1,) + (1,) * (w.ndim - 1)), axis=0)

    return jax.tree.map(mix, ff)


def mlp_apply(ff: dict, x: jax.Array, num_layers: int) -> jax.Array:
    for i in range(num_layers):
        x = jax.nn.relu(x @ ff[f"w{i}"] + ff[f"b{i}"])
    return x @ ff[f"w{num_layers}"] + ff[f"b{num_layers}"]


def dir_mag_reference(ff: dict, p, g, acc: Acc, num_layers: int, mom_eps: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """(direction, magnitude), each of p's shape: the mixed MLP ``ff`` on the (*p.shape, 30) feature stack."""
    out = mlp_apply(ff, param_features(p, g, acc, mom_eps), num_layers)
    return out[..., 0], out[..., 1]


# ------------------------------------------------------------------------------ fused per-parameter MLP (lo_impl)

# features.fused_inputs lists the Adafactor-MLP LO's 28 normalised features; VeLO's 30 columns are the same features
# in PARAM_FEATURE_GROUPS' order plus clip(g) (column 1) and g·rsqrt(RMS) (column 14): fused_inputs index -> column
_COLUMN_OF_FUSED = (0, *range(2, 14), *range(15, 30))


def fused_columns(p, g, acc: Acc, mom_eps: float = 0.0) -> tuple[list, list]:
    """VeLO's 30 columns before normalisation, as ``features.fused_inputs`` gives them: (full, small) where ``full``
    holds (factors broadcastable to p.shape whose product is the column, [columns]) and ``small`` (an array on a
    factored shape, broadcastable to p.shape, [columns]); an unfactored tensor's second moment, VeLO's row and column
    features both, is one entry with two columns."""
    full, small = fused_inputs(p, g, acc, diag_mom_eps=mom_eps)
    columns = lambda idx: [_COLUMN_OF_FUSED[i] for i in idx]
    rsqrt_rms = jax.lax.rsqrt(acc.v[0] + 1e-6)
    full = [(f, columns(i)) for f, i in full] + [((jnp.clip(g, -0.1, 0.1),), [1]), ((g, rsqrt_rms), [14])]
    return full, [(x, columns(i)) for x, i in small]


def _first_layer_offsets(b0, w_small, small, ndim: int) -> list[jax.Array]:
    """The first layer's bias plus the small (row / column) columns' contributions, one array (H, *small shape) per
    distinct small shape: they are added per hidden unit inside the big loop, so that nothing of (H, *p.shape) is
    written to memory. ``w_small``: (Ks, H) normalised weights of the ``small`` columns."""
    lead = lambda w: w.reshape(w.shape[:1] + (1,) * ndim)
    by_shape: dict[tuple, jax.Array] = {(1,) * ndim: lead(b0)}
    for k, (x, _) in enumerate(small):
        by_shape[x.shape] = by_shape.get(x.shape, 0.0) + lead(w_small[k]) * x[None]
    return list(by_shape.values())


def _dense_units(w, b, units: list) -> list:
    """One dense layer on a list of same-shape arrays (one per input unit): ``b[j] + Σ_k w[k, j]·units[k]``."""
    return [b[j] + sum(w[k, j] * u for k, u in enumerate(units)) for j in range(w.shape[1])]


def dir_mag_fused(ff: dict, p, g, acc: Acc, num_layers: int, mom_eps: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """``dir_mag_reference`` without the (*p.shape, 30) feature stack or the (*p.shape, H) activations.

    Each column's normaliser 1/sqrt(ε + mean(x²)) is a per-tensor scalar, so it is folded into the first layer's
    weights (exact); the full-size columns' mean squares come from one variadic reduction over products kept as
    factors (``features.mean_squares``), the row / column Adafactor columns' from their factored arrays, on which
    they are also contracted (``_first_layer_offsets``); the MLP is unrolled into one array expression per hidden unit, which XLA fuses with
    the features into one loop over the tensor.
    """
    full, small = fused_columns(p, g, acc, mom_eps)
    w0 = ff["w0"]  # (30, H)
    w_full = effective_weights(w0, full, mean_squares([f for f, _ in full], p.shape), NORM_EPS)  # (Kf, H)
    w_small = effective_weights(w0, small, eps=NORM_EPS) if small else None  # (Ks, H)
    offsets = _first_layer_offsets(ff["b0"], w_small, small, p.ndim)
    # computed once before the loop over the tensor, not per element inside it
    w_full, offsets = jax.lax.optimization_barrier((w_full, offsets))
    xs = [product(f) for f, _ in full]
    units = [jax.nn.relu(u + sum(o[j] for o in offsets))
             for j, u in enumerate(_dense_units(w_full, jnp.zeros(w0.shape[1:]), xs))]
    for i in range(1, num_layers + 1):
        units = _dense_units(ff[f"w{i}"], ff[f"b{i}"], units)
        units = [jax.nn.relu(u) for u in units] if i < num_layers else units
    return units[0], units[1]


IMPLEMENTATIONS = {"reference": dir_mag_reference, "fused": dir_mag_fused}  # the config key lo_impl
