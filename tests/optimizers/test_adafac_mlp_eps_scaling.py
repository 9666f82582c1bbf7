"""lo_eps_scaling: the LO normaliser's ε is 1e-5 (none, the reference) or 1e-5/fan_in (fan_in), per tensor; it is
stored with θ, read from the config, and the fused and reference implementations agree under both."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.app.config import load_config
from mulo.errors import ConfigError
from mulo.optimizers import AdafacHParams, AdafacMLPLO, build_learned, load_theta, save_theta
from mulo.optimizers import adafac_mlp as A

KEY = jax.random.PRNGKey(0)


def _gradient_theta(lo):
    """θ whose MLP outputs direction = the normalised gradient feature g / sqrt(ε + mean(g²)), magnitude 0."""
    theta = jax.tree.map(jnp.zeros_like, lo.init_theta(KEY))
    nn = theta["nn"]
    nn["w0"] = nn["w0"].at[0, 0].set(1.0).at[0, 1].set(-1.0)
    nn["w1"] = nn["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    nn["w2"] = nn["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
    return theta


def _one_step(lo, theta, params, grads):
    opt = lo.opt_fn(theta, None)
    state = opt.update(opt.init(params), grads, None, None)
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), params,
                        opt.params(state))


def test_norm_eps_rule():
    assert A.norm_eps((64, 32), "none") == A.NORM_EPS == 1e-5
    assert A.norm_eps((64, 32), "fan_in") == pytest.approx(1e-5 / 64)
    assert A.norm_eps((3, 3, 16, 8), "fan_in") == pytest.approx(1e-5 / 3)  # shape[0], as the task metadata
    assert A.norm_eps((32,), "fan_in") == A.norm_eps((), "fan_in") == 1e-5  # vectors and scalars: fan_in 1


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_tiny_gradients_hand_computed_under_both_scalings(impl):
    """Gradients of RMS ~1e-5 (mean square 1e-10, far below ε): with ε = 1e-5 the normalised feature is ~g/3e-3;
    with ε = 1e-5/512 it is g / sqrt(1e-5/512 + mean(g²)). The fused path is used for the 512×16 matrix (8192
    elements >= fused_min_size), the reference path for the vector."""
    params = {"w": jnp.zeros((512, 16)), "b": jnp.zeros((16,))}
    g_w = 1e-5 * jax.random.normal(jax.random.PRNGKey(1), (512, 16))
    g_b = jnp.linspace(-2e-5, 1e-5, 16)
    grads = {"w": g_w, "b": g_b}
    for scaling, eps_w in (("none", 1e-5), ("fan_in", 1e-5 / 512)):
        lo = AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4, step_mult=0.01, eps_scaling=scaling),
                         impl=impl)
        step = _one_step(lo, _gradient_theta(lo), params, grads)
        for name, g, eps in (("w", g_w, eps_w), ("b", g_b, 1e-5)):
            g = np.asarray(g, np.float64)
            np.testing.assert_allclose(step[name], 0.01 * g / np.sqrt(eps + np.mean(g ** 2)), rtol=2e-3, atol=1e-9)
    # the two scalings differ by a large factor on the matrix: ε swamps mean(g²) = 1e-10 only under "none"
    none = _one_step(AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4), impl=impl),
                     _gradient_theta(AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4))), params, grads)
    fan = _one_step(AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4, eps_scaling="fan_in"), impl=impl),
                    _gradient_theta(AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4))), params, grads)
    ratio = np.abs(fan["w"]).mean() / np.abs(none["w"]).mean()
    assert ratio == pytest.approx(np.sqrt((1e-5 + 1e-10) / (1e-5 / 512 + 1e-10)), rel=0.02)  # ~20x


def test_fused_matches_reference_with_fan_in_scaling():
    hp = AdafacHParams(hidden_size=8, eps_scaling="fan_in")
    fused, ref = AdafacMLPLO("mup_small_fc_mlp", hp, impl="fused"), AdafacMLPLO("mup_small_fc_mlp", hp,
                                                                                impl="reference")
    theta = fused.init_theta(jax.random.PRNGKey(3))
    params = {"w": 0.1 * jax.random.normal(KEY, (128, 64)), "b": jnp.zeros((64,))}
    grads = {"w": 1e-4 * jax.random.normal(jax.random.PRNGKey(4), (128, 64)), "b": jnp.full((64,), 1e-4)}
    a, b = _one_step(fused, theta, params, grads), _one_step(ref, theta, params, grads)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-10)


def test_config_key_reaches_the_lo_and_its_theta_file(tmp_path):
    cfg = load_config(None, cli={"optimizer": "mup_small_fc_mlp", "hidden_size": 4, "lo_eps_scaling": "fan_in"})
    lo = build_learned(cfg)
    assert lo.hparams.eps_scaling == "fan_in"
    assert load_config(None, cli={}).lo_eps_scaling == "none"  # default: the reference's ε
    save_theta(tmp_path / "t.msgpack", lo, lo.init_theta(KEY))
    loaded, _, _ = load_theta(tmp_path / "t.msgpack")
    assert loaded.hparams.eps_scaling == "fan_in"
    # θ files written before the option existed have no eps_scaling: they load as "none"
    d = AdafacHParams(hidden_size=4).to_dict()
    del d["eps_scaling"]
    assert AdafacHParams.from_dict(d).eps_scaling == "none"
    with pytest.raises(ConfigError, match="lo_eps_scaling"):
        AdafacHParams(eps_scaling="fan_out")
    with pytest.raises(ConfigError, match=r"lo\.eps_scaling.*fan_in"):
        load_config(None, cli={"lo_eps_scaling": "fan_out"})


def test_pallas_with_fan_in_is_one_error_line_and_exit_2_before_anything_is_written(tmp_path, capsys):
    """The Pallas kernel has the reference's ε: with lo_eps_scaling=fan_in it used to fall back to fused silently.
    Meta-train (the scaling from the config) and meta-test (the scaling stored with θ) now stop with one line."""
    from pathlib import Path

    from mulo.app.cli import main as cli_main

    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match="lo_impl=pallas does not take lo_eps_scaling=fan_in"):
        AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4, eps_scaling="fan_in"), impl="pallas")
    AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4), impl="pallas")  # the reference's ε: accepted
    lo = AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=4, eps_scaling="fan_in"))
    save_theta(tmp_path / "t.msgpack", lo, lo.init_theta(KEY))
    out = tmp_path / "out"
    common = ["--lo_impl", "pallas", "--output_dir", str(out), "--wandb_mode", "disabled", "--progress", "false"]
    runs = [["meta-train", "--config", str(repo / "config" / "meta_train" / "quickstart.py"),
             "--lo_eps_scaling", "fan_in", *common],
            ["meta-test", "--config", str(repo / "config" / "meta_test" / "cpu_fashionmnist.py"), "--optimizer",
             "mup_small_fc_mlp", "--checkpoint", str(tmp_path / "t.msgpack"), *common]]
    for argv in runs:
        assert cli_main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lo_impl=pallas does not take lo_eps_scaling=fan_in" in err[0], (argv[0], err)
        assert not out.exists() or not any(out.iterdir()), argv[0]
