"""Hand-designed optimizers: MuAdam = Adam x muP scales, schedules, built from the config's optimizer section."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.app.config import load_config
from mulo.errors import ConfigError
from mulo.app.sections import build
from mulo.optimizers import adam, adamw, lr_schedule, muadam, sgd


def _params():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return {"in": {"w": jax.random.normal(k1, (5, 8))}, "hid": {"w": jax.random.normal(k2, (8, 8)),
                                                                "b": jax.random.normal(k3, (8,))}}


def _grads(i):
    return jax.tree.map(lambda p: jnp.sin(p * (i + 1)) + 0.1 * i, _params())


SCALES = {"in": {"w": 1.0}, "hid": {"w": 0.125, "b": 1.0}}


def _run(opt, n=4):
    p0 = _params()
    state = opt.init(p0, n)
    for i in range(n):
        state = opt.update(state, _grads(i), jnp.float32(0.0), jax.random.PRNGKey(i))
    return p0, opt.params(state)


def test_muadam_equals_adam_times_scales():
    p0, pa = _run(adam(1e-2))
    _, pm = _run(muadam(1e-2, SCALES))
    for path in [("in", "w"), ("hid", "w"), ("hid", "b")]:
        da = pa[path[0]][path[1]] - p0[path[0]][path[1]]
        dm = pm[path[0]][path[1]] - p0[path[0]][path[1]]
        s = SCALES[path[0]][path[1]]
        np.testing.assert_allclose(dm, s * da, rtol=1e-4, atol=1e-6)
    # the scale really changed something
    assert not np.allclose(pm["hid"]["w"], pa["hid"]["w"])


def test_adam_matches_optax_and_sgd_formula():
    p0, pa = _run(adam(3e-3, b1=0.8, b2=0.99))
    tx = optax.adam(3e-3, b1=0.8, b2=0.99)
    p, s = p0, tx.init(p0)
    for i in range(4):
        u, s = tx.update(_grads(i), s, p)
        p = optax.apply_updates(p, u)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), pa, p)
    p0, ps = _run(sgd(0.1), n=1)
    jax.tree.map(lambda a, b, g: np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-6), ps, p0, _grads(0))


def test_adamw_decays_weights():
    zero = jax.tree.map(jnp.zeros_like, _params())
    opt = adamw(0.1, weight_decay=0.5)
    state = opt.init(_params(), 1)
    state = opt.update(state, zero, 0.0, None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b * (1 - 0.1 * 0.5), rtol=1e-6), opt.params(state),
                 _params())


def test_warmup_cosine_schedule_values():
    lr, w, n, r = 0.2, 10, 110, 0.1
    s = lr_schedule(lr, warmup_steps=w, cosine_decay=True, end_lr_ratio=r, num_steps=n)
    assert float(s(0)) == 0.0
    assert math.isclose(float(s(5)), lr * 5 / w, rel_tol=1e-6)
    assert math.isclose(float(s(w)), lr, rel_tol=1e-6)
    # halfway through the cosine part: mean of peak and end
    assert math.isclose(float(s(w + (n - w) // 2)), (lr + r * lr) / 2, rel_tol=1e-5)
    t = 35
    expect = r * lr + (lr - r * lr) * 0.5 * (1 + math.cos(math.pi * (t - w) / (n - w)))
    assert math.isclose(float(s(t)), expect, rel_tol=1e-5)
    assert math.isclose(float(s(n)), r * lr, rel_tol=1e-5)
    assert math.isclose(float(s(n + 50)), r * lr, rel_tol=1e-5)
    # warmup only, then constant; neither: plain float
    s2 = lr_schedule(lr, warmup_steps=4)
    assert [round(float(s2(i)), 6) for i in (0, 2, 4, 9)] == [0.0, 0.1, 0.2, 0.2]
    assert lr_schedule(lr) == lr
    # cosine without warmup starts at the peak
    s3 = lr_schedule(lr, cosine_decay=True, end_lr_ratio=0.0, num_steps=100)
    assert math.isclose(float(s3(0)), lr, rel_tol=1e-6) and math.isclose(float(s3(50)), lr / 2, rel_tol=1e-5)


class _Task:
    update_scales = SCALES


def build_optimizer(cfg, task):
    return build(cfg, "optimizer", task, cfg.num_inner_steps)


def test_build_optimizer_reads_config():
    cfg = load_config(None, {"optimizer": "muadam", "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.999})
    _, pm = _run(build_optimizer(cfg, _Task()))
    _, ref = _run(muadam(1e-2, SCALES))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), pm, ref)
    # schedule from config: first step with warmup has lr 0, so params do not move
    cfg2 = cfg.replace(optimizer="adam", warmup_steps=5, cosine_decay=True)
    opt = build_optimizer(cfg2, _Task())
    st = opt.update(opt.init(_params(), 10), _grads(0), 0.0, None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b), opt.params(st), _params())
    st = opt.update(st, _grads(1), 0.0, None)
    assert not np.allclose(opt.params(st)["in"]["w"], _params()["in"]["w"])
    for name in ("sgd", "adamw"):
        o = build_optimizer(cfg.replace(optimizer=name), _Task())
        _run(o, n=1)
    with pytest.raises(ConfigError):
        build_optimizer(load_config(None, {"optimizer": "rmsprop"}), _Task())
