"""``velo`` / ``mup_velo`` against an independent float64 numpy HyperV2.

The reference below is written from the formulas of Google's HyperV2 (learned_optimization,
``research/general_lopt/hyper_v2.py`` and ``learned_optimizers/common.py``), not from mulo's code: its θ is in
HyperV2's own layout (haiku module names, the first MLP layer one weight per feature group, the LSTM's stacked
[input; hidden] weight, the initial state), its accumulators carry the decays on a trailing axis, scalars keep their
shape () in the LSTM features, and the loss buffer, fraction embedding, mix layer (its discarded first linear
included), haiku LSTM and per-parameter MLP follow HyperV2 step by step. mulo's θ is that θ mapped by
``velo_weights.theta_from_hyperv2``; μVeLO is the same rule with interp_mult 1, no RMS(p) factor and each step times
the tensor's μP update scale (the μLO paper's μVeLO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.optimizers import velo as V
from mulo.optimizers import velo_lstm as VL
from mulo.optimizers.velo_weights import GROUP_SIZES, theta_from_hyperv2

SIZES = {"lstm_hidden_size": 8, "param_inits": 4, "ff_hidden_size": 4, "ff_hidden_layers": 2}
# HyperV2's decays are float32 arrays (jnp.asarray of the initial decays): 1 − β of float32(0.999) is 9.99987e-4,
# 1.3e-5 away from 0.001, so the float64 reference uses the float32 values
DECAYS_M, DECAYS_V, DECAYS_F = (tuple(float(np.float32(b)) for b in d) for d in ((0.9, 0.99, 0.999), (0.999,),
                                                                                 (0.9, 0.99, 0.999)))
LOSSES = (3.0, 1.0, 4.0, 2.0, 5.0, 1.5)  # the loss features leave 0 and -1 from the third step
NUM_STEPS = 7  # below 10: the loss half-lives fall from 10 to 7


# ------------------------------------------------------------------------------------- HyperV2 θ in its own layout


def hyperv2_theta(seed: int, lstm_hidden_size: int, param_inits: int, ff_hidden_size: int, ff_hidden_layers: int,
                  n_in: int = 30) -> dict:
    lh, k, fh, nl = lstm_hidden_size, param_inits, ff_hidden_size, ff_hidden_layers
    rng = np.random.default_rng(seed)
    lin = lambda i, o, s=1.0: {"w": s * rng.normal(size=(i, o)) / np.sqrt(i), "b": 0.1 * rng.normal(size=(o,))}
    rnn = {"linear": lin(n_in, lh), "linear_1": lin(n_in, lh), "linear_2": lin(n_in, lh),
           "rnn/linear": lin(2 * lh, 4 * lh), "rnn_to_controls": lin(lh, k), "step_size": lin(lh, 1)}
    ff = {f"w0__{i}": rng.normal(size=(k, n, fh)) / np.sqrt(30) for i, n in enumerate(GROUP_SIZES)}
    widths = [fh] * nl + [3]
    for i in range(nl + 1):
        if i:
            ff[f"w{i}"] = rng.normal(size=(k, widths[i - 1], widths[i])) / np.sqrt(widths[i - 1])
        ff[f"b{i}"] = 0.1 * rng.normal(size=(k, widths[i]))
    state = {"hidden": 0.5 * rng.normal(size=(1, lh)), "cell": 0.5 * rng.normal(size=(1, lh))}
    return {"lstm_init_state": state, "rnn_params": rnn, "ff_mod_stack": {"~": ff}}


# ------------------------------------------------------------------------------------- the float64 reference


def _factored_dims(shape):
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    return int(order[-2]), int(order[-1])


def _safe_rsqrt(x):
    return 1.0 / np.sqrt(np.maximum(x, 1e-9))


def _clip_log_abs(v):
    return np.clip(np.log(1e-8 + np.abs(v * 10.0)), -5, 5) * 0.5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class HyperV2Reference:
    """HyperV2 (lstm sizes from θ), float64, on a dict of numpy params; ``mup``: the μLO paper's μVeLO."""

    def __init__(self, theta, num_steps, mup_scales=None, step_mult=0.001, exp_mult=0.001):
        self.theta, self.scales = theta, mup_scales
        self.interp = 1.0 if mup_scales is not None else 100.0
        self.param_scale_mult = mup_scales is None
        self.step_mult, self.exp_mult, self.num_steps = step_mult, exp_mult, num_steps

    def init(self, params):
        decays = np.exp(-1.0 / np.logspace(1, np.log10(self.num_steps), 10))
        fac = {}
        for k, p in params.items():
            dims = _factored_dims(p.shape)
            if dims is None:
                fac[k] = (None, None, np.zeros(p.shape + (3,)))
            else:
                d1, d0 = dims
                fac[k] = (np.zeros(tuple(np.delete(p.shape, d0)) + (3,)),
                          np.zeros(tuple(np.delete(p.shape, d1)) + (3,)), None)
        n = len(params)
        init = self.theta["lstm_init_state"]
        return {"params": dict(params), "m": {k: np.zeros(p.shape + (3,)) for k, p in params.items()},
                "rms": {k: np.zeros(p.shape + (1,)) for k, p in params.items()}, "fac": fac, "iteration": 0,
                "h": np.tile(init["hidden"], (n, 1)), "c": np.tile(init["cell"], (n, 1)),
                "loss": {"means": np.zeros(10), "iteration": 0, "running_min": 999999999999.0 * np.ones(10),
                         "decays": decays}}

    # the loss buffer (BufferLossAccumulators)
    @staticmethod
    def _loss_update(buf, loss):
        d, it = buf["decays"], buf["iteration"]
        cor = buf["means"] / (1 - d ** (it + 1))
        approx_max = loss if it == 0 else np.max(cor)
        loss = min(abs(approx_max) * 2, loss)
        means = buf["means"] * d + loss * (1 - d)
        running_min = np.minimum(buf["running_min"], means / (1 - d ** (it + 1)))
        return {"means": means, "iteration": it + 1, "running_min": running_min, "decays": d}

    @staticmethod
    def _loss_features(buf):
        d = buf["decays"]
        cor = buf["means"] / (1 - d ** buf["iteration"])
        den = np.maximum(1e-8, cor[1:] - buf["running_min"][:-1])
        feat = np.clip((cor[:-1] - buf["running_min"][:-1]) / den - 1.0, -1, 1)
        return feat * 0 if buf["iteration"] <= 2 else feat

    @staticmethod
    def _lstm_features(p, m, rms, fraction, loss_feats):
        norm = 1.0 / np.sqrt(max(1e-9, np.mean(p ** 2)))
        m, rms = m * norm, rms * norm
        axes = tuple(range(p.ndim))  # () for a scalar: no reduction, as in HyperV2
        mean_m = np.mean(m, axis=axes, keepdims=True)
        inputs = {"fraction_left": np.tanh((fraction - np.array([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1]))
                                           * 10),
                  "loss_features": loss_feats,
                  "var_m": _clip_log_abs(np.mean(np.square(m - mean_m), axis=axes)),
                  "mean_rms": _clip_log_abs(np.reshape(np.mean(rms, axis=axes, keepdims=True), [1])),
                  "var_rms": _clip_log_abs(np.mean(np.square(rms - mean_m), axis=axes)),
                  "rank": np.eye(6)[min(int(np.sum(np.asarray(p.shape) > 1)), 5)][:5]}  # zeros for rank >= 5
        return np.concatenate([np.atleast_1d(inputs[key]) for key in sorted(inputs)])

    def _rnn(self, x, h, c):
        r = self.theta["rnn_params"]
        lin = lambda name, v: v @ r[name]["w"] + r[name]["b"]
        np.maximum(lin("linear", x), 0)  # computed and discarded, as in HyperV2
        mix = np.maximum(lin("linear_1", x), 0)
        x = lin("linear_2", x) + np.max(mix, axis=0, keepdims=True)
        gates = lin("rnn/linear", np.concatenate([x, h], axis=-1))
        i, g, f, o = np.split(gates, 4, axis=-1)
        c = _sigmoid(f + 1) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return lin("rnn_to_controls", h), lin("step_size", h)[:, 0], h, c

    @staticmethod
    def _fac_update(fac, g):
        v_row, v_col, v_diag = fac
        gsq = g * g + 1e-30
        dims = _factored_dims(g.shape)
        rows, cols, diags, fac_g, factors = [], [], [], [], []
        for i, b in enumerate(DECAYS_F):
            if dims is None:
                v = b * v_diag[..., i] + (1 - b) * gsq
                diags.append(v)
                fac_g.append(g * _safe_rsqrt(v + 1e-9))
            else:
                d1, d0 = dims
                r = b * v_row[..., i] + (1 - b) * np.mean(gsq, axis=d0)
                cc = b * v_col[..., i] + (1 - b) * np.mean(gsq, axis=d1)
                rd1 = d1 - 1 if d1 > d0 else d1
                rf = _safe_rsqrt(r / (np.mean(r, axis=rd1, keepdims=True) + 1e-9))
                cf = _safe_rsqrt(cc)
                rows.append(r)
                cols.append(cc)
                factors.append(np.expand_dims(rf, d0) * np.expand_dims(cf, d1))
                fac_g.append(g * factors[-1])
        st = lambda xs: np.stack(xs, axis=-1) if xs else None
        return (st(rows), st(cols), st(diags)), st(fac_g), factors

    def _ff(self, ff, p, g, m, rms, fac_g, fac, factors):
        """HyperV2's _ff_mod: the new p."""
        v_row, v_col, v_diag = fac
        scalar = p.ndim == 0
        if scalar:
            p, g, m, rms, fac_g, v_diag = (x[None] for x in (p, g, m, rms, fac_g, v_diag))
        rsqrt = 1.0 / np.sqrt(rms + 1e-6)
        inps = [g[..., None], np.clip(g, -0.1, 0.1)[..., None], p[..., None], m, rms, m * rsqrt, rsqrt, fac_g,
                g[..., None] * rsqrt]
        dims = _factored_dims(g.shape)
        if dims is not None:
            d1, d0 = dims
            row = np.broadcast_to(np.expand_dims(v_row, d0), g.shape + (3,))
            col = np.broadcast_to(np.expand_dims(v_col, d1), g.shape + (3,))
            inps += [row, col, 1 / np.sqrt(row + 1e-8), 1 / np.sqrt(col + 1e-8),
                     m * np.stack(factors, axis=-1)]
        else:
            inps += [v_diag, v_diag, 1 / np.sqrt(v_diag + 1e-8), 1 / np.sqrt(v_diag + 1e-8), m * v_diag ** -0.5]
        axes = tuple(range(p.ndim))
        inps = [x / np.sqrt(1e-5 + np.mean(np.square(x), axis=axes, keepdims=True)) for x in inps]
        o = sum(x @ ff[f"w0__{i}"] for i, x in enumerate(inps)) + ff["b0"]
        layer = 1
        while f"w{layer}" in ff:
            o = np.maximum(o, 0) @ ff[f"w{layer}"] + ff[f"b{layer}"]
            layer += 1
        direction, magnitude = o[..., 0], o[..., 1]
        step = direction * np.exp(magnitude * self.exp_mult) * self.step_mult
        if self.param_scale_mult:
            step = step * np.sqrt(np.mean(np.square(p)) + 1e-9)
        return step[0] if scalar else step

    def update(self, s, grads, loss):
        buf = self._loss_update(s["loss"], loss)
        loss_feats = self._loss_features(buf)
        grads = {k: np.clip(g, -1000.0, 1000.0) for k, g in grads.items()}
        fraction = s["iteration"] / self.num_steps
        keys = sorted(s["params"])  # the pytree order of a dict
        x = np.stack([self._lstm_features(s["params"][k], s["m"][k], s["rms"][k], fraction, loss_feats)
                      for k in keys])
        controls, lr_mult, h, c = self._rnn(x, s["h"], s["c"])
        new = {"params": {}, "m": {}, "rms": {}, "fac": {}, "iteration": s["iteration"] + 1, "h": h, "c": c,
               "loss": buf}
        for j, k in enumerate(keys):
            p, g = s["params"][k], grads[k]
            m = np.stack([b * s["m"][k][..., i] + (1 - b) * g for i, b in enumerate(DECAYS_M)], axis=-1)
            rms = np.stack([b * s["rms"][k][..., i] + (1 - b) * g * g for i, b in enumerate(DECAYS_V)], axis=-1)
            fac, fac_g, factors = self._fac_update(s["fac"][k], g)
            ff = {n: self.interp * np.mean(w * controls[j].reshape((-1,) + (1,) * (w.ndim - 1)), axis=0)
                  for n, w in self.theta["ff_mod_stack"]["~"].items()}
            step = self._ff(ff, p, g, m, rms, fac_g, fac, factors) * lr_mult[j]
            if self.scales is not None:
                step = step * self.scales[k]
            new["params"][k], new["m"][k], new["rms"][k], new["fac"][k] = p - step, m, rms, fac
        return new


# ------------------------------------------------------------------------------------- the comparison


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w": (6, 5), "b": (5,), "k3": (2, 3, 4), "k4": (2, 3, 2, 3), "k5": (2, 2, 3, 2, 2), "s": (),
              "zero": (5, 3), "clip": (3, 4)}
    params = {k: 0.05 * rng.normal(size=s) for k, s in shapes.items()}
    params["zero"] = np.zeros(shapes["zero"])  # a zero-initialised readout
    grads = []
    for _ in LOSSES:
        g = {k: rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0) for k, s in shapes.items()}
        g["clip"] = g["clip"] * 5000.0  # mostly beyond ±1000: clipped
        grads.append(g)
    scales = {"w": 1 / 6, "b": 1.0, "k3": 0.5, "k4": 0.25, "k5": 0.5, "s": 1.0, "zero": 1 / 5, "clip": 1 / 3}
    as32 = lambda tree: {k: x.astype(np.float32).astype(np.float64) for k, x in tree.items()}  # exact in both
    return as32(params), [as32(g) for g in grads], scales


def _velo_state(ref_state, lh: int) -> V.VeloState:
    """The reference's state as mulo's (float32; scalars as rank 1; accumulators one array per decay)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    keys = sorted(ref_state["params"])
    per_decay = lambda x, shape: tuple(f32(x[..., i]).reshape(shape) for i in range(x.shape[-1]))
    shape = {k: ref_state["params"][k].shape or (1,) for k in keys}
    fac = {k: ref_state["fac"][k] for k in keys}
    return V.VeloState(
        params={k: f32(ref_state["params"][k]) for k in keys},
        mom={k: per_decay(ref_state["m"][k], shape[k]) for k in keys},
        rms={k: per_decay(ref_state["rms"][k], shape[k]) for k in keys},
        fac_row={k: () if fac[k][0] is None else per_decay(fac[k][0], fac[k][0].shape[:-1]) for k in keys},
        fac_col={k: () if fac[k][1] is None else per_decay(fac[k][1], fac[k][1].shape[:-1]) for k in keys},
        fac_diag={k: () if fac[k][2] is None else per_decay(fac[k][2], shape[k]) for k in keys},
        lstm_h=f32(ref_state["h"]).reshape(-1, lh), lstm_c=f32(ref_state["c"]).reshape(-1, lh),
        loss_means=f32(ref_state["loss"]["means"]), loss_min=f32(ref_state["loss"]["running_min"]),
        loss_decays=f32(ref_state["loss"]["decays"]), iteration=jnp.asarray(ref_state["iteration"], jnp.int32),
        num_steps=jnp.asarray(NUM_STEPS, jnp.int32))


def _mulo_steps(name, impl, theta_hv2, ref_states, grads, scales):
    """mulo's new params after each step, each taken from the reference's state before it."""
    sizes, theta = theta_from_hyperv2(theta_hv2, "test")
    lo = V.VeloLO(name, V.VeloHParams(**sizes, **V.DEFAULTS[name]), impl=impl)
    opt = lo.opt_fn(jax.tree.map(jnp.asarray, theta), scales if lo.uses_mup else None)
    first = opt.init({k: jnp.asarray(p, jnp.float32) for k, p in ref_states[0]["params"].items()}, NUM_STEPS)
    start = _velo_state(ref_states[0], sizes["lstm_hidden_size"])
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(start)):  # init is HyperV2's initial state
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    update = jax.jit(opt.update)
    return [jax.tree.map(np.asarray, opt.params(update(
        _velo_state(state, sizes["lstm_hidden_size"]), {k: jnp.asarray(x, jnp.float32) for k, x in g.items()},
        jnp.float32(loss)))) for state, g, loss in zip(ref_states, grads, LOSSES)]


@pytest.mark.parametrize("name", ["velo", "mup_velo"])
def test_both_paths_take_hyperv2s_float64_steps(name):
    # every step is taken by both from the reference's state (rounded to float32): a float32 trajectory drifts from
    # the float64 one by rounding amplified through the loss features' and the mix layer's couplings, which would
    # compare precisions, not update rules
    theta_hv2 = hyperv2_theta(1, **SIZES)
    params, grads, scales = _problem()
    ref = HyperV2Reference(theta_hv2, NUM_STEPS, mup_scales=scales if name == "mup_velo" else None)
    # each state rounded to float32 (HyperV2's): the reference's step and mulo's then start from the same numbers
    as32 = lambda tree: jax.tree.map(lambda x: np.float32(x).astype(np.float64) if isinstance(x, np.ndarray) else x,
                                     tree, is_leaf=lambda x: x is None)
    states, new_params = [as32(ref.init(params))], []
    for g, loss in zip(grads, LOSSES):
        new = ref.update(states[-1], g, loss)
        new_params.append(new["params"])
        states.append(as32(new))
    worst = {}
    for impl in ("reference", "fused"):
        got = _mulo_steps(name, impl, theta_hv2, states, grads, scales)
        for t in range(len(LOSSES)):
            for k in params:
                before = states[t]["params"][k]
                step_want = before - new_params[t][k]
                step_got = before - got[t][k]
                scale = np.abs(step_want).max()
                assert scale > 0, (t, k)
                # mulo keeps float32 params: p - step rounds to 2 spacings of the new params at most
                rounding = 2 * np.spacing(np.float32(np.abs(got[t][k]).max()))
                err = np.abs(step_got - step_want).max()
                assert err <= 1e-5 * scale + rounding, (impl, t, k, err / scale)
                worst[impl] = max(worst.get(impl, 0.0), max(0.0, err - rounding) / scale)
    print(f"{name}: max relative step error beyond float32 param rounding: {worst}")


def test_theta_maps_one_to_one():
    theta_hv2 = hyperv2_theta(2, **SIZES)
    sizes, theta = theta_from_hyperv2(theta_hv2, "test")
    assert sizes == SIZES
    n_hv2 = sum(np.size(x) for x in jax.tree.leaves(theta_hv2))
    assert sum(np.size(x) for x in jax.tree.leaves(theta)) == n_hv2  # every tensor, nothing added
    lo = V.VeloLO("velo", V.VeloHParams(**sizes, **V.DEFAULTS["velo"]))
    assert jax.tree.map(np.shape, theta) == jax.tree.map(np.shape, lo.init_theta(jax.random.PRNGKey(0)))
    rnn = theta_hv2["rnn_params"]
    np.testing.assert_array_equal(theta["rnn"]["lstm_wh"], rnn["rnn/linear"]["w"][8:].astype(np.float32))
    np.testing.assert_array_equal(theta["rnn"]["mix0_w"], rnn["linear"]["w"].astype(np.float32))
    np.testing.assert_array_equal(theta["ff"]["w0"][:, 3:6], theta_hv2["ff_mod_stack"]["~"]["w0__3"].astype(
        np.float32))  # m's weights: the fourth group, columns 3..5


def test_one_line_errors_for_a_missing_loss_or_length():
    lo = V.VeloLO("velo", V.VeloHParams(**SIZES, **V.DEFAULTS["velo"]))
    opt = lo.opt_fn(lo.init_theta(jax.random.PRNGKey(0)))
    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match="num_steps >= 1"):
        opt.init(params, 0)
    with pytest.raises(ValueError, match="needs the training loss"):
        opt.update(opt.init(params, 5), params, None)
    with pytest.raises(Exception, match="unknown VeLO semantics 'hyperv3'"):
        V.VeloHParams(semantics="hyperv3")


def test_a_theta_file_from_before_hyperv2_parity_runs_its_own_rule(tmp_path):
    """θ files without a semantics entry hold mulo's earlier VeLO: they load as semantics "mulo-v1" (its 28 LSTM
    inputs, 2-layer mix layer, zero initial state), never as HyperV2, and both paths run it alike."""
    import json

    from flax import serialization

    from mulo.errors import CheckpointError
    from mulo.optimizers.theta_io import FORMAT, VERSION, load_theta

    old = V.VeloLO("mup_velo", V.VeloHParams(**SIZES, **V.DEFAULTS["mup_velo"], semantics=VL.MULO_V1))
    theta = jax.tree.map(np.asarray, old.init_theta(jax.random.PRNGKey(0)))
    assert theta["rnn"]["mix1_w"].shape == (8, 8) and "init_h" not in theta["rnn"]
    hp = old.hparams.to_dict()
    del hp["semantics"]  # as written before HyperV2 parity
    write = lambda path, th: path.write_bytes(serialization.msgpack_serialize(
        {"format": FORMAT, "version": VERSION, "header": json.dumps({"lo_name": "mup_velo", "hparams": hp}),
         "theta": th}))
    write(tmp_path / "old.msgpack", theta)
    steps = {}
    for impl in ("reference", "fused"):
        lo, loaded, _ = load_theta(tmp_path / "old.msgpack", impl=impl)
        assert lo.hparams.semantics == VL.MULO_V1
        opt = lo.opt_fn(loaded, {"w": 0.5, "b": 1.0})
        params = {"w": jnp.full((4, 3), 0.1), "b": jnp.zeros((3,))}
        grads = {"w": jnp.cos(jnp.arange(12.0)).reshape(4, 3), "b": jnp.ones((3,))}
        state = opt.update(opt.init(params, 5), grads, jnp.float32(1.0))
        steps[impl] = jax.tree.map(lambda a, b: np.asarray(a - b), params, opt.params(state))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), steps["reference"],
                 steps["fused"])
    assert np.abs(steps["fused"]["w"]).max() > 0
    # its rule: 28 inputs, the rank one-hot last and clamped at rank 4
    p = jnp.ones((2, 2, 2, 2, 2))
    m, v = (jnp.ones_like(p),) * 3, (jnp.ones_like(p),)
    x = VL.tensor_features(p, m, v, 0.5, jnp.zeros((9,)), VL.MULO_V1)
    assert x.shape == (28,) and list(np.asarray(x[-5:])) == [0, 0, 0, 0, 1]
    # a HyperV2-shaped θ under an old header is refused, one line
    write(tmp_path / "mixed.msgpack", jax.tree.map(np.asarray, V.VeloLO("mup_velo", V.VeloHParams(
        **SIZES, **V.DEFAULTS["mup_velo"])).init_theta(jax.random.PRNGKey(0))))
    with pytest.raises(CheckpointError, match="do not match mup_velo") as err:
        load_theta(tmp_path / "mixed.msgpack")
    assert "\n" not in str(err.value)
