"""The Adafactor-MLP learned optimizer: ``small_fc_mlp`` (SP) and ``mup_small_fc_mlp`` (μLO).

A per-parameter MLP (39 → H → H → 2) reads 28 per-tensor second-moment-normalised features of the gradient, the
parameter and their momentum / RMS / Adafactor accumulators plus 11 tanh time features, and outputs a direction and a
magnitude; the step is ``direction · exp(exp_mult · magnitude) · step_mult`` (reference_design.md §1.1). The μLO
multiplies each tensor's step by its μP update scale (``hidden_lr_mult / fan_in`` for hidden matrices, 1 otherwise,
§1.2–1.3; ``mulo.optimizers.mup_scale.scale_by_tree`` after the LO's steps, inside the Pallas kernel for the matrices
it takes); the SP LO ignores the scales.

Two implementations of the per-tensor MLP compute the same function:

* ``reference``: the features stacked on a trailing axis, normalised, and a matmul MLP (a literal transcription of
  §1.1, kept for tests).
* ``fused`` (default): the per-tensor normalisers are folded into the first-layer weights, the (per-tensor constant)
  time features into its bias, the row/column Adafactor features are applied on their small factored shapes and
  broadcast, and the MLP is unrolled into elementwise array ops (one array per hidden unit) that XLA fuses into a
  single loop over the tensor: no (num_params × H) activations are materialised.
  See BENCHMARKS.md ("Optimizer step") for the measured cost.

The features and accumulators both paths read (and the Pallas kernel, ``adafac_pallas``) are in
``mulo.optimizers.features``. The accumulators are stored as one array per decay (tuples), not stacked, so that no
slice copies are needed.
Scalars are reshaped to rank 1 for the optimizer's internal state and back for the params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulo.errors import ConfigError
from mulo.hparams import POSITIVE, HParamsDict, hparam
from mulo.optimizers.base import Optimizer, check_variant
from mulo.optimizers.features import (NORM_EPS, NUM_FEATURES, NUM_NORMALISED_FEATURES, Acc, decay_from_param,
                                      effective_weights, features_reference, fused_inputs, init_acc, mean_squares,
                                      norm_eps, product, row_col_factors, safe_rsqrt, time_features, update_acc)
from mulo.optimizers.mup_scale import apply_steps, check_scales, step_scaling
from mulo.registry import EPS_SCALINGS, LO_IMPLS

LO_NAMES = ("small_fc_mlp", "mup_small_fc_mlp")
DEFAULT_STEP_MULT = {"small_fc_mlp": 0.001, "mup_small_fc_mlp": 0.01}


@dataclass(frozen=True)
class AdafacHParams(HParamsDict):
    """Hyper-parameters of the Adafactor-MLP LO. Stored with θ in every θ file (load_theta restores them)."""

    hidden_size: int = hparam(32, "hidden units of the LO's per-parameter MLP", min=1)
    step_mult: float = hparam(0.01, "step multiplier (default: 0.01 for mup_small_fc_mlp, 0.001 for small_fc_mlp)",
                              min=POSITIVE)
    exp_mult: float = hparam(0.001, "magnitude exponent multiplier", min=0.0)
    clip_grad: bool = hparam(False, "clip the optimizee gradient to global norm 1 inside the LO")
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    # "none": the normaliser's ε is NORM_EPS for every tensor (the reference); "fan_in": NORM_EPS / fan_in of the
    # tensor (see ``norm_eps``), so that ε does not swamp the tiny gradients of wide hidden layers
    eps_scaling: str = hparam("none", "epsilon of the LO's per-tensor feature normaliser: none (1e-5 everywhere, the "
                              "reference) or fan_in (1e-5/fan_in for matrices, so it does not swamp the tiny gradients "
                              "of wide hidden layers); not with impl=pallas", choices=EPS_SCALINGS)

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

# the shared pieces live in mulo.optimizers.features; their names here as before
_Acc, _update_acc, _row_col_factors, _safe_rsqrt = Acc, update_acc, row_col_factors, safe_rsqrt
_fused_inputs, _product, _mean_squares, _effective_weights = fused_inputs, product, mean_squares, effective_weights


def _init_acc(p: jax.Array, hp: AdafacHParams) -> Acc:
    return init_acc(p, len(hp.momentum_decays), len(hp.rms_decays), len(hp.adafactor_decays))


def _decays(theta, hp: AdafacHParams):
    return (decay_from_param(hp.momentum_decays, theta["momentum_decays"]),
            decay_from_param(hp.rms_decays, theta["rms_decays"]),
            decay_from_param(hp.adafactor_decays, theta["adafactor_decays"]))


# ------------------------------------------------------------------------------------ reference implementation


def mlp_reference(nn: dict, x: jax.Array) -> jax.Array:
    """39 → H → ReLU → H → ReLU → 2 as matmuls on the trailing axis."""
    h = jax.nn.relu(x @ nn["w0"] + nn["b0"])
    h = jax.nn.relu(h @ nn["w1"] + nn["b1"])
    return h @ nn["w2"] + nn["b2"]


def _dir_mag_reference(nn, p, g, acc, iteration, eps=NORM_EPS):
    out = mlp_reference(nn, features_reference(p, g, acc, iteration, eps))
    return out[..., 0], out[..., 1]


# ---------------------------------------------------------------------------------------- fused implementation


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
    full, small = fused_inputs(p, g, acc)
    w_full = effective_weights(w0, full, mean_squares([f for f, _ in full], p.shape), eps)  # (Kf, H)
    bias = b0 + time_features(iteration) @ w0[NUM_NORMALISED_FEATURES:]  # (H,)
    # per hidden unit, the small features' contributions, one array per distinct small shape (row-type and
    # column-type) so that nothing of p's full size is materialised: offsets[g] has shape (H, *broadcastable shape)
    offsets = [bias.reshape((h,) + (1,) * p.ndim)]
    if small:
        w_small = effective_weights(w0, small, eps=eps)  # (Ks, H)
        by_shape: dict[tuple, jax.Array] = {}
        for k, (x, _) in enumerate(small):
            term = w_small[k].reshape((h,) + (1,) * p.ndim) * x[None]
            by_shape[x.shape] = by_shape[x.shape] + term if x.shape in by_shape else term
        offsets = list(by_shape.values())
        offsets[0] = offsets[0] + bias.reshape((h,) + (1,) * p.ndim)
    # materialise the weights and the small offsets before the big loop, so that it does not recompute them per element
    w_full, offsets = jax.lax.optimization_barrier((w_full, offsets))
    xs = [product(f) for f, _ in full]
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
# LO_IMPLS (mulo.registry, the config key lo_impl): "pallas" updates each matrix with the kernel of adafac_pallas
# (other tensors: fused)


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
        check_variant("learned optimizer", self.name, LO_NAMES, self.impl, LO_IMPLS)
        if self.impl == "pallas" and self.hparams.eps_scaling != "none":  # the kernel has the reference's ε
            raise ConfigError(f"lo_impl=pallas does not take lo_eps_scaling={self.hparams.eps_scaling} (the Pallas "
                              f"kernel has the reference's epsilon): use lo_impl=fused, the same function")

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
        scaling = step_scaling(update_scales, self.uses_mup)  # the μLO's per-tensor scales (mulo.optimizers.mup_scale)
        kernel_scales = update_scales if self.uses_mup else None  # the Pallas kernel scales inside (mup_scale)

        def init(params, num_steps: int = 0) -> AdafacState:
            check_scales(update_scales, params, self.uses_mup)
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
            flat_p, treedef = jax.tree.flatten(state.params)
            leaves = treedef.flatten_up_to
            sc = leaves(kernel_scales) if kernel_scales is not None else [1.0] * len(flat_p)
            steps, by_kernel, accs = [], [], []
            for p, g, m, v, row, col, diag, s in zip(flat_p, leaves(grads), leaves(state.mom), leaves(state.rms),
                                                     leaves(state.fac_row), leaves(state.fac_col),
                                                     leaves(state.fac_diag), sc):
                shape = p.shape
                p1, g1 = jnp.reshape(p, m[0].shape), jnp.reshape(g, m[0].shape).astype(jnp.float32)
                acc = update_acc(Acc(m, v, row, col, diag), g1, b_m, b_v, b_f)
                # eps_scaling is "none" with pallas (__post_init__): the kernel has the reference's ε
                if self.impl == "pallas" and p1.size >= self.fused_min_size and adafac_pallas.applies(p1.shape):
                    new_p, new_m, new_v = adafac_pallas.update_matrix(
                        nn, p1.astype(jnp.float32), g1, Acc(m, v, row, col, diag), acc, (b_m, b_v, b_f), t, hp, s,
                        precision=jax.config.jax_default_matmul_precision)
                    by_kernel.append(new_p.astype(p.dtype).reshape(shape))
                    steps.append(jnp.zeros(shape, jnp.float32))  # unused (the kernel's params replace these)
                    accs.append(acc._replace(m=new_m, v=new_v))
                    continue
                direction, magnitude = dir_mag(nn, p1, g1, acc, t, norm_eps(shape, hp.eps_scaling))
                # the sign on the constant: XLA folds step_mult and a constant μP scale as it did in p - step * scale
                steps.append((direction * jnp.exp(hp.exp_mult * magnitude) * -hp.step_mult).reshape(shape))
                by_kernel.append(None)
                accs.append(acc)
            applied = leaves(apply_steps(scaling, state.params, treedef.unflatten(steps)))
            new_params = treedef.unflatten([a if k is None else k for a, k in zip(applied, by_kernel)])
            pick = lambda i: treedef.unflatten([a[i] for a in accs])
            return AdafacState(params=new_params, mom=pick(0), rms=pick(1), fac_row=pick(2), fac_col=pick(3),
                               fac_diag=pick(4), iteration=state.iteration + 1, num_steps=state.num_steps)

        def params(state: AdafacState):
            return state.params

        return Optimizer(init=init, update=update, params=params)


def num_meta_params(theta: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(theta)))


# ---------------------------------------------------------------------------------------------------- registration

# config key -> hyper-parameter: the keys a θ file overrides at meta-test (its run name and config.py say so)
CONFIG_KEYS = {"hidden_size": "hidden_size", "adafac_step_mult": "step_mult", "adafac_exp_mult": "exp_mult",
               "lo_clip_grad": "clip_grad", "lo_eps_scaling": "eps_scaling"}


def _register(name: str, is_mup: bool, help: str) -> None:
    from mulo.registry import LearnedSpec, register_learned

    register_learned(LearnedSpec(
        name=name, is_mup=is_mup, help=help, hparams=AdafacHParams,
        hparam_defaults={"step_mult": DEFAULT_STEP_MULT[name]}, implementations=LO_IMPLS,
        config_keys=CONFIG_KEYS, label_key="hidden_size",
        build=lambda hparams, impl: AdafacMLPLO(name=name, hparams=(
            hparams if isinstance(hparams, AdafacHParams) else AdafacHParams.from_dict(hparams)), impl=impl)))


_register("small_fc_mlp", False, "the Adafactor-MLP LO in standard parametrisation")
_register("mup_small_fc_mlp", True, "the μLO: the Adafactor-MLP LO, each step times the task's μP update scale")
