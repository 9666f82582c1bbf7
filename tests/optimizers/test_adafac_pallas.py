"""The learned optimizer's implementations (config key ``lo_impl``) compute the same function: the Pallas kernel
(interpret mode on CPU) equals the plain ``reference`` path within 1e-5 relative in float32, update by update,
accumulators included, under vmap, and over a 300-step training run; its bf16 matmul stays within a stated tolerance;
``lo_impl`` and ``jax_default_matmul_precision`` are config keys stored in run configs."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from mulo.app.config import dump_text, load_config
from mulo.errors import ConfigError
from mulo.optimizers import AdafacHParams, AdafacMLPLO, build_learned, save_theta
from mulo.optimizers import adafac_pallas as P

KEY = jax.random.PRNGKey(0)
# a wide matrix (d0 = columns), a tall one (d0 = rows), one spanning several column tiles with padded rows and columns,
# and a vector and a scalar (fused path)
SHAPES = {"wide": (5, 9), "tall": (19, 6), "tiles": (10, 136), "vec": (7,), "s": ()}
SCALES = {"wide": 0.2, "tall": 1.0, "tiles": 0.5, "vec": 1.0, "s": 1.0}
TRITON_CALL = "custom_call @__gpu$xla.gpu.triton"  # a Pallas kernel lowered for CUDA through Triton


def _lo(impl, hidden=32):
    # fused_min_size=1: every matrix takes the kernel, however small (the default keeps tiny ones on the reference)
    return AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=hidden), impl=impl, fused_min_size=1)


def _theta(lo):
    theta = lo.init_theta(jax.random.PRNGKey(3))
    theta["momentum_decays"] = jnp.array([0.01, -0.02, 0.03])  # decays away from their initial values
    theta["nn"]["b2"] = jnp.array([0.01, 0.2])  # a non-zero magnitude: exp(exp_mult * magnitude) matters
    return theta


def _params():
    keys = jax.random.split(KEY, len(SHAPES))
    # small params: the measured steps (old - new) keep their float32 precision
    return {k: 1e-3 * jax.random.normal(kk, s) for kk, (k, s) in zip(keys, SHAPES.items())}


def _grads(params, n):
    return [jax.tree.map(lambda p, t=t: jnp.cos(1e3 * p * (t + 2)) * (t + 1), params) for t in range(n)]


def _run(impl, params, grads, hidden=32, scales=SCALES):
    lo = _lo(impl, hidden)
    opt = lo.opt_fn(_theta(lo), scales)
    update = jax.jit(opt.update)
    state = opt.init(params, 10)
    steps = []
    for g in grads:
        new = update(state, g, jnp.float32(0.0), None)
        steps.append(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                  opt.params(state), opt.params(new)))
        state = new
    return steps, state


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(float(np.max(np.abs(b))), 1e-30))


@pytest.fixture(scope="module")
def plain():
    params = _params()
    return params, _run("reference", params, _grads(params, 3))


def test_pallas_equals_the_plain_path_update_by_update(plain):
    params, (ref_steps, ref_state) = plain
    steps, state = _run("pallas", params, _grads(params, 3))
    for got, want in zip(steps, ref_steps):
        for k in SHAPES:
            assert got[k].shape == SHAPES[k]
            assert np.max(np.abs(want[k])) > 0
            _close(got[k], want[k], 1e-5)
    # the accumulators the kernel writes (momenta, RMS) and the small ones XLA writes (row/column) match too
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a, b, 1e-5)


def test_pallas_kernel_is_used_for_matrices_only():
    assert P.applies((5, 9)) and P.applies((1, 9))
    assert not P.applies((7,)) and not P.applies((3, 4, 5))
    lo = _lo("pallas")
    opt = lo.opt_fn(_theta(lo), None)
    params = {"w": jnp.ones((4, 8)), "b": jnp.ones((8,))}
    jaxpr = str(jax.make_jaxpr(lambda p, g: opt.update(opt.init(p, 5), g, 0.0, None))(params, params))
    assert jaxpr.count("pallas_call") == 1  # the matrix; the vector stays on the XLA path


def test_pallas_vmaps_like_meta_training():
    """Meta-training vmaps the LO over slots and antithetic branches."""
    params = {"w": 1e-3 * jax.random.normal(KEY, (6, 20))}
    grads = {"w": jnp.stack([jnp.cos(3e3 * params["w"]), -0.5e3 * params["w"]])}

    def run(impl, g):
        lo = _lo(impl, hidden=8)
        opt = lo.opt_fn(_theta(lo), {"w": 0.5})
        return opt.params(opt.update(opt.init(params, 10), g, 0.0, None))["w"]

    out = jax.jit(jax.vmap(lambda g: run("pallas", g)))(grads)
    for i in range(2):
        want = run("reference", jax.tree.map(lambda x: x[i], grads))
        _close(np.asarray(out[i]) - np.asarray(params["w"]), np.asarray(want) - np.asarray(params["w"]), 1e-5)


@pytest.mark.parametrize("precision", ["float32", "tensorfloat32", "bfloat16"])
def test_pallas_kernel_lowers_for_cuda_through_triton(precision, monkeypatch):
    """The GPU lowering, checked from a CPU: the kernel (not its interpret-mode emulation) lowered for CUDA is one
    Triton custom call per matrix, plain and vmapped as in meta-training. Without explicit Triton compiler parameters
    ``pallas_call`` takes Mosaic GPU (jax 0.10's default), which raises NotImplementedError on this kernel."""
    monkeypatch.setattr(P, "_interpret", lambda: False)
    params = {"w": 1e-3 * jax.random.normal(KEY, (40, 24)), "b": jnp.zeros((24,))}
    lo = _lo("pallas")
    theta = _theta(lo)

    def update(theta, state, grads):
        return lo.opt_fn(theta, {"w": 0.5, "b": 1.0}).update(state, grads)

    state = lo.opt_fn(theta, {"w": 0.5, "b": 1.0}).init(params, 10)
    batched = jax.tree.map(lambda x: jnp.stack([x, -x]), params)
    with jax.default_matmul_precision(precision):
        plain = jax.jit(update).trace(theta, state, params).lower(lowering_platforms=("cuda",)).as_text()
        vmapped = jax.jit(jax.vmap(update, in_axes=(None, None, 0))).trace(theta, state, batched).lower(
            lowering_platforms=("cuda",)).as_text()
    for text in (plain, vmapped):
        assert text.count(TRITON_CALL) == 1, text[:2000]


def test_bf16_matmul_stays_within_its_stated_tolerance():
    """With ``jax_default_matmul_precision=bfloat16`` the kernel's layer-2 matmul takes bf16 inputs (8 significant
    bits: each rounding is within 2^-9 = 0.2% relative) with float32 accumulation; the two roundings (activations and
    weights) bound each product's error by ~0.4%, and the sum over 32 hidden units of mixed signs and the readout
    average it down, so the steps stay within 1% of the largest step. (TF32, 11 bits, cannot be checked on CPU:
    XLA:CPU computes it exactly; the device check compares it on a GPU.)"""
    params = {"w": 1e-3 * jax.random.normal(KEY, (10, 136))}
    grads = _grads(params, 2)
    want, _ = _run("reference", params, grads, scales={"w": 0.5})
    with jax.default_matmul_precision("bfloat16"):
        got, _ = _run("pallas", params, grads, scales={"w": 0.5})
    for g, w in zip(got, want):
        _close(g["w"], w["w"], 1e-2)
    assert max(float(np.max(np.abs(g["w"] - w["w"]))) for g, w in zip(got, want)) > 1e-6 * float(
        np.max(np.abs(want[0]["w"])))  # bf16 was really used (float32 agrees to ~1e-7)


def test_matmul_precision_names():
    assert P.matmul_inputs(None) == (jnp.float32, jax.lax.Precision.HIGHEST)  # never the backend's default
    assert P.matmul_inputs("float32") == (jnp.float32, jax.lax.Precision.HIGHEST)
    assert P.matmul_inputs("tensorfloat32") == (jnp.float32, jax.lax.Precision.HIGH)
    assert P.matmul_inputs("bfloat16")[0] == jnp.bfloat16
    with pytest.raises(ValueError):
        P.matmul_inputs("float8")


def test_300_step_training_run_tracks_the_plain_path():
    """A two-layer MLP (12 -> 16 -> 4, ReLU, softmax cross-entropy) on a fixed random batch, 300 steps of the μLO:
    every step's loss within 1% of the plain path's."""
    kx, ky, k1, k2 = jax.random.split(jax.random.PRNGKey(5), 4)
    x, y = jax.random.normal(kx, (64, 12)), jax.random.randint(ky, (64,), 0, 4)
    params = {"w1": jax.random.normal(k1, (12, 16)) / np.sqrt(12), "b1": jnp.zeros((16,)),
              "w2": jax.random.normal(k2, (16, 4)) / 4.0}
    scales = {"w1": 1.0, "b1": 1.0, "w2": 1.0}

    def loss_fn(p):
        logits = jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def losses(impl):
        lo = _lo(impl, hidden=8)
        opt = lo.opt_fn(lo.init_theta(jax.random.PRNGKey(1)), scales)

        def step(state, _):
            loss, grads = jax.value_and_grad(loss_fn)(opt.params(state))
            return opt.update(state, grads, loss, None), loss

        return np.asarray(jax.jit(lambda s: jax.lax.scan(step, s, None, length=300)[1])(opt.init(params, 300)))

    ref, pal = losses("reference"), losses("pallas")
    assert np.all(np.isfinite(ref)) and ref[-1] < 0.8 * ref[0]  # it trains
    np.testing.assert_allclose(pal, ref, rtol=1e-2)


# ------------------------------------------------------------------------------------------------ config keys


def test_lo_impl_reaches_the_learned_optimizer_and_the_run_config(tmp_path):
    cfg = load_config(None, cli={"lo_impl": "pallas", "jax_default_matmul_precision": "tensorfloat32"})
    assert build_learned(cfg).impl == "pallas"
    text = dump_text(cfg)
    assert "'impl': 'pallas'" in text and "jax_default_matmul_precision = 'tensorfloat32'" in text
    # meta-test: θ brings its hyper-parameters, the config its implementation
    from mulo.app.sections import optimizer_source

    lo = build_learned(load_config(None))
    theta_file = tmp_path / "theta.msgpack"
    save_theta(theta_file, lo, lo.init_theta(KEY))
    src = optimizer_source(load_config(None, cli={"checkpoint": str(theta_file), "lo_impl": "pallas"}))
    assert src.learned[0].impl == "pallas"
    with pytest.raises(ConfigError, match="lo_impl"):
        AdafacMLPLO("mup_small_fc_mlp", impl="triton")


def test_bad_lo_impl_is_one_error_line():
    out = subprocess.run([sys.executable, str(REPO / "src" / "main.py"), "meta-train", "--config",
                          str(REPO / "config" / "meta_train" / "quickstart.py"), "--lo_impl", "cuda"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "lo_impl" in lines[0] and "pallas" in lines[0], out.stderr


def test_meta_train_unroll_with_the_kernel_lowers_for_cuda(monkeypatch):
    """The program the device check's meta-train row runs (``lo_impl=pallas``: the inner steps vmapped over slots and
    antithetic branches, scanned, with resets under a cond) lowers for CUDA with one Triton call per matrix that takes
    the kernel (matrices of >= fused_min_size elements)."""
    from tests.conftest import random_image_dataset
    from tests.parallel_cases import first_chunks

    from mulo.app.sections import meta_trainer
    from mulo.tasks import TaskSettings, parse_task_name
    from mulo.tasks.mlp import MLPTask

    monkeypatch.setattr(P, "_interpret", lambda: False)
    ds = random_image_dataset("fashionmnist-28x28x1")
    cfg = load_config(None, cli=dict(optimizer="mup_small_fc_mlp", lo_impl="pallas", num_tasks=2, trunc_length=2,
                                     steps_per_jit=2, local_batch_size=4, progress=False))
    task = MLPTask(parse_task_name("mumlp-w64-d2_fashionmnist-28x28x1"), TaskSettings.from_config(cfg), ds)
    lo = build_learned(cfg)
    trainer = meta_trainer(cfg, [task], lo)
    state = trainer.init_state()
    est = trainer.estimators[0]
    _, theta_pm = est._jit["start"](state.theta, KEY)
    chunk = first_chunks(trainer, 1)[0]
    text = est._jit["unroll"].trace(theta_pm, state.estimators[0].inner, chunk, KEY).lower(
        lowering_platforms=("cuda",)).as_text()
    kernels = [p for p in jax.tree.leaves(task.init(KEY)) if p.ndim == 2 and p.size >= lo.fused_min_size]
    assert len(kernels) == 2  # 784×64 and 64×64; 64×10 is below fused_min_size
    assert text.count(TRITON_CALL) == len(kernels)
