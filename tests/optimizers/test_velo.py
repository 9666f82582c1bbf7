"""VeLO / μVeLO (src/mulo/optimizers/velo.py, velo_lstm.py, velo_mlp.py): feature counts, parameter shapes, the μP
scale on hidden matrices only, permutation equivariance of the LSTM controls, θ files and run names, the loss-buffer features, and a few PES steps
of the meta-training engine lowering the meta-loss of a tiny task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.app.config import load_config
from mulo.optimizers import build_learned, load_theta, save_theta
from mulo.optimizers import velo as V
from mulo.optimizers import velo_lstm as VL
from mulo.optimizers import velo_mlp as VM
from mulo.optimizers.features import Acc, factored_dims, init_acc, product, update_acc
from mulo.app.rundir import run_name
from tests.meta.test_toys import QuadraticTask

KEY = jax.random.PRNGKey(0)


def _acc_after(p, g):
    b = jnp.asarray([0.9, 0.99, 0.999])
    return update_acc(Acc(*init_acc(p, 3, 1, 3)), g, b, jnp.asarray([0.999]), b)


@pytest.mark.parametrize("shape", [(6, 4), (5,), (3, 4, 2)])
def test_thirty_features_per_parameter_in_fourteen_groups(shape):
    p = jax.random.normal(KEY, shape)
    g = jax.random.normal(jax.random.PRNGKey(1), shape)
    acc = _acc_after(p, g)
    groups = VM.param_feature_groups(p, g, acc)
    assert [x.shape[-1] for x in groups] == [1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3]
    feats = VM.param_features(p, g, acc)
    assert feats.shape == shape + (VM.PARAM_FEATURES,) == shape + (30,)
    # every column is divided by sqrt(1e-5 + its mean square over the tensor) (VeLO's normaliser over the tensor's
    # axes), so its mean square becomes ms / (1e-5 + ms)
    axes = tuple(range(len(shape)))
    raw = np.concatenate([np.asarray(x) for x in groups], axis=-1)
    col_ms = np.mean(np.square(raw.astype(np.float64)), axis=axes)
    np.testing.assert_allclose(np.mean(np.square(np.asarray(feats)), axis=axes), col_ms / (1e-5 + col_ms),
                               rtol=1e-4)
    # g and its clip are the first two columns, scaled by their own normalisers
    np.testing.assert_allclose(feats[..., 0] * np.sqrt(np.mean(np.square(g)) + 1e-5), g, rtol=1e-5)


def test_lstm_inputs_per_tensor():
    p = jax.random.normal(KEY, (6, 4))
    acc = _acc_after(p, p)
    x = VL.tensor_features(p, acc.m, acc.v, 0.5, jnp.zeros((9,)))
    assert x.shape == (VL.LSTM_FEATURES,) == (9 + 9 + 1 + 5 + 3 + 3,)
    np.testing.assert_allclose(x[:9], np.tanh(10 * (0.5 - np.asarray(VL.FRACTION_TIMESCALES))), rtol=1e-6)
    np.testing.assert_array_equal(x[19:24], [0, 0, 1, 0, 0])  # rank 2
    acc7 = _acc_after(jnp.ones((7,)), jnp.ones((7,)))
    vec = VL.tensor_features(jnp.ones((7,)), acc7.m, acc7.v, 0.5, jnp.zeros((9,)))
    np.testing.assert_array_equal(vec[19:24], [0, 1, 0, 0, 0])
    shape5 = (2, 2, 2, 2, 2)
    acc5 = _acc_after(jnp.ones(shape5), jnp.ones(shape5))
    np.testing.assert_array_equal(VL.tensor_features(jnp.ones(shape5), acc5.m, acc5.v, 0.5, jnp.zeros((9,)))[19:24],
                                  0)  # rank >= 5: no rank bit (HyperV2's one-hot)


def test_lstm_accumulator_statistics_are_of_the_rms_normalised_tensor():
    p = 3.0 * jax.random.normal(KEY, (6, 4))
    acc = _acc_after(p, jax.random.normal(jax.random.PRNGKey(1), (6, 4)))
    x = np.asarray(VL.tensor_features(p, acc.m, acc.v, 0.5, jnp.zeros((9,))))
    norm = 1.0 / np.sqrt(np.mean(np.square(np.asarray(p, np.float64))))
    clip_log = lambda v: np.clip(np.log(1e-8 + np.abs(10.0 * v)), -5.0, 5.0) * 0.5
    rms = np.asarray(acc.v[0], np.float64) * norm
    ms = [np.asarray(m, np.float64) * norm for m in acc.m]
    want = ([clip_log(rms.mean())] + [clip_log(np.var(m)) for m in ms]
            + [clip_log(np.mean(np.square(rms - m.mean()))) for m in ms])  # rms around each momentum's mean
    np.testing.assert_allclose(np.r_[x[18], x[24:30]], want, rtol=1e-5, atol=1e-6)


def test_parameter_shapes_of_the_reference_sizes():
    lo = build_learned(load_config(None, cli={"optimizer": "mup_velo"}))
    hp = lo.hparams
    assert (hp.lstm_hidden_size, hp.param_inits, hp.ff_hidden_size, hp.ff_hidden_layers, hp.interp_mult,
            hp.param_scale_mult, hp.step_mult, hp.exp_mult) == (16, 8, 4, 2, 1.0, False, 0.001, 0.001)
    shapes = jax.tree.map(jnp.shape, lo.init_theta(KEY))
    assert shapes["ff"] == {"w0": (8, 30, 4), "b0": (8, 4), "w1": (8, 4, 4), "b1": (8, 4), "w2": (8, 4, 3),
                            "b2": (8, 3)}
    assert shapes["rnn"] == {"mix0_w": (30, 16), "mix0_b": (16,), "mix1_w": (30, 16), "mix1_b": (16,),
                             "in_w": (30, 16), "in_b": (16,), "lstm_wx": (16, 64), "lstm_wh": (16, 64),
                             "lstm_b": (64,), "ctrl_w": (16, 8), "ctrl_b": (8,), "lr_w": (16, 1), "lr_b": (1,),
                             "init_h": (16,), "init_c": (16,)}
    sp = build_learned(load_config(None, cli={"optimizer": "velo"})).hparams
    assert (sp.interp_mult, sp.param_scale_mult) == (100.0, True)


def _one_update(lo, theta, params, grads, scales, loss=1.0):
    opt = lo.opt_fn(theta, scales)
    return opt.params(opt.update(opt.init(params, 10), grads, jnp.float32(loss)))


def test_mup_scale_reaches_hidden_matrices_only():
    task = QuadraticTask(dim=4)
    # small params, so that p - step keeps the step's digits in float32
    params = jax.tree.map(lambda p: 1e-3 * jax.random.normal(jax.random.PRNGKey(p.size + 1), p.shape), task.init(KEY))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    lo = build_learned(load_config(None, cli={"optimizer": "mup_velo", "adafac_step_mult": 1.0}))
    theta = lo.init_theta(KEY)
    ones = jax.tree.map(lambda _: 1.0, params)
    scaled = _one_update(lo, theta, params, grads, task.update_scales)
    plain = _one_update(lo, theta, params, grads, ones)
    step = lambda new, name, k: np.asarray(params[name][k] - new[name][k])
    assert task.update_scales["mat"]["v"] == pytest.approx(0.25)  # hidden: 1 / fan_in
    np.testing.assert_allclose(step(scaled, "mat", "v"), 0.25 * step(plain, "mat", "v"), rtol=1e-3)
    np.testing.assert_array_equal(step(scaled, "lin", "w"), step(plain, "lin", "w"))  # a vector: scale 1
    assert np.abs(step(plain, "mat", "v")).max() > 0
    sp = build_learned(load_config(None, cli={"optimizer": "velo"}))  # the SP LO ignores the scales
    a = _one_update(sp, sp.init_theta(KEY), params, grads, task.update_scales)
    b = _one_update(sp, sp.init_theta(KEY), params, grads, ones)
    np.testing.assert_array_equal(a["mat"]["v"], b["mat"]["v"])


def test_lstm_controls_are_equivariant_to_permuting_tensors():
    lo = build_learned(load_config(None, cli={"optimizer": "mup_velo"}))
    theta = lo.init_theta(KEY)
    x = jax.random.normal(KEY, (5, VL.LSTM_FEATURES))
    h = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
    c = jax.random.normal(jax.random.PRNGKey(2), (5, 16))
    perm = np.array([3, 0, 4, 1, 2])
    out = VL.lstm_controls(theta["rnn"], x, h, c)
    out_p = VL.lstm_controls(theta["rnn"], x[perm], h[perm], c[perm])
    for a, b in zip(out, out_p):
        np.testing.assert_allclose(np.asarray(a)[perm], b, rtol=1e-5, atol=1e-6)
    # end to end: two tensors of one shape swapped in the params (and grads) -> their updates swap
    p1, p2 = jax.random.normal(KEY, (3, 4)), jax.random.normal(jax.random.PRNGKey(5), (3, 4))
    g1, g2 = jax.random.normal(jax.random.PRNGKey(6), (3, 4)), jax.random.normal(jax.random.PRNGKey(7), (3, 4))
    scales = {"a": 1.0, "b": 1.0, "c": 1.0}
    bias = jnp.ones((4,))
    new = _one_update(lo, theta, {"a": p1, "b": p2, "c": bias}, {"a": g1, "b": g2, "c": bias}, scales)
    swapped = _one_update(lo, theta, {"a": p2, "b": p1, "c": bias}, {"a": g2, "b": g1, "c": bias}, scales)
    np.testing.assert_allclose(new["a"], swapped["b"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new["b"], swapped["a"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new["c"], swapped["c"], rtol=1e-5, atol=1e-7)


def test_theta_file_keeps_the_hyper_parameters_and_run_names(tmp_path):
    cfg = load_config(None, cli={"optimizer": "mup_velo", "velo_param_inits": 4, "velo_lstm_hidden_size": 8})
    lo = build_learned(cfg)
    theta = lo.init_theta(KEY)
    save_theta(tmp_path / "t.msgpack", lo, theta)
    back, theta2, _ = load_theta(tmp_path / "t.msgpack")
    assert back.hparams == lo.hparams and back.hparams.param_inits == 4
    assert jax.tree.structure(theta2) == jax.tree.structure(theta)
    assert run_name(cfg, "meta-train").startswith("meta-train_mup_velo8_")


def test_loss_buffer_features_start_at_zero_and_stay_in_range():
    decays = VL.loss_decays(100)
    assert decays.shape == (10,) and float(decays[0]) == pytest.approx(np.exp(-0.1))
    means, low = jnp.zeros((10,)), jnp.full((10,), 1e12)
    for it, loss in enumerate([3.0, 2.5, 2.0, 2.2, 1.5, 1.0]):
        means, low = VL.update_loss_buffer(means, low, decays, it, jnp.float32(loss))
        feats = VL.loss_features(means, low, decays, it + 1)
        assert feats.shape == (9,) and np.all(np.abs(feats) <= 1)
        if it + 1 <= 2:
            np.testing.assert_array_equal(feats, 0)


def test_a_few_pes_steps_lower_the_meta_loss_of_a_tiny_task():
    import itertools

    from mulo.app.sections import meta_trainer


    cfg = load_config(None, cli=dict(optimizer="mup_velo", velo_param_inits=2, velo_lstm_hidden_size=4,
                                     adafac_step_mult=0.1, num_tasks=2, trunc_length=2, steps_per_jit=2,
                                     num_inner_steps=4, truncation_schedule="constant",
                                     random_initial_iteration_offset=0, local_batch_size=4, pes_std=0.01,
                                     meta_learning_rate=3e-2, progress=False, meta_grad_clip=None))
    task = QuadraticTask(dim=3, noise=0.1)
    trainer = meta_trainer(cfg, [task], build_learned(cfg))
    batches = [b for b in itertools.islice(task.dataset.batches("train", (4,), 123), 4)]

    @jax.jit
    def meta_loss(theta):  # the mean train loss of a fixed 4-step run from fixed initial params
        opt = trainer.lo.opt_fn(theta, task.update_scales)
        state, total = opt.init(task.init(KEY), 4), 0.0
        for b in batches:
            loss, grads = jax.value_and_grad(task.loss)(opt.params(state), b, None)
            state = opt.update(state, grads, loss)
            total = total + loss
        return total / len(batches)

    state = trainer.init_state()
    before = float(meta_loss(state.theta))
    streams = [trainer.host_stream(0, 0)]
    for _ in range(4):
        state, metrics = trainer.step(state, streams)
        assert np.isfinite(metrics["meta_loss"])
    assert float(meta_loss(state.theta)) < before


def test_meta_test_runs_mup_velo_from_its_theta_file(tmp_path, capsys):
    import json
    from pathlib import Path

    from mulo.app.cli import main as cli_main

    cfg = load_config(None, cli={"optimizer": "mup_velo", "velo_param_inits": 2, "velo_lstm_hidden_size": 4})
    lo = build_learned(cfg)
    save_theta(tmp_path / "theta_final.msgpack", lo, lo.init_theta(KEY))
    base = Path(__file__).resolve().parents[2] / "config" / "meta_test" / "meta_test_base.py"
    task = "mumlp-w8-d1_fashionmnist-28x28x1"
    args = ["meta-test", "--config", str(base), "--optimizer", "mup_velo", "--checkpoint",
            str(tmp_path / "theta_final.msgpack"), "--task", task, "--num_inner_steps", "6", "--local_batch_size", "16",
            "--test_interval", "3", "--test_steps_per_jit", "3", "--max_eval_examples", "32", "--eval_batch_size",
            "32", "--progress", "false", "--wandb_mode", "disabled", "--num_runs", "1", "--output_dir",
            str(tmp_path / "out"), "--velo_param_inits", "5"]
    assert cli_main(args) == 0  # the LSTM state's two buffers survive the loop's donation
    assert "ignoring --velo_param_inits 5" in capsys.readouterr().out  # the θ file's sizes win
    (run_dir,) = (tmp_path / "out").iterdir()
    assert run_dir.name.startswith("meta-test_mup_velo4_theta-")
    summary = json.loads((run_dir / task / "seed0" / "summary.json").read_text())
    assert summary["steps_completed"] == 6 and not summary["diverged"]


# ------------------------------------------------------------------------------------ fused path (lo_impl fused)

# 1-D, a scalar (rank 1 inside), 2-D (rows > cols and cols > rows: either factored axis), a 1-row matrix, a 3-D tensor,
# and an odd-sized matrix (no power of two, not a multiple of any vector width)
FUSED_SHAPES = [(5,), (1,), (6, 4), (3, 9), (1, 7), (3, 4, 2), (37, 131)]


def _acc_two_steps(p, g):
    b = jnp.asarray([0.9, 0.99, 0.999])
    acc = update_acc(Acc(*init_acc(p, 3, 1, 3)), 0.3 * g[::-1] if g.ndim == 1 else 0.3 * g, b, jnp.asarray([0.999]), b)
    return update_acc(acc, g, b, jnp.asarray([0.999]), b)


def _tensor(shape, seed, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_fused_columns_are_the_reference_columns(shape):
    p, g = _tensor(shape, 1), _tensor(shape, 2, 1e-2)
    acc = _acc_two_steps(p, g)
    raw = np.concatenate([np.asarray(x) for x in VM.param_feature_groups(p, g, acc)], axis=-1)
    full, small = VM.fused_columns(p, g, acc)
    seen = []
    for value, cols in [(np.asarray(product(f)), c) for f, c in full] + [(np.asarray(x), c) for x, c in small]:
        for c in cols:
            np.testing.assert_allclose(np.broadcast_to(value, shape), raw[..., c], rtol=1e-6, err_msg=f"column {c}")
        seen += cols
    assert sorted(seen) == list(range(VM.PARAM_FEATURES))  # every column once
    if len(shape) >= 2:  # the Adafactor row / column columns stay on their factored shapes
        d1, d0 = factored_dims(shape)  # each is p's shape without one of the two factored axes
        assert len(small) == 12 and all(x.size * shape[d] == np.prod(shape) and x.shape[d] == 1
                                        for x, _ in small for d in [d0 if x.shape[d0] == 1 else d1])


def _mixed_ff(hp, seed):
    lo = V.VeloLO("mup_velo", hp)
    theta = lo.init_theta(jax.random.PRNGKey(seed))
    theta["ff"] = jax.tree.map(lambda w: w + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), w.shape),
                               theta["ff"])  # nonzero biases too
    return VM.mix_mlp(theta["ff"], jax.random.normal(jax.random.PRNGKey(seed + 2), (hp.param_inits,)), hp.interp_mult)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("shape", FUSED_SHAPES)
@pytest.mark.parametrize("sizes", [(4, 2), (5, 1), (6, 3)])  # (ff_hidden_size, ff_hidden_layers)
def test_fused_direction_and_magnitude_equal_the_plain_path(shape, sizes):
    hp = V.VeloHParams(ff_hidden_size=sizes[0], ff_hidden_layers=sizes[1])
    ff = _mixed_ff(hp, 3)
    p, g = _tensor(shape, 4), _tensor(shape, 5, 1e-3)
    acc = _acc_two_steps(p, g)
    want = jax.jit(VM.dir_mag_reference, static_argnums=4)(ff, p, g, acc, hp.ff_hidden_layers)
    got = jax.jit(VM.dir_mag_fused, static_argnums=4)(ff, p, g, acc, hp.ff_hidden_layers)
    # not constant (all ReLUs dead): the features reach the outputs
    assert np.prod(shape) == 1 or max(float(np.std(np.asarray(b))) for b in want) > 0
    for a, b in zip(got, want):
        assert a.shape == b.shape == shape
        assert _rel_err(a, b) <= 1e-5


def _params(seed, scale):
    return {"b": _tensor((7,), seed, scale), "s": _tensor((), seed + 1, scale),
            "w": _tensor((37, 131), seed + 2, scale), "k": _tensor((3, 4, 2), seed + 3, scale)}


@pytest.mark.parametrize("name", ["mup_velo", "velo"])
def test_fused_lo_updates_equal_the_plain_path_over_steps(name):
    # fixed gradients, so that the comparison is of the LO (its steps change the params, the LSTM's inputs, its
    # state and the accumulators); both paths step from the plain path's state at every step (the mix layer's max
    # couples every tensor's step to the others' params, so free-running trajectories would compare rounding
    # amplified over steps, not the two paths); the steps are read from float32 params, so they are compared to
    # within 1e-5 of the largest step plus 2 float32 spacings of the params (the rounding of p - step)
    hp = V.VeloHParams(**V.DEFAULTS[name], step_mult=0.1)
    params = _params(10, 1e-3)
    grads = [jax.tree.map(lambda p: jnp.cos(7e3 * p * (t + 1)), params) for t in range(3)]
    scales = {"b": 1.0, "s": 1.0, "w": 1.0 / 37, "k": 0.5}
    theta = V.VeloLO(name, hp).init_theta(KEY)
    opts = {impl: V.VeloLO(name, hp, impl=impl).opt_fn(theta, scales) for impl in ("reference", "fused")}
    updates = {impl: jax.jit(opt.update) for impl, opt in opts.items()}
    state = opts["reference"].init(params, 5)
    for t, g in enumerate(grads):
        new = {impl: update(state, g, jnp.float32(2.0 - 0.3 * t)) for impl, update in updates.items()}
        for k in params:
            before = np.asarray(state.params[k], np.float64)
            want, got = (before - np.asarray(new[impl].params[k]) for impl in ("reference", "fused"))
            rounding = 2 * np.spacing(np.max(np.abs(np.asarray(new["reference"].params[k]))))
            if t == 0:  # steps visible against the params (later ones follow the random θ's lr_mult)
                assert np.abs(want).max() > 100 * rounding, k
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max() + rounding, (t, k)
        state = new["reference"]


def test_bad_lo_impl_is_one_error_line():
    from mulo.errors import ConfigError

    from mulo.optimizers.velo import VeloLO

    # the config refuses an implementation VeLO does not have (its section's impl choices are VeLO's own)
    with pytest.raises(ConfigError, match="bad value 'pallas' for config key 'lo.impl': expected one of reference, "
                                          "fused") as err:
        load_config(None, cli={"optimizer": "mup_velo", "lo_impl": "pallas"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="VeLO has reference and fused"):  # and so does the LO itself
        VeloLO("mup_velo", impl="pallas")
    with pytest.raises(ConfigError, match="lo.impl"):  # not an implementation of any LO: the config refuses it
        load_config(None, cli={"optimizer": "mup_velo", "lo_impl": "fast"})
    assert build_learned(load_config(None, cli={"optimizer": "mup_velo"})).impl == "fused"  # the config's default
    assert build_learned(load_config(None, cli={"optimizer": "velo", "lo_impl": "reference"})).impl == "reference"


def _descent_theta(lo, key):
    """A θ under which mup_velo trains: the mixed MLP's direction is the first Adam-normalised momentum (column 7)
    through two ReLU units (relu(x) − relu(−x) = x), plus small random weights everywhere; controls and lr_mult near
    1 (the LSTM's outputs stay live through small random weights)."""
    theta = jax.tree.map(lambda w: 0.05 * w, lo.init_theta(key))
    rnn, ff = dict(theta["rnn"]), dict(theta["ff"])
    rnn["ctrl_b"], rnn["lr_b"] = rnn["ctrl_b"] + 1.0, rnn["lr_b"] + 1.0
    ff["w0"] = ff["w0"].at[:, 7, 0].add(1.0).at[:, 7, 1].add(-1.0)
    ff["w1"] = ff["w1"].at[:, 0, 0].add(1.0).at[:, 1, 1].add(1.0)
    ff["w2"] = ff["w2"].at[:, 0, 0].add(1.0).at[:, 1, 0].add(-1.0)
    return {"rnn": rnn, "ff": ff}


def test_mup_velo_fused_trains_like_the_plain_path():
    import itertools

    from mulo.tasks import get_tasks

    task = get_tasks("mumlp-w32-d2_fashionmnist-28x28x1")[0]
    batches = list(itertools.islice(task.dataset.batches("train", (64,), 0), 40))
    curves = {}
    for impl in ("reference", "fused"):
        lo = build_learned(load_config(None, cli={"optimizer": "mup_velo", "lo_impl": impl,
                                                  "adafac_step_mult": 0.05}))
        opt = lo.opt_fn(_descent_theta(lo, KEY), task.update_scales)

        @jax.jit
        def run(state, xs):
            def step(state, batch):
                loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, None)
                return opt.update(state, grads, loss), loss
            return jax.lax.scan(step, state, xs)

        stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches)
        _, losses = run(opt.init(task.init(KEY), len(batches)), stacked)
        curves[impl] = np.asarray(losses)
    ref, fused = curves["reference"], curves["fused"]
    assert np.all(np.isfinite(fused))
    tail = lambda c: float(np.mean(c[-10:]))
    assert tail(ref) < 0.8 * float(ref[0])  # the plain path trains with this θ
    assert abs(tail(fused) - tail(ref)) <= 0.01 * tail(ref)  # and the fused one as well, within 1%
    np.testing.assert_allclose(fused[:5], ref[:5], rtol=1e-4)
