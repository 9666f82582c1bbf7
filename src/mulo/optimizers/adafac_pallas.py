"""``lo_impl="pallas"``: the Adafactor-MLP LO's update of one matrix as a Pallas kernel (same function as the plain
``reference`` path and the XLA ``fused`` path of ``adafac_mlp``).

Two passes over the tensor:

1. **Statistics** (XLA): the new row/column Adafactor accumulators (small) and the per-tensor normalisers
   ``1/sqrt(1e-5 + mean(x²))`` of the 16 per-element features, computed from the *current* step's accumulators in
   one fused reduction (the new momentum/RMS values are recomputed inside it, never written). The current step's
   statistics, not the previous step's: the result is then the same function as the plain path, with no test needed
   to show a lag harmless. From them come the normalised first-layer weights ``W'`` (16 × H) and two small offset
   tables (H × rows, H × columns) holding the bias, the time features and the 12 row/column features' contributions.
2. **Kernel** (Pallas): each program takes a tile of ``block_rows × block_cols`` parameters with their gradient,
   momenta and RMS, and for one row of the tile at a time (a loop) builds the new accumulators and the 16 features in
   registers, with the parameter axis on the lanes and the hidden units on the other axis:
   layer 1 is 16 rank-1 updates of an (H × block_cols) tile (the features arrive one by one, and stacking them into
   a matmul operand would cost as much as the products), layer 2 is an (H × H) @ (H × block_cols) matmul
   (``jnp.dot``: tensor cores on a GPU, float32 accumulation), layer 3 two reductions over the hidden axis (N = 2 is
   below the tensor cores' minimum). It writes only the new parameters, momenta and RMS: no (parameters × H)
   activations or feature stacks touch memory.

On a GPU the kernel lowers through Pallas' Triton backend, asked for explicitly (``_compiler_params``: the default GPU
lowering of ``pallas_call`` in jax 0.10 is Mosaic GPU, which cannot lower this kernel); everywhere else it runs in
interpret mode (tests: float32 equality with the plain path), and tests lower it for CUDA from the CPU
(``lowering_platforms``) to check that every op has a Triton lowering. Matmul inputs
follow ``jax_default_matmul_precision`` (config key of the same name), always stated: ``float32`` IEEE, ``tensorfloat32``
TF32 inputs, ``bfloat16`` bf16 inputs, float32 accumulation in every case. Hidden sizes below 16 or not a power of two are padded with
zero units (same result). Only rank-2 tensors take the kernel;
vectors, scalars and rank > 2 tensors use the fused path. There is no autodiff through the kernel (PES/ES and
meta-testing need none); vmap works (meta-training's slots and antithetic branches).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

BLOCK_ROWS = 8  # rows per program (a loop inside it): the column offsets are loaded once per 8 rows
BLOCK_COLS = 64  # parameters on the lanes of one row: (H=32) × 64 float32 activations per layer in registers
# 8 warps (256 threads) per program. Compiled for sm_90 (H100/H200) without a GPU (`python scripts/triton_check.py`,
# BENCHMARKS.md "Accelerator check"), 64 columns × 8 warps needs no local-memory spills in any matmul precision
# (140–227 registers per thread; 32 columns also needs none, with half the work per program); the earlier 128 × 4
# spilled 0.5–4.4 KB per thread. Which tile is fastest needs a GPU.
NUM_WARPS = 8
NUM_CONSTS = 16  # scalar inputs, one small vector: 3 momentum decays, RMS decay, exp_mult, step_mult, scale, b2


def applies(shape: tuple[int, ...]) -> bool:
    """Whether a tensor of this (LO-internal) shape is updated by the kernel."""
    return len(shape) == 2 and min(shape) >= 1


def matmul_inputs(precision: str | None) -> tuple[jnp.dtype, jax.lax.Precision]:
    """(input dtype, precision) of the kernel's layer-2 matmul for a ``jax_default_matmul_precision`` value.
    None (a library user who set nothing) means exact float32, never the backend's default."""
    name = (precision or "float32").lower()
    if name in ("float32", "highest", "fp32"):
        return jnp.float32, jax.lax.Precision.HIGHEST
    if name in ("tensorfloat32", "high", "tf32"):
        return jnp.float32, jax.lax.Precision.HIGH  # TF32 on Triton; exact where the backend has no TF32 (CPU)
    if name in ("bfloat16", "default", "bf16"):
        return jnp.bfloat16, jax.lax.Precision.DEFAULT
    raise ValueError(f"unsupported matmul precision {precision!r}; expected float32, tensorfloat32 or bfloat16")


def _interpret() -> bool:
    return jax.default_backend() not in ("gpu", "cuda", "rocm")


def _compiler_params(num_warps: int = NUM_WARPS):
    """The GPU lowering, chosen explicitly: Triton. Without compiler parameters ``pallas_call`` takes the backend that
    ``jax_pallas_use_mosaic_gpu`` names, which defaults to Mosaic GPU in jax 0.10 and 0.11; the kernel is written for
    Triton's model (block-level arrays, ``jnp.dot`` on tiles) and does not lower through Mosaic GPU."""
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps)  # pipeline stages: Pallas' default for CUDA (3)


def _kernel(block_rows: int, in_dtype, precision):
    def kernel(c_ref, w0t_ref, w1t_ref, b1_ref, w2_ref, offr_ref, u_ref, offc_ref, wc_ref,
               p_ref, g_ref, m0_ref, m1_ref, m2_ref, v_ref,
               po_ref, m0o_ref, m1o_ref, m2o_ref, vo_ref):
        b_m = (c_ref[0], c_ref[1], c_ref[2])
        b_v, exp_mult, step_mult, scale, b2_d, b2_m = (c_ref[3], c_ref[4], c_ref[5], c_ref[6], c_ref[7], c_ref[8])
        w1t = w1t_ref[...].astype(in_dtype)  # (H, H): w1 transposed
        b1 = b1_ref[...]  # (H, 1)
        w2d, w2m = w2_ref[:, 0:1], w2_ref[:, 1:2]  # (H, 1) each
        offc = offc_ref[...]  # (H, bc): column-indexed offsets
        wc = [wc_ref[i:i + 1, :] for i in range(3)]  # (1, bc): column factor of r·c per Adafactor decay
        w0 = [w0t_ref[:, k:k + 1] for k in range(16)]  # (H, 1): normalised first-layer weights per feature

        def row(r, carry):
            at = (pl.ds(r, 1), slice(None))
            g, p = g_ref[at], p_ref[at]  # (1, bc)
            ema = lambda b, old, new: b * old + (1.0 - b) * new
            m = [ema(b_m[0], m0_ref[at], g), ema(b_m[1], m1_ref[at], g), ema(b_m[2], m2_ref[at], g)]
            v = ema(b_v, v_ref[at], jnp.square(g))
            rs = jax.lax.rsqrt(v + 1e-6)
            rc = [u_ref[i:i + 1, pl.ds(r, 1)] * wc[i] for i in range(3)]  # (1, bc): r·c per decay
            feats = [g, p, m[0], m[1], m[2], v, m[0] * rs, m[1] * rs, m[2] * rs, rs,
                     g * rc[0], g * rc[1], g * rc[2], m[0] * rc[0], m[1] * rc[1], m[2] * rc[2]]
            a = offr_ref[:, pl.ds(r, 1)] + offc  # (H, bc)
            for k, x in enumerate(feats):
                a = a + w0[k] * x
            h1 = jnp.maximum(a, 0.0)
            h2 = jnp.dot(w1t, h1.astype(in_dtype), precision=precision, preferred_element_type=jnp.float32)
            h2 = jnp.maximum(h2 + b1, 0.0)
            direction = jnp.sum(w2d * h2, axis=0, keepdims=True) + b2_d
            magnitude = jnp.sum(w2m * h2, axis=0, keepdims=True) + b2_m
            step = direction * jnp.exp(exp_mult * magnitude) * step_mult
            po_ref[at] = p - step * scale
            m0o_ref[at], m1o_ref[at], m2o_ref[at] = m
            vo_ref[at] = v
            return carry

        jax.lax.fori_loop(0, block_rows, row, 0)

    return kernel


def _pad_to(x, rows: int | None, cols: int | None):
    pr = 0 if rows is None else rows - x.shape[0]
    pc = 0 if cols is None else cols - x.shape[1]
    return x if pr == pc == 0 else jnp.pad(x, ((0, pr), (0, pc)))


def _block(n: int, cap: int, least: int = 1) -> int:
    """A power-of-two tile edge (Triton's block shapes) for an axis of n: n rounded up, capped, at least ``least``."""
    return max(least, min(cap, pl.next_power_of_2(n)))


def update_matrix(nn, p, g, acc, acc_new, decays, iteration, hp, scale, precision: str | None = None,
                  block_rows: int = BLOCK_ROWS, block_cols: int = BLOCK_COLS, num_warps: int = NUM_WARPS):
    """New (params, momenta, rms) of one rank-2 tensor. ``acc`` holds the accumulators before this step,
    ``acc_new`` after it (from ``features.update_acc``: only its small row/column parts are used here; the full
    momenta/RMS it describes feed the statistics pass only, where XLA fuses them into the reduction)."""
    from mulo.optimizers import features as F  # the features and normalisers of every path of this LO

    b_m, b_v, _ = decays
    w0, b0, w1, b1, w2, b2 = (nn[k] for k in ("w0", "b0", "w1", "b1", "w2", "b2"))
    h = w0.shape[1]
    rows, cols = p.shape
    # pass 1: per-tensor statistics and the small per-row / per-column tables
    full, small = F.fused_inputs(p, g, acc_new)
    assert len(full) == 16, "the kernel's feature list follows _fused_inputs for factored tensors"
    w_full = F.effective_weights(w0, full, F.mean_squares([f for f, _ in full], p.shape))  # (16, H)
    bias = b0 + F.time_features(iteration) @ w0[F.NUM_NORMALISED_FEATURES:]
    w_small = F.effective_weights(w0, small)
    off_r = jnp.broadcast_to(bias[:, None], (h, rows))
    off_c = jnp.zeros((h, cols), jnp.float32)
    for k, (x, _) in enumerate(small):
        if x.shape == (rows, 1):
            off_r = off_r + w_small[k][:, None] * x[:, 0][None, :]
        else:
            off_c = off_c + w_small[k][:, None] * jnp.reshape(x, (1, cols))
    # r·c of each decay = u[row] · w[col]: the factor with a unit column axis is the row one
    u_rows, w_cols = [], []
    d1, d0 = F.factored_dims(p.shape)
    for r_, c_ in (F.row_col_factors(r, c, d1, d0) for r, c in zip(acc_new.row, acc_new.col)):
        ur, wc = (r_, c_) if d0 == 1 else (c_, r_)
        u_rows.append(jnp.broadcast_to(ur, (rows, 1))[:, 0])
        w_cols.append(jnp.broadcast_to(wc, (1, cols))[0])
    u = jnp.stack(u_rows + [jnp.zeros((rows,), jnp.float32)])  # (4, rows): padded to a power of two
    wc = jnp.stack(w_cols + [jnp.zeros((cols,), jnp.float32)])  # (4, cols)
    consts = jnp.zeros((NUM_CONSTS,), jnp.float32).at[:9].set(jnp.stack([
        b_m[0], b_m[1], b_m[2], jnp.clip(b_v[0], 0.0, 1.0), jnp.float32(hp.exp_mult), jnp.float32(hp.step_mult),
        jnp.asarray(scale, jnp.float32), b2[0], b2[1]]))

    # pass 2: the kernel, on tiles of (br, bc); the tensor is zero-padded to whole tiles (pads are sliced off)
    br, bc = _block(rows, block_rows), _block(cols, block_cols, least=16)  # a GPU matmul needs N >= 16
    rp, cp = math.ceil(rows / br) * br, math.ceil(cols / bc) * bc
    big = [_pad_to(x, rp, cp) for x in (p, g, *acc.m, acc.v[0])]
    in_dtype, prec = matmul_inputs(precision)
    tile = pl.BlockSpec((br, bc), lambda i, j: (i, j))
    whole = lambda shape: pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))
    # hidden units padded with zeros to a power of two >= 16 (a GPU matmul's smallest M and K): a padded unit has zero
    # weights in and out and a zero offset, so relu keeps it at 0 and the result is unchanged
    hp_ = _block(h, 1 << 30, least=16)
    pad_h = lambda x: jnp.pad(x, ((0, hp_ - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))
    w1t = jnp.pad(w1.T, ((0, hp_ - h), (0, hp_ - h)))
    in_specs = [whole((NUM_CONSTS,)), whole((hp_, 16)), whole((hp_, hp_)), whole((hp_, 1)), whole((hp_, 2)),
                pl.BlockSpec((hp_, br), lambda i, j: (0, i)), pl.BlockSpec((4, br), lambda i, j: (0, i)),
                pl.BlockSpec((hp_, bc), lambda i, j: (0, j)), pl.BlockSpec((4, bc), lambda i, j: (0, j))] + [tile] * 6
    out = pl.pallas_call(
        _kernel(br, in_dtype, prec),
        out_shape=[jax.ShapeDtypeStruct((rp, cp), jnp.float32)] * 5,
        grid=(rp // br, cp // bc), in_specs=in_specs, out_specs=[tile] * 5,
        input_output_aliases={9: 0, 11: 1, 12: 2, 13: 3, 14: 4},
        interpret=_interpret(), name="adafac_mlp_lo_step", compiler_params=_compiler_params(num_warps),
    )(consts, pad_h(w_full.T), w1t, pad_h(b1[:, None]), pad_h(w2), pad_h(_pad_to(off_r, None, rp)),
      _pad_to(u, None, rp), pad_h(_pad_to(off_c, None, cp)), _pad_to(wc, None, cp), *big)
    new_p, m0, m1, m2, v = (x[:rows, :cols] for x in out)
    return new_p, (m0, m1, m2), (v,)
