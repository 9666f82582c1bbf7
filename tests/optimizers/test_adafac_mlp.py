"""The Adafactor-MLP learned optimizers (small_fc_mlp, mup_small_fc_mlp): features, parametrisation, μP scales,
fused == reference, factored/unfactored paths, θ files, optax export."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.errors import CheckpointError, ConfigError
from mulo.optimizers import (AdafacHParams, AdafacMLPLO, as_optax, build_learned, learned_from_hparams, load_theta,
                             num_meta_params, save_theta)
from mulo.optimizers import adafac_mlp as A
from mulo.optimizers.features import factored_dims
from mulo.tasks.base import ParamMeta, update_scales

KEY = jax.random.PRNGKey(0)


def _lo(name="mup_small_fc_mlp", impl="fused", **hp):
    # fused_min_size=0: the fused path for every tensor, however small (the default keeps tiny ones on the reference)
    return AdafacMLPLO(name, AdafacHParams(**hp), impl=impl, fused_min_size=0)


def _rand(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape)


def _steps(lo, theta, params, grad_seq, scales=None):
    """Per-tensor steps (old - new params) of each update, for a list of gradient trees."""
    opt = lo.opt_fn(theta, scales)
    upd = jax.jit(opt.update)
    state = opt.init(params, len(grad_seq))
    out = []
    for g in grad_seq:
        new = upd(state, g, jnp.float32(0.0), KEY)
        out.append(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                opt.params(state), opt.params(new)))
        state = new
    return out, state


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(float(np.max(np.abs(b))), 1e-30))


# ------------------------------------------------------------------------------------------ shape and counts


def test_feature_count_and_param_count():
    lo = _lo(hidden_size=32)
    theta = lo.init_theta(KEY)
    assert num_meta_params(theta) == 2409
    assert theta["nn"]["w0"].shape == (39, 32) and theta["nn"]["w2"].shape == (32, 2)
    hp = lo.hparams
    for shape in [(5, 9), (7,)]:
        p = _rand(KEY, shape)
        feats = jax.jit(lambda p: A.features_reference(
            p, p, A._update_acc(A._init_acc(p, hp), p, *A._decays(theta, hp)), 3))(p)
        assert feats.shape == shape + (39,)
    assert A.NUM_FEATURES == 39
    assert num_meta_params(_lo(hidden_size=4).init_theta(KEY)) == 39 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2 + 7


def test_init_truncated_normal_without_correction():
    theta = _lo(hidden_size=32).init_theta(jax.random.PRNGKey(3))
    w0 = np.asarray(theta["nn"]["w0"]) * math.sqrt(39)
    w1 = np.asarray(theta["nn"]["w1"]) * math.sqrt(32)
    both = np.concatenate([w0.ravel(), w1.ravel()])
    assert np.all(np.abs(both) <= 2.0) and np.max(np.abs(both)) > 1.8
    assert abs(both.std() - 0.8796) < 0.04  # a truncated N(0,1) at ±2 has std 0.8796 (no correction)
    for k in ("b0", "b1", "b2"):
        assert not np.any(np.asarray(theta["nn"][k]))
    for k in ("momentum_decays", "rms_decays", "adafactor_decays"):
        assert not np.any(np.asarray(theta[k]))


# ---------------------------------------------------------------------------------------------- formulas


def test_decay_reparametrisation_hand_computed():
    lo = _lo(hidden_size=4)
    theta = lo.init_theta(KEY)
    theta["momentum_decays"] = jnp.array([0.05, -0.1, 0.0])
    theta["rms_decays"] = jnp.array([0.02])
    theta["adafactor_decays"] = jnp.array([-0.03, 0.0, 0.1])
    expect_m = [1 - 0.1 * math.exp(0.5), 1 - 0.01 * math.exp(-1.0), 0.999]
    expect_v = 1 - 0.001 * math.exp(0.2)
    expect_f = [1 - 0.1 * math.exp(-0.3), 0.99, 1 - 0.001 * math.exp(1.0)]
    np.testing.assert_allclose(A.decay_from_param((0.9, 0.99, 0.999), theta["momentum_decays"]), expect_m, rtol=1e-6)
    g = {"v": jnp.array([0.5, -2.0, 3.0])}
    _, state = _steps(lo, theta, {"v": jnp.zeros(3)}, [g])
    for i in range(3):  # first update from zero accumulators: m = (1 - β)·g, v_diag = (1 - β_f)(g² + 1e-30)
        # (1 - β) is computed in float32 from β close to 1: cancellation limits the precision to ~1e-5
        np.testing.assert_allclose(state.mom["v"][i], (1 - expect_m[i]) * g["v"], rtol=1e-4)
        np.testing.assert_allclose(state.fac_diag["v"][i], (1 - expect_f[i]) * g["v"] ** 2, rtol=1e-4)
    np.testing.assert_allclose(state.rms["v"][0], (1 - expect_v) * g["v"] ** 2, rtol=1e-4)
    assert int(state.iteration) == 1


def _normalised_gradient_theta(lo):
    """A hand-built θ whose MLP outputs direction = the (normalised) gradient feature, magnitude = 0."""
    theta = jax.tree.map(jnp.zeros_like, lo.init_theta(KEY))
    nn = theta["nn"]
    nn["w0"] = nn["w0"].at[0, 0].set(1.0).at[0, 1].set(-1.0)  # h1 = relu(±g')
    nn["w1"] = nn["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    nn["w2"] = nn["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)  # direction = relu(g') - relu(-g') = g'
    return theta


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_step_formula_and_per_tensor_normalisation_hand_computed(impl):
    lo = _lo(hidden_size=4, step_mult=0.01, impl=impl)
    theta = _normalised_gradient_theta(lo)
    params = {"w": _rand(KEY, (6, 8)), "b": jnp.zeros(8), "s": jnp.float32(1.0)}
    grads = {"w": _rand(jax.random.PRNGKey(1), (6, 8), 3.0), "b": jnp.linspace(-1, 2, 8), "s": jnp.float32(0.7)}
    scales = {"w": 0.25, "b": 1.0, "s": 1.0}
    (step,), state = _steps(lo, theta, params, [grads], scales)
    for k in params:
        g = np.asarray(grads[k], np.float64)
        expect = 0.01 * g / np.sqrt(1e-5 + np.mean(g ** 2)) * scales[k]
        _close(step[k], expect, rtol=1e-4)
    assert state.params["s"].shape == ()


def test_update_invariant_to_gradient_scale_of_a_tensor():
    """Per-tensor normalisation: multiplying every gradient of one tensor by a constant leaves all steps unchanged
    (the time features are the same in both runs) up to the normalisers' epsilon (1e-5 under the mean square), which
    gradients of magnitude ~20-40 make small for every channel (small momenta and small rsqrt(v) features alike).
    Without the normalisation the g, m, v, ... inputs would change by 2x or 4x, and so would the steps (see the next
    test)."""
    lo = _lo(hidden_size=8, impl="reference")
    theta = lo.init_theta(jax.random.PRNGKey(5))
    params = {"w": _rand(KEY, (6, 8), 1e-3), "b": _rand(jax.random.PRNGKey(2), (8,), 1e-3)}
    seq = [{"w": _rand(jax.random.PRNGKey(10 + t), (6, 8), 20.0), "b": _rand(jax.random.PRNGKey(20 + t), (8,),
                                                                              20.0)} for t in range(3)]
    scaled = [{"w": 2.0 * g["w"], "b": g["b"]} for g in seq]
    steps_a, _ = _steps(lo, theta, params, seq)
    steps_b, _ = _steps(lo, theta, params, scaled)
    for sa, sb in zip(steps_a, steps_b):
        for k in ("w", "b"):
            _close(sb[k], sa[k], rtol=1e-2)


def test_invariance_check_detects_unnormalised_inputs(monkeypatch):
    """The invariance test above would fail if a feature were not normalised: here the per-tensor normaliser is
    switched off (eps huge, so x / sqrt(eps + mean x²) ≈ x / sqrt(eps)) and the steps then change with the scale."""
    orig = A._effective_weights

    def unnormalised(w0, feats, mean_squares=None):
        return jnp.stack([sum(w0[i] for i in idx) for _, idx in feats])

    monkeypatch.setattr(A, "_effective_weights", unnormalised)
    lo = _lo(hidden_size=8)
    theta = lo.init_theta(jax.random.PRNGKey(5))
    params = {"w": _rand(KEY, (6, 8), 1e-3)}
    seq = [{"w": _rand(jax.random.PRNGKey(10), (6, 8))}]
    (sa,), _ = _steps(lo, theta, params, seq)
    (sb,), _ = _steps(lo, theta, params, [{"w": 2.0 * seq[0]["w"]}])
    assert np.max(np.abs(sa["w"] - sb["w"])) > 0.05 * np.max(np.abs(sa["w"]))
    assert orig is not unnormalised


def test_mup_scale_reaches_hidden_matrices_only():
    meta = {"inp": ParamMeta("input", 12), "hid": ParamMeta("hidden", 64), "out": ParamMeta("output", 64),
            "bias": ParamMeta("vector", 1)}
    scales = update_scales(meta, hidden_lr_mult=2.0)
    shapes = {"inp": (12, 64), "hid": (64, 64), "out": (64, 10), "bias": (64,)}
    params = {k: _rand(jax.random.PRNGKey(i), s, 1e-3) for i, (k, s) in enumerate(shapes.items())}
    grads = [{k: _rand(jax.random.PRNGKey(100 + i), s) for i, (k, s) in enumerate(shapes.items())}]
    mu = _lo("mup_small_fc_mlp", hidden_size=2, step_mult=0.01, impl="reference")
    sp = _lo("small_fc_mlp", hidden_size=2, step_mult=0.01, impl="reference")
    theta = mu.init_theta(KEY)
    (s_mu,), _ = _steps(mu, theta, params, grads, scales)
    (s_sp,), _ = _steps(sp, theta, params, grads, scales)  # the SP LO ignores the scales
    (s_none,), _ = _steps(sp, theta, params, grads, None)
    for k in shapes:
        want = 2.0 / 64 if k == "hid" else 1.0
        _close(s_mu[k], want * s_sp[k], rtol=1e-4)
        _close(s_sp[k], s_none[k], rtol=1e-6)
    assert np.max(np.abs(s_sp["hid"])) > 0


def test_clip_grad_clips_global_norm_and_removes_nans():
    lo = _lo(hidden_size=4, clip_grad=True, impl="reference")
    theta = lo.init_theta(KEY)
    params = {"w": _rand(KEY, (4, 5), 1e-3), "b": jnp.zeros(5)}
    g = {"w": _rand(jax.random.PRNGKey(1), (4, 5), 10.0), "b": jnp.ones(5)}
    clipped = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())[0]
    (s1,), _ = _steps(lo, theta, params, [g])
    (s2,), _ = _steps(_lo(hidden_size=4, impl="reference"), theta, params, [clipped])
    for k in params:
        _close(s1[k], s2[k], rtol=1e-4)
    g_nan = {"w": g["w"].at[0, 0].set(jnp.nan), "b": jnp.ones(5)}
    _, state = _steps(lo, theta, params, [g_nan])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


# ------------------------------------------------------------------------------------ fused vs reference


CASES = [((), 8), ((7,), 8), ((5, 9), 32), ((9, 5), 8), ((6, 6), 8), ((3, 3, 4, 6), 32)]


@pytest.mark.parametrize("shape,hidden", CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else c)
def test_fused_equals_reference(shape, hidden):
    hp = AdafacHParams(hidden_size=hidden)
    lo = AdafacMLPLO("mup_small_fc_mlp", hp)
    theta = lo.init_theta(jax.random.PRNGKey(7))
    theta["momentum_decays"] = jnp.array([0.01, -0.02, 0.03])
    shape1 = shape or (1,)
    p = _rand(jax.random.PRNGKey(1), shape1)
    acc = A._init_acc(p, hp)
    for t in range(3):
        g = _rand(jax.random.PRNGKey(10 + t), shape1, t + 1.0)
        acc = A._update_acc(acc, g, *A._decays(theta, hp))
    ref = jax.jit(A._dir_mag_reference)(theta["nn"], p, g, acc, 4)
    fused = jax.jit(A._dir_mag_fused)(theta["nn"], p, g, acc, 4)
    for f, r in zip(fused, ref):
        assert f.shape == shape1
        _close(f, r, rtol=1e-5)


def test_fused_equals_reference_full_update():
    params = {"s": jnp.float32(0.3), "v": _rand(KEY, (7,)), "a": _rand(KEY, (5, 9)), "b": _rand(KEY, (9, 5)),
              "c": _rand(KEY, (3, 2, 4, 5))}
    seq = [jax.tree.map(lambda p, t=t: jnp.cos(p * (t + 2)) * (t + 1), params) for t in range(3)]
    params = jax.tree.map(lambda p: 1e-3 * p, params)  # small params: the measured steps keep their precision
    scales = {"s": 1.0, "v": 1.0, "a": 0.2, "b": 1.0, "c": 0.5}
    theta = _lo(hidden_size=4).init_theta(jax.random.PRNGKey(9))
    sf, _ = _steps(_lo(hidden_size=4), theta, params, seq, scales)
    sr, _ = _steps(_lo(hidden_size=4, impl="reference"), theta, params, seq, scales)
    for a, b in zip(sf, sr):
        for k in params:
            _close(a[k], b[k], rtol=1e-5)


def test_factored_and_unfactored_paths():
    assert factored_dims((5, 9)) == (0, 1) and factored_dims((9, 5)) == (1, 0)
    assert factored_dims((3, 3, 4, 6)) == (2, 3) and factored_dims((7,)) is None and factored_dims(()) is None
    params = {"s": jnp.float32(1.0), "v": jnp.ones(7), "m": jnp.ones((9, 5)), "t": jnp.ones((3, 3, 4, 6))}
    state = _lo(hidden_size=4).opt_fn(_lo(hidden_size=4).init_theta(KEY), None).init(params, 10)
    for k, shape in (("s", (1,)), ("v", (7,))):  # unfactored: full-shape v_diag, no row/col
        assert [x.shape for x in state.fac_diag[k]] == [shape] * 3
        assert state.fac_row[k] == () and state.fac_col[k] == ()
    # (9, 5): d0 = 0 (largest), d1 = 1; v_row averages over d0, v_col over d1
    assert [x.shape for x in state.fac_row["m"]] == [(5,)] * 3 and [x.shape for x in state.fac_col["m"]] == [(9,)] * 3
    assert [x.shape for x in state.fac_row["t"]] == [(3, 3, 4)] * 3
    assert [x.shape for x in state.fac_col["t"]] == [(3, 3, 6)] * 3
    assert state.fac_diag["m"] == () and state.fac_diag["t"] == ()


def test_scalar_uses_unfactored_path_like_a_length_one_vector():
    lo = _lo(hidden_size=4)
    theta = lo.init_theta(jax.random.PRNGKey(2))
    seq_s = [{"x": jnp.float32(0.5 * (t + 1))} for t in range(2)]
    seq_v = [{"x": jnp.full((1,), 0.5 * (t + 1))} for t in range(2)]
    ss, st = _steps(lo, theta, {"x": jnp.float32(1.0)}, seq_s)
    sv, _ = _steps(lo, theta, {"x": jnp.ones(1)}, seq_v)
    for a, b in zip(ss, sv):
        np.testing.assert_allclose(np.reshape(a["x"], (1,)), b["x"], rtol=1e-6)
    assert st.params["x"].shape == ()


# ----------------------------------------------------------------------------------- config, θ files, export


def test_build_learned_from_config():
    base = {"hidden_size": 8, "adafac_step_mult": None, "adafac_exp_mult": 0.002, "lo_clip_grad": True,
            "lo_impl": "reference", "lo_eps_scaling": "none"}
    mu = build_learned({**base, "optimizer": "mup_small_fc_mlp"})
    sp = build_learned({**base, "optimizer": "small_fc_mlp"})
    assert mu.hparams.step_mult == 0.01 and sp.hparams.step_mult == 0.001
    assert mu.hparams.hidden_size == 8 and mu.hparams.exp_mult == 0.002 and mu.hparams.clip_grad
    assert mu.impl == sp.impl == "reference"
    assert build_learned({**base, "optimizer": "small_fc_mlp", "adafac_step_mult": 0.05}).hparams.step_mult == 0.05
    with pytest.raises(ConfigError):
        build_learned({**base, "optimizer": "adam"})
    lo = learned_from_hparams("mup_small_fc_mlp", mu.hparams.to_dict())
    assert lo.hparams == mu.hparams and lo.name == "mup_small_fc_mlp"
    with pytest.raises(ConfigError):
        learned_from_hparams("mup_small_fc_mlp", {"hidden_size": 8, "bogus": 1})


def test_save_load_theta_round_trip_and_errors(tmp_path):
    lo = _lo(hidden_size=6, step_mult=0.02, exp_mult=0.003, clip_grad=True)
    theta = lo.init_theta(jax.random.PRNGKey(4))
    path = tmp_path / "theta.msgpack"
    save_theta(path, lo, theta, extra={"step": 12, "tasks": ["mumlp-w128-d3"]})
    lo2, theta2, extra = load_theta(path)
    assert lo2.name == lo.name and lo2.hparams == lo.hparams
    assert extra == {"step": 12, "tasks": ["mumlp-w128-d3"]}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), theta, theta2)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_theta(tmp_path / "missing.msgpack")
    data = path.read_bytes()
    (tmp_path / "trunc").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_theta(tmp_path / "trunc")
    (tmp_path / "garbage").write_bytes(b"\x00\x01not a theta file")
    with pytest.raises(CheckpointError):
        load_theta(tmp_path / "garbage")
    from flax import serialization
    (tmp_path / "other").write_bytes(serialization.msgpack_serialize({"a": np.ones(3)}))
    with pytest.raises(CheckpointError, match="not a mulo theta file"):
        load_theta(tmp_path / "other")
    # a θ that does not match its stored hyper-parameters
    save_theta(tmp_path / "bad", lo, _lo(hidden_size=5).init_theta(KEY))
    with pytest.raises(CheckpointError, match="do not match"):
        load_theta(tmp_path / "bad")


def test_as_optax_trains_a_small_model(tmp_path):
    """A trained-looking LO (hand-built θ: normalised-gradient direction) exported to optax and loaded from a θ file
    drives a small regression problem to a lower loss in an ordinary optax loop."""
    lo = _lo(hidden_size=4, step_mult=0.05)
    save_theta(tmp_path / "t.msgpack", lo, _normalised_gradient_theta(lo))
    x = _rand(jax.random.PRNGKey(1), (64, 5))
    y = x @ jnp.arange(1.0, 6.0)[:, None] + 0.5
    params = {"w": jnp.zeros((5, 1)), "b": jnp.zeros(1)}
    loss_fn = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    tx = as_optax(tmp_path / "t.msgpack", update_scales={"w": 1.0, "b": 1.0}, num_steps=100)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    first = float(loss_fn(params))
    for _ in range(100):
        params, opt_state, _ = step(params, opt_state)
    assert float(loss_fn(params)) < 0.1 * first
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(params, opt_state)
    # the (lo, theta) form gives the same transformation
    tx2 = as_optax((lo, _normalised_gradient_theta(lo)), update_scales={"w": 1.0, "b": 1.0})
    u1, _ = tx.update(params, tx.init(params), params)
    u2, _ = tx2.update(params, tx2.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_fused_path_vmaps_and_differentiates_like_the_reference():
    """Meta-training vmaps the LO over tasks/perturbations, and gradients through it (w.r.t. θ) must match the
    reference path. (The gradient check uses one factored tensor: the unrolled backward pass is slow to compile.)"""
    params = {"w": _rand(KEY, (5, 6)), "b": _rand(KEY, (6,)), "s": jnp.float32(0.4)}
    scales = {"w": 0.5, "b": 1.0, "s": 1.0}
    grads = jax.tree.map(lambda p: jnp.stack([jnp.cos(3 * p), -0.5 * p]), params)

    def run(lo, theta, g, params=params):
        opt = lo.opt_fn(theta, {k: scales[k] for k in params})
        state = opt.update(opt.init(params, 10), g, 0.0, None)
        return opt.params(state)

    fused, ref = _lo(hidden_size=2), _lo(hidden_size=2, impl="reference")
    theta = fused.init_theta(jax.random.PRNGKey(3))
    out = jax.jit(jax.vmap(lambda g: run(fused, theta, g)))(grads)
    for i in range(2):
        one = run(ref, theta, jax.tree.map(lambda x: x[i], grads))
        for k in params:
            _close(np.asarray(out[k][i]) - np.asarray(params[k]), np.asarray(one[k]) - np.asarray(params[k]), 1e-4)
    w_only = {"w": params["w"]}
    loss = lambda lo: (lambda th: jnp.sum(jnp.sin(run(lo, th, {"w": grads["w"][0]}, w_only)["w"])))
    g_f = jax.jit(jax.grad(loss(fused)))(theta)
    g_r = jax.jit(jax.grad(loss(ref)))(theta)
    jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), g_f, g_r)
    assert float(jnp.sum(jnp.abs(g_f["nn"]["w0"]))) > 0


def test_update_scales_must_match_params():
    lo = _lo(hidden_size=2)
    with pytest.raises(ValueError, match="structure of the params"):
        lo.opt_fn(lo.init_theta(KEY), {"w": 1.0}).init({"w": jnp.ones(3), "b": jnp.ones(2)}, 10)
