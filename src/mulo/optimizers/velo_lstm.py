"""VeLO's per-tensor LSTM (``mulo.optimizers.velo``): its 30 per-tensor inputs (HyperV2's, or mulo-v1's 28), the loss
buffer they read, and the mix layer + LSTM that turn them into each tensor's mixing controls and learning-rate
multiplier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FRACTION_TIMESCALES = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NUM_LOSS_EMAS = 10  # 9 features: each EMA but the longest, relative to the next longer one and its running minimum
LOSS_MIN_INIT = 999999999999.0  # the loss buffer's initial running minimum (HyperV2's)
MAX_RANK = 5  # rank one-hot: ranks 0 … 4; rank >= 5 is all zeros (HyperV2's)
# HyperV2's LSTM inputs in its (sorted-key) order: fraction_left, loss_features, mean_rms, rank, var_m, var_rms
LSTM_GROUPS = (("fraction_left", len(FRACTION_TIMESCALES)), ("loss_features", NUM_LOSS_EMAS - 1), ("mean_rms", 1),
               ("rank", MAX_RANK), ("var_m", 3), ("var_rms", 3))
LSTM_FEATURES = sum(n for _, n in LSTM_GROUPS)  # 30
SEMANTICS = "hyperv2"  # VeloHParams.semantics: the default, Google's HyperV2
MULO_V1 = "mulo-v1"  # mulo's earlier rule (θ files without a semantics entry hold it)
LSTM_FEATURES_V1 = 28


def lstm_features(semantics: str) -> int:
    return LSTM_FEATURES_V1 if semantics == MULO_V1 else LSTM_FEATURES


def fraction_embedding(fraction: jax.Array) -> jax.Array:
    return jnp.tanh(10.0 * (jnp.asarray(fraction, jnp.float32) - jnp.asarray(FRACTION_TIMESCALES, jnp.float32)))


def loss_decays(num_steps: jax.Array, semantics: str = SEMANTICS) -> jax.Array:
    """EMA decays for half-lives log-spaced from 10 steps to ``num_steps`` (>= 1; below 10 the half-lives fall from 10
    to ``num_steps``, as HyperV2's; mulo-v1: at least 10)."""
    steps = jnp.asarray(num_steps, jnp.float32)
    top = jnp.log10(jnp.maximum(steps, 10.0) if semantics == MULO_V1 else steps)
    return jnp.exp(-1.0 / jnp.logspace(1.0, top, NUM_LOSS_EMAS))


def update_loss_buffer(means, running_min, decays, iteration, loss):
    """New (means, running_min) after ``loss`` (clipped to twice the current bias-corrected maximum)."""
    corrected = means / (1.0 - decays ** (iteration + 1))
    approx_max = jnp.where(iteration == 0, loss, jnp.max(corrected))
    loss = jnp.minimum(jnp.abs(approx_max) * 2.0, loss)
    means = means * decays + loss * (1.0 - decays)
    return means, jnp.minimum(running_min, means / (1.0 - decays ** (iteration + 1)))


def loss_features(means, running_min, decays, iteration) -> jax.Array:
    """9 features in [-1, 1]: each shorter EMA relative to its running minimum and the next longer one (0 at first)."""
    corrected = means / (1.0 - decays ** jnp.maximum(iteration, 1))
    den = jnp.maximum(1e-8, corrected[1:] - running_min[:-1])
    feat = jnp.clip((corrected[:-1] - running_min[:-1]) / den - 1.0, -1.0, 1.0)
    return jnp.where(iteration <= 2, 0.0 * feat, feat)


def _clip_log_abs(v):
    return jnp.clip(jnp.log(1e-8 + jnp.abs(10.0 * v)), -5.0, 5.0) * 0.5


def tensor_features(p, m, v, fraction, loss_feats, semantics: str = SEMANTICS) -> jax.Array:
    """The LSTM's ``LSTM_FEATURES`` inputs for one tensor in ``LSTM_GROUPS`` order (``m``, ``v``: its accumulator
    tuples before this step's gradient)."""
    norm = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(jnp.square(p))))
    # mean((x − c)² · norm²): the reductions read the accumulators themselves, nothing of p's size is written
    spread = lambda x, centre: jnp.mean(jnp.square(x - centre)) * jnp.square(norm)
    means_m = [jnp.mean(x) for x in m]
    var_m = jnp.stack([spread(x, c) for x, c in zip(m, means_m)])
    mean_rms = jnp.mean(v[0]) * norm
    var_rms = jnp.stack([spread(v[0], c) for c in means_m])  # around the momenta's means (HyperV2's)
    rank = int(np.sum(np.asarray(p.shape) > 1))
    if semantics == MULO_V1:
        var_own = spread(v[0], jnp.mean(v[0]))
        return jnp.concatenate([fraction_embedding(fraction), loss_feats, _clip_log_abs(var_m),
                                _clip_log_abs(mean_rms)[None], _clip_log_abs(var_own)[None],
                                jax.nn.one_hot(min(rank, MAX_RANK - 1), MAX_RANK)])
    return jnp.concatenate([fraction_embedding(fraction), loss_feats, _clip_log_abs(mean_rms)[None],
                            jax.nn.one_hot(rank, MAX_RANK), _clip_log_abs(var_m), _clip_log_abs(var_rms)])


def _dense(w, b, x):
    return x @ w + b


def lstm_controls(rnn: dict, x: jax.Array, h: jax.Array, c: jax.Array, semantics: str = SEMANTICS):
    """(controls (T, param_inits), lr_mult (T,), h, c) for the (T, LSTM_FEATURES) per-tensor inputs ``x``.
    Each row is one tensor; the mix layer's max over rows is the only coupling, so permuting tensors permutes the
    outputs."""
    # HyperV2's mix layer: its first linear (mix0) is computed and discarded there, so it is not computed here
    if semantics == MULO_V1:  # the 2-layer embedding
        mix = jax.nn.relu(_dense(rnn["mix1_w"], rnn["mix1_b"], jax.nn.relu(_dense(rnn["mix0_w"], rnn["mix0_b"], x))))
    else:
        mix = jax.nn.relu(_dense(rnn["mix1_w"], rnn["mix1_b"], x))
    x = _dense(rnn["in_w"], rnn["in_b"], x) + jnp.max(mix, axis=0, keepdims=True)
    gates = x @ rnn["lstm_wx"] + h @ rnn["lstm_wh"] + rnn["lstm_b"]
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    controls = _dense(rnn["ctrl_w"], rnn["ctrl_b"], h)
    lr_mult = _dense(rnn["lr_w"], rnn["lr_b"], h)[:, 0]
    return controls, lr_mult, h, c
