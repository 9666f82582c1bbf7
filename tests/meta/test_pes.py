"""Truncated PES / ES estimators and the inner unroll (src/mulo/meta/estimators.py, unroll.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.meta.es import es_pair_gradients
from mulo.meta.estimators import EstimatorHParams, TruncatedEstimator, antithetic, sample_perturbations
from mulo.meta.pes import pes_pair_gradients
from mulo.meta.truncation import TruncationSchedule
from mulo.meta.unroll import TruncatedUnroll
from mulo.registry import component
from tests.meta.test_toys import QuadraticTask, ToyLO


def _estimator(unroll, kind, std, trunc_length, steps_per_jit):
    """The registered estimator ``kind`` over ``unroll`` (its pairs: the unroll's inner problems)."""
    rule = component("estimator", kind).build(EstimatorHParams(std, trunc_length, unroll.num_pairs))
    return TruncatedEstimator(unroll, rule, steps_per_jit=steps_per_jit)


def _batches(task, shape, seed=0):
    for b in task.dataset.batches("train", shape, seed):
        yield {"train": b}


def _flat_pairs(tree):
    return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)], axis=1)


def _flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def test_pes_formula_hand_computed():
    std = 0.5  # 1 / (2 std^2) = 2
    meta = jnp.array([[[1, 2], [0, 1]], [[2, 0], [1, 0]], [[3, 5], [1, 1]]], jnp.float32)  # (K=3, ±, N=2)
    mask = jnp.array([[1, 1], [1, 0], [1, 1]], jnp.float32)
    reset = jnp.array([[0, 0], [0, 1], [0, 0]], jnp.float32)  # slot 1 resets at t=1
    eps = {"a": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    accum = {"a": jnp.array([[1.0, 1.0], [2.0, 2.0]])}
    grads, new_accum = pes_pair_gradients(eps, accum, meta, mask, reset, std)
    # slot 0: Δ = (1, 1, 2), no reset: L_old = 4/3, A = (2, 1)      -> 2 · 4/3 · (2, 1)
    # slot 1: Δ·m = (1, 0, 4), D = 2, h = (0, 1, 1): L_old = 1/2, L_new = 2, A = (2, 3) -> 2 · (½(2, 3) + 2 (0, 1))
    np.testing.assert_allclose(grads["a"], [[16 / 3, 8 / 3], [2.0, 7.0]], rtol=1e-6)
    np.testing.assert_allclose(new_accum["a"], [[2.0, 1.0], [0.0, 1.0]])  # slot 1 reset: A <- ε
    es = es_pair_gradients(eps, meta, mask, reset, std)
    np.testing.assert_allclose(es["a"], [[8 / 3, 0.0], [0.0, 5.0]], rtol=1e-6)


def test_unroll_resets_and_masks():
    """Episode of 3 steps: the done step trains (mask 1), the next step resets (mask 0) to fresh params."""
    task, lo = QuadraticTask(dim=2, noise=0.3), ToyLO()
    unroll = TruncatedUnroll(task, lo, TruncationSchedule("constant", 1, 3, 0), num_pairs=2)
    theta = lo.init_theta(None)
    state = unroll.init(theta, jax.random.PRNGKey(0))
    theta_pm = antithetic(theta, sample_perturbations(theta, jax.random.PRNGKey(1), 2, 0.01))
    batch = next(_batches(task, (6, 2, 4)))
    new, out = jax.jit(unroll.unroll)(theta_pm, state, batch, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(out.mask[:, 0], [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(out.reset[:, 0], [0, 0, 0, 1, 0, 0])
    assert np.all(np.asarray(out.meta_loss)[3] == 0)
    np.testing.assert_array_equal(new.inner_step, 2)
    # a reset restores the initial params (deterministic init): replaying 2 steps from the initial state matches
    again, _ = jax.jit(unroll.unroll)(theta_pm, state, jax.tree.map(lambda x: x[4:], batch), jax.random.PRNGKey(3))
    np.testing.assert_allclose(_flat(again.opt_state.params), _flat(new.opt_state.params), rtol=1e-6)


def test_antithetic_pairs_share_data_and_keys():
    """With θ⁺ = θ⁻ the two branches are bit-identical although data is noisy and slots differ."""
    task, lo = QuadraticTask(dim=3, noise=1.0, init_noise=0.5), ToyLO()
    unroll = TruncatedUnroll(task, lo, TruncationSchedule("log_uniform", 2, 6, 3), num_pairs=4)
    theta = lo.init_theta(None)
    state = unroll.init(theta, jax.random.PRNGKey(0))
    same = jax.tree.map(lambda t: jnp.broadcast_to(t, (2, 4) + t.shape), theta)
    new, out = jax.jit(unroll.unroll)(same, state, next(_batches(task, (12, 4, 8))), jax.random.PRNGKey(5))
    np.testing.assert_array_equal(out.meta_loss[:, 0], out.meta_loss[:, 1])
    for leaf in jax.tree.leaves(new):
        np.testing.assert_array_equal(leaf[0], leaf[1])
    assert float(np.sum(out.reset)) > 0  # resets happened inside the window and were shared too
    assert np.std(np.asarray(out.meta_loss[:, 0]), axis=1).max() > 0  # the slots did see different data


def _exact_episode_losses(task, lo, theta, length, frozen_before=0):
    """Losses of one deterministic episode with θ at every step; θ is held constant (no gradient) for the updates
    before step ``frozen_before``, which gives the truncated (ES-like) objective of a window starting there."""
    params = task.init(jax.random.PRNGKey(0))
    state = lo.opt_fn(theta, task.update_scales).init(params, length)
    batch = {"x": jnp.zeros((4, task.dim)), "y": jnp.zeros((4,), jnp.int32)}
    losses = []
    for t in range(length):
        opt = lo.opt_fn(jax.lax.stop_gradient(theta) if t < frozen_before else theta, task.update_scales)
        loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, None)
        losses.append(task.normalizer(loss))
        state = opt.update(state, grads, loss, None)
    return jnp.stack(losses)


@pytest.mark.parametrize("kind", ["pes", "es"])
def test_estimate_matches_exact_gradient_of_unrolled_objective(kind):
    """Episode of 5 steps, windows of K=2 with θ held fixed: window 1 = steps 0-1, 2 = steps 2-3, 3 = step 4 (the
    episode's final step) + a reset, 4 = steps 0-1 of the next episode.

    PES must estimate the gradient of each window's mean loss through the *whole* episode (within sampling error; the
    σ² smoothing bias is negligible), including the final step that shares its window with the reset (the reference
    would attribute it to the last window's ε only, giving 0 here). ES sees only the current window's perturbation: it
    estimates the truncated gradient (θ frozen before the window) and is exactly 0 in window 3, whose only loss is
    fixed before that window starts."""
    n, std = 4096, 0.01
    task, lo = QuadraticTask(dim=3), ToyLO()
    unroll = TruncatedUnroll(task, lo, TruncationSchedule("constant", 1, 5, 0), num_pairs=n)
    est = _estimator(unroll, kind, std, 2, 1)
    theta = lo.init_theta(None)
    state = est.init(theta, jax.random.PRNGKey(0))

    def window_loss(first, last, frozen=0):
        return lambda th: jnp.mean(_exact_episode_losses(task, lo, th, 5, frozen)[first:last])

    full = [window_loss(0, 2), window_loss(2, 4), window_loss(4, 5), window_loss(0, 2)]
    truncated = [window_loss(0, 2), window_loss(2, 4, frozen=2), None, window_loss(0, 2)]
    batches = _batches(task, (1, n, 4))
    for window in range(4):
        _, state, metrics, pairs = est.estimate(theta, state, jax.random.PRNGKey(10 + window), batches,
                                                return_pairs=True)
        per_pair = _flat_pairs(pairs)
        mean, se = per_pair.mean(0), per_pair.std(0) / np.sqrt(n)
        exact = _flat(jax.grad(full[window])(theta))
        assert np.linalg.norm(exact) > 1e-2
        if kind == "es":
            if window == 2:
                np.testing.assert_array_equal(mean, 0.0)  # no accumulation: the final step's loss is invisible to ES
                continue
            exact = _flat(jax.grad(truncated[window])(theta))
        elif window == 1:  # the truncated gradient differs a lot here, so matching `exact` is a real test of PES
            assert np.linalg.norm(_flat(jax.grad(truncated[1])(theta)) - exact) > 0.3 * np.linalg.norm(exact)
        assert np.linalg.norm(se) < 0.25 * np.linalg.norm(exact), (window, se, exact)  # the check has power
        assert np.all(np.abs(mean - exact) < 5 * se + 1e-5), (kind, window, mean, exact, se)


def test_pes_accumulates_and_resets_in_estimator():
    """The accumulator sums the window perturbations over an episode and restarts at ε after a reset; ES keeps none
    and restarts both branches from the same state."""
    n, std = 3, 0.1
    task, lo = QuadraticTask(dim=2), ToyLO()
    sched = TruncationSchedule("constant", 1, 3, 0)
    theta = lo.init_theta(None)
    pes = _estimator(TruncatedUnroll(task, lo, sched, n), "pes", std, 2, 2)
    state = pes.init(theta, jax.random.PRNGKey(0))
    assert np.all(_flat(state.accum) == 0)
    batches = _batches(task, (2, n, 2))
    eps = []
    for w in range(3):  # windows: steps 0-1 | step 2 (done) + reset | steps 0-1
        key = jax.random.PRNGKey(100 + w)
        eps.append(sample_perturbations(theta, jax.random.split(key)[0], n, std))
        _, state, _ = pes.estimate(theta, state, key, batches)
        if w == 0:
            expect = eps[0]
        elif w == 1:
            expect = eps[1]  # the reset happened in window 2: A <- ε₂
        else:
            expect = jax.tree.map(jnp.add, eps[1], eps[2])
        np.testing.assert_allclose(_flat(state.accum), _flat(expect), rtol=1e-5, atol=1e-7)

    es = _estimator(TruncatedUnroll(task, lo, sched, n), "es", std, 2, 1)
    state = es.init(theta, jax.random.PRNGKey(0))
    assert not hasattr(state, "accum")
    _, state, metrics = es.estimate(theta, state, jax.random.PRNGKey(1), _batches(task, (1, n, 2)))
    for leaf in jax.tree.leaves(state.inner):
        np.testing.assert_array_equal(leaf[0], leaf[1])
    assert float(metrics["delta_loss"]) > 0


@pytest.mark.parametrize("split", ["train", "same_data", "meta_valid"])
def test_meta_loss_splits(split):
    """train: pre-update loss on the training batch; same_data: post-update loss on it; meta_valid: post-update loss
    on the meta-valid batch."""
    task, lo = QuadraticTask(dim=2, noise=1.0), ToyLO()
    unroll = TruncatedUnroll(task, lo, TruncationSchedule("constant", 1, 10, 0), num_pairs=1, meta_loss_split=split)
    assert unroll.data_splits == (("train", "meta_valid") if split == "meta_valid" else ("train",))
    theta = lo.init_theta(None)
    state = unroll.init(theta, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {sp: {"x": rng.standard_normal((1, 1, 5, 2)).astype(np.float32), "y": np.zeros((1, 1, 5), np.int32)}
             for sp in ("train", "meta_valid")}
    theta_pm = jax.tree.map(lambda t: jnp.broadcast_to(t, (2, 1) + t.shape), theta)
    _, out = unroll.unroll(theta_pm, state, batch, jax.random.PRNGKey(1))
    params = task.init(jax.random.PRNGKey(0))
    b_train = {k: v[0, 0] for k, v in batch["train"].items()}
    b_valid = {k: v[0, 0] for k, v in batch["meta_valid"].items()}
    opt = lo.opt_fn(theta, task.update_scales)
    loss, grads = jax.value_and_grad(task.loss)(params, b_train, None)
    after = opt.params(opt.update(opt.init(params, 10), grads, loss, None))
    want = {"train": loss, "same_data": task.loss(after, b_train, None),
            "meta_valid": task.loss(after, b_valid, None)}[split]
    np.testing.assert_allclose(out.meta_loss[0, 0, 0], want, rtol=1e-5)
    np.testing.assert_allclose(out.train_loss[0, 0, 0], loss, rtol=1e-5)
