"""VeLO's hypernetwork learned optimizer: ``velo`` (SP) and ``mup_velo`` (μVeLO, reference_design.md §1.4).

The update rule is Google's ``HyperV2`` (learned_optimization, ``research/general_lopt/hyper_v2.py``) exactly, with
every input, order, constant and state of it, quirks included, so that a HyperV2 θ (VeLO's released weights,
``velo_weights``) maps one to one onto this module's θ. A per-tensor LSTM reads per-tensor features and produces, for
every tensor, ``param_inits`` mixing controls and a learning-rate multiplier; the controls mix a bank of
``param_inits`` small per-parameter MLPs into the one MLP that updates that tensor:

* **LSTM inputs** (30 per tensor, ``LSTM_FEATURES``, in HyperV2's sorted-key order): 9 embeddings
  ``tanh(10 (f − τ))`` of the fraction of training done f = step / num_steps (τ = 0.03 … 1.1); 9 loss-buffer features (EMAs of the loss at
  10 half-lives log-spaced from 10 steps to ``num_steps``, below 10 too, each but the longest relative to its running
  minimum and the next); then, for the parameter-RMS-normalised tensor (the accumulators *before* this step's
  gradient): the clipped log of the mean of the RMS accumulator (1), a one-hot of the tensor's rank (5; dimensions > 1
  counted; rank >= 5 is all zeros), of the variance of each momentum (3), and of the mean square of the RMS
  accumulator's deviation from each momentum's mean (3: HyperV2 subtracts the momentum's mean, not the RMS's own).
* **Mix layer**: ``relu(linear_1(x))``, max over all tensors, added to ``linear_2(x)``: the LSTM's input. HyperV2
  also computes a first ``linear(x)`` and discards it; its weights (``mix0_*``) are kept in θ, unused, so that θ maps
  one to one. The LSTM (haiku's: gates i, g, f, o, forget bias +1) starts from the initial state stored in θ
  (``init_h``, ``init_c``, meta-trained in VeLO's released weights).
* **Per-parameter MLP** (30 inputs → ``ff_hidden_size`` × ``ff_hidden_layers`` ReLU → 3): g, clip(g, ±0.1), p,
  momenta (3), RMS (1), m·rsqrt(RMS + 1e-6) (3), rsqrt(RMS + 1e-6) (1), Adafactor-normalised g (3), g·rsqrt(RMS) (1),
  the Adafactor row and column second moments (3 + 3, an unfactored tensor's own twice), their rsqrt (3 + 3) and the
  Adafactor-normalised momenta (3; ``m · v**-0.5`` without ε for unfactored tensors) (``PARAM_FEATURES``, 14 groups),
  each column normalised over the tensor by its second moment. Its weights are ``interp_mult · mean_k(control_k ·
  θ_k)`` over the bank (HyperV2: interp_mult 100).
* **Step**: ``direction · exp(exp_mult · magnitude) · step_mult · lr_mult``, times RMS(p) when ``param_scale_mult``
  (VeLO's) and times the tensor's μP update scale for ``mup_velo``, which drops the RMS(p) factor (the μLO paper's
  μVeLO: it is not width invariant, and is 0 for zero-initialised readouts). Gradients are clipped to ±1000.

Two implementations of the per-parameter MLP compute the same function (config key ``lo_impl``):

* ``reference``: the (*p.shape, 30) feature stack, normalised, and matmuls on its trailing axis (the oracle);
* ``fused`` (default): the column normalisers folded into the mixed first layer's weights, the row / column
  Adafactor columns contracted on their factored shapes, the MLP unrolled into one array expression per hidden unit
  that XLA fuses into one loop over the tensor, so neither the stack nor the activations are written to memory
  (``dir_mag_fused``; BENCHMARKS.md, "μVeLO", has the cost of both).

``num_steps`` (given to ``init(params, num_steps)``: meta-test's ``num_inner_steps``, meta-train's episode length)
must be >= 1, and every ``update`` needs the loss (VeLO's loss features): both are refused otherwise, as HyperV2 does.
``semantics="mulo-v1"`` (hyper-parameter ``semantics``; default ``"hyperv2"``) is mulo's earlier VeLO, kept only so
that θ trained under it still runs as it was trained: 28 LSTM inputs (var of the RMS around its own mean, one value;
ranks >= 4 share the last one-hot bit; mean and var of the RMS before the rank), a 2-layer mix layer (mix0 then mix1,
H×H), the LSTM starting from zeros (no init_h / init_c in θ), m·(v + 1e-6)^-0.5 for unfactored tensors and loss
half-lives of at least 10 steps. θ files written before HyperV2 parity carry no ``semantics`` and load as
``"mulo-v1"``, never as HyperV2; their θ has no HyperV2 meaning, so there is no converter to it.

The LSTM and its inputs are in ``velo_lstm``, the per-parameter MLP (both implementations) in ``velo_mlp``; this
module holds the hyper-parameters, the state, the update that joins them and the registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mulo.errors import ConfigError
from mulo.hparams import POSITIVE, HParamsDict, hparam
from mulo.optimizers.base import Optimizer, check_variant
from mulo.optimizers.features import Acc, decay_from_param, init_acc, update_acc
from mulo.optimizers.mup_scale import apply_steps, check_scales, step_scaling
from mulo.optimizers.velo_lstm import (LOSS_MIN_INIT, MULO_V1, NUM_LOSS_EMAS, SEMANTICS, loss_decays, loss_features,
                                       lstm_controls, lstm_features, tensor_features, update_loss_buffer)
from mulo.optimizers.velo_mlp import IMPLEMENTATIONS, PARAM_FEATURES, mix_mlp


def diag_mom_eps(semantics: str) -> float:
    """ε of an unfactored tensor's m·(v + ε)^-0.5 feature: none in HyperV2."""
    return 1e-6 if semantics == MULO_V1 else 0.0


GRAD_CLIP = 1000.0
NUM_OUTPUTS = 3  # direction, magnitude, unused (VeLO's)
DEFAULTS = {"velo": {"interp_mult": 100.0, "param_scale_mult": True},
            "mup_velo": {"interp_mult": 1.0, "param_scale_mult": False}}


@dataclass(frozen=True)
class VeloHParams(HParamsDict):
    """Hyper-parameters of VeLO, stored with θ. Defaults: the reference's μVeLO sizes (LSTM 16, 8 MLPs of 2 hidden
    layers of 4)."""

    lstm_hidden_size: int = hparam(16, "hidden units of the per-tensor LSTM", min=1)
    param_inits: int = hparam(8, "per-parameter MLPs in the bank the LSTM mixes", min=1)
    ff_hidden_size: int = hparam(4, "hidden units of each per-parameter MLP", min=1)
    ff_hidden_layers: int = hparam(2, "hidden layers of each per-parameter MLP", min=1)
    interp_mult: float = 1.0
    step_mult: float = hparam(0.001, "step multiplier", min=POSITIVE)
    exp_mult: float = hparam(0.001, "magnitude exponent multiplier", min=0.0)
    param_scale_mult: bool = False
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    semantics: str = SEMANTICS  # the update rule θ was trained under: SEMANTICS or MULO_V1
    KIND = "VeLO"  # in error lines (not a field)

    @classmethod
    def from_dict(cls, d: dict) -> "VeloHParams":
        # written before HyperV2 parity: the earlier rule, explicitly (never silently run as HyperV2)
        return super().from_dict(d if "semantics" in d else {**d, "semantics": MULO_V1})

    def __post_init__(self):
        for key in ("lstm_hidden_size", "param_inits", "ff_hidden_size", "ff_hidden_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"VeLO's {key} must be >= 1, got {getattr(self, key)}")
        if len(self.momentum_decays) != 3 or len(self.rms_decays) != 1 or len(self.adafactor_decays) != 3:
            raise ConfigError("VeLO needs 3 momentum, 1 RMS and 3 Adafactor decays (30 features per parameter)")
        if self.semantics not in (SEMANTICS, MULO_V1):
            raise ConfigError(f"unknown VeLO semantics {self.semantics!r}; expected {SEMANTICS!r} or {MULO_V1!r}")


class VeloState(NamedTuple):
    params: Any
    mom: Any  # per tensor, 3 arrays of its shape (scalars as rank 1)
    rms: Any
    fac_row: Any
    fac_col: Any
    fac_diag: Any
    lstm_h: jax.Array  # (num_tensors, lstm_hidden_size)
    lstm_c: jax.Array
    loss_means: jax.Array  # (NUM_LOSS_EMAS,)
    loss_min: jax.Array
    loss_decays: jax.Array
    iteration: jax.Array
    num_steps: jax.Array


# ---------------------------------------------------------------------------------------- the learned optimizer


def _normal(key, fan_in, shape):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) / np.sqrt(fan_in)


@dataclass(frozen=True)
class VeloLO:
    """``velo`` (SP: update scales ignored) or ``mup_velo`` (step × the tensor's μP update scale)."""

    name: str
    hparams: VeloHParams = field(default_factory=VeloHParams)
    impl: str = "fused"  # one of IMPLEMENTATIONS (config key lo_impl): how the per-parameter MLP is computed
    needs_loss: ClassVar[bool] = True  # update reads the loss, init the planned length (mulo.optimizers.export)

    def __post_init__(self):
        check_variant("VeLO variant", self.name, tuple(DEFAULTS), self.impl, IMPLEMENTATIONS,
                      f"VeLO has {' and '.join(IMPLEMENTATIONS)} (no Pallas kernel)")

    @property
    def uses_mup(self) -> bool:
        return self.name == "mup_velo"

    def init_theta(self, key: jax.Array) -> dict:
        hp = self.hparams
        lh, k, fh, nl = hp.lstm_hidden_size, hp.param_inits, hp.ff_hidden_size, hp.ff_hidden_layers
        keys = iter(jax.random.split(key, 8 + nl + 1))
        n_in, v1 = lstm_features(hp.semantics), hp.semantics == MULO_V1
        mix_in = lh if v1 else n_in  # mulo-v1's mix1 reads mix0's output
        rnn = {"mix0_w": _normal(next(keys), n_in, (n_in, lh)), "mix0_b": jnp.zeros((lh,)),
               "mix1_w": _normal(next(keys), mix_in, (mix_in, lh)), "mix1_b": jnp.zeros((lh,)),
               "in_w": _normal(next(keys), n_in, (n_in, lh)), "in_b": jnp.zeros((lh,)),
               "lstm_wx": _normal(next(keys), lh, (lh, 4 * lh)), "lstm_wh": _normal(next(keys), lh, (lh, 4 * lh)),
               "lstm_b": jnp.zeros((4 * lh,)),
               "ctrl_w": _normal(next(keys), lh, (lh, k)), "ctrl_b": jnp.zeros((k,)),
               "lr_w": _normal(next(keys), lh, (lh, 1)), "lr_b": jnp.zeros((1,)),
               **({} if v1 else {"init_h": jnp.zeros((lh,)), "init_c": jnp.zeros((lh,))})}  # initial state
        sizes = [PARAM_FEATURES] + [fh] * nl + [NUM_OUTPUTS]
        ff = {}
        for i in range(nl + 1):
            ff[f"w{i}"] = _normal(next(keys), sizes[i], (k, sizes[i], sizes[i + 1]))
            ff[f"b{i}"] = jnp.zeros((k, sizes[i + 1]), jnp.float32)
        return {"rnn": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), rnn), "ff": ff}

    def opt_fn(self, theta: Any, update_scales: Any = None) -> Optimizer:
        hp = self.hparams
        scaling = step_scaling(update_scales, self.uses_mup)  # the μLO's per-tensor scales (mulo.optimizers.mup_scale)
        dir_mag = IMPLEMENTATIONS[self.impl]
        b_m = decay_from_param(hp.momentum_decays, jnp.zeros((3,)))
        b_v = decay_from_param(hp.rms_decays, jnp.zeros((1,)))
        b_f = decay_from_param(hp.adafactor_decays, jnp.zeros((3,)))

        def init(params, num_steps: int = 1) -> VeloState:
            if isinstance(num_steps, (int, np.integer)) and num_steps < 1:
                raise ValueError(f"VeLO needs the planned number of steps (num_steps >= 1), got {num_steps}")
            check_scales(update_scales, params, self.uses_mup)
            accs = jax.tree.map(lambda p: init_acc(jnp.asarray(p), 3, 1, 3), params)
            pick = lambda i: jax.tree.map(lambda p, a: a[i], params, accs)
            n = len(jax.tree.leaves(params))
            # the stored initial state, once per tensor; two buffers (loops donate the state)
            start = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n, hp.lstm_hidden_size)) + 0.0
            v1 = hp.semantics == MULO_V1  # no stored initial state: zeros
            init_h, init_c = (0.0, 0.0) if v1 else (theta["rnn"]["init_h"], theta["rnn"]["init_c"])
            steps = jnp.maximum(jnp.asarray(num_steps, jnp.int32), 1)
            return VeloState(params, pick(0), pick(1), pick(2), pick(3), pick(4), start(init_h),
                             start(init_c), jnp.zeros((NUM_LOSS_EMAS,), jnp.float32),
                             jnp.full((NUM_LOSS_EMAS,), LOSS_MIN_INIT, jnp.float32),
                             loss_decays(steps, hp.semantics), jnp.asarray(0, jnp.int32), steps)

        def update(state: VeloState, grads, loss=None, key=None) -> VeloState:
            del key
            if loss is None:
                raise ValueError("VeLO needs the training loss at every step (its loss features): update(state, "
                                 "grads, loss)")
            loss = jnp.asarray(loss, jnp.float32)
            means, running_min = update_loss_buffer(state.loss_means, state.loss_min, state.loss_decays,
                                                    state.iteration, loss)
            loss_feats = loss_features(means, running_min, state.loss_decays, state.iteration + 1)
            grads = jax.tree.map(lambda g: jnp.clip(g.astype(jnp.float32), -GRAD_CLIP, GRAD_CLIP), grads)
            fraction = state.iteration / state.num_steps.astype(jnp.float32)
            flat_p, treedef = jax.tree.flatten(state.params)
            leaves = lambda tree: treedef.flatten_up_to(tree)
            rows = [tensor_features(jnp.reshape(p, m[0].shape), m, v, fraction, loss_feats, hp.semantics)
                    for p, m, v in zip(flat_p, leaves(state.mom), leaves(state.rms))]
            controls, lr_mult, h, c = lstm_controls(theta["rnn"], jnp.stack(rows), state.lstm_h, state.lstm_c,
                                                    hp.semantics)
            steps, out_acc = [], []
            for i, (p, g, m, v, row, col, diag) in enumerate(zip(
                    flat_p, leaves(grads), leaves(state.mom), leaves(state.rms), leaves(state.fac_row),
                    leaves(state.fac_col), leaves(state.fac_diag))):
                p1, g1 = jnp.reshape(p, m[0].shape).astype(jnp.float32), jnp.reshape(g, m[0].shape)
                acc = update_acc(Acc(m, v, row, col, diag), g1, b_m, b_v, b_f)
                direction, magnitude = dir_mag(mix_mlp(theta["ff"], controls[i], hp.interp_mult), p1, g1, acc,
                                               hp.ff_hidden_layers, diag_mom_eps(hp.semantics))
                step = direction * jnp.exp(hp.exp_mult * magnitude) * hp.step_mult * lr_mult[i]
                if hp.param_scale_mult:
                    step = step * jnp.sqrt(jnp.mean(jnp.square(p1)) + 1e-9)
                steps.append(-step.reshape(p.shape))
                out_acc.append(acc)
            pick = lambda j: treedef.unflatten([a[j] for a in out_acc])
            new_params = apply_steps(scaling, state.params, treedef.unflatten(steps))
            return VeloState(new_params, pick(0), pick(1), pick(2), pick(3), pick(4), h, c, means,
                             running_min, state.loss_decays, state.iteration + 1, state.num_steps)

        return Optimizer(init=init, update=update, params=lambda state: state.params)


# ---------------------------------------------------------------------------------------------------- registration

CONFIG_KEYS = {"velo_lstm_hidden_size": "lstm_hidden_size", "velo_param_inits": "param_inits",
               "velo_ff_hidden_size": "ff_hidden_size", "velo_ff_hidden_layers": "ff_hidden_layers",
               "adafac_step_mult": "step_mult", "adafac_exp_mult": "exp_mult"}


def _register(name: str, is_mup: bool, help: str) -> None:
    from mulo.registry import LearnedSpec, register_learned

    register_learned(LearnedSpec(
        name=name, is_mup=is_mup, help=help, hparams=VeloHParams, hparam_defaults=DEFAULTS[name],
        implementations=tuple(IMPLEMENTATIONS), config_keys=CONFIG_KEYS,
        label_key="velo_lstm_hidden_size",
        build=lambda hparams, impl: VeloLO(name=name, hparams=(
            hparams if isinstance(hparams, VeloHParams) else VeloHParams.from_dict(hparams)), impl=impl)))


_register("velo", False, "VeLO's LSTM hypernetwork LO (standard parametrisation)")
_register("mup_velo", True, "μVeLO: VeLO with each step times the task's μP update scale and no RMS(p) factor")
