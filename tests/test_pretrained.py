"""Pretrained learned optimizers: the Hugging Face hub layout of PyLO's MetaMLP (written here by the test, from a θ of
ours transposed as torch stores it), its decay constants, the download path through a fake and through the real
huggingface_hub (cache hit without network, offline = one line), ``pretrained:NAME`` and ``as_optax`` with names.
No network is used."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from mulo.app.cli import main as cli_main
from mulo.errors import CheckpointError
from mulo.io import read_jsonl
from mulo.optimizers import AdafacHParams, AdafacMLPLO, as_optax, hub, load_theta, sources
from mulo.pretrained import PRETRAINED, PRETRAINED_DIR, names
from mulo.app.rundir import theta_label

KEY = jax.random.PRNGKey(0)
BASE_CFG = str(Path(__file__).resolve().parents[1] / "config" / "meta_test" / "meta_test_base.py")


def _our_theta(hidden=32):
    lo = AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=hidden))
    theta = lo.init_theta(jax.random.PRNGKey(11))
    theta = jax.tree.map(lambda x: np.asarray(x, np.float32), theta)
    nn = theta["nn"]
    for k in ("b0", "b1", "b2"):  # non-zero biases, so that a bias mix-up shows
        nn[k] = np.linspace(-0.3, 0.2, nn[k].size, dtype=np.float32)
    for k, v in hub.PYLO_DECAYS.items():
        theta[k] = np.asarray(v, np.float32)
    return theta


def _write_hub(folder: Path, theta, config=None, drop=(), reshape=None) -> Path:
    """The hub files as PyLO's PyTorchModelHubMixin writes them: torch Linear weights are (out, in)."""
    nn = theta["nn"]
    tensors = {"network.input.weight": nn["w0"].T, "network.input.bias": nn["b0"],
               "network.linear_0.weight": nn["w1"].T, "network.linear_0.bias": nn["b1"],
               "network.output.weight": nn["w2"].T, "network.output.bias": nn["b2"]}
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items() if k not in drop}
    if reshape:
        key, shape = reshape
        tensors[key] = np.zeros(shape, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    hidden = nn["w1"].shape[0]
    (folder / "config.json").write_text(json.dumps(config or {"input_size": 39, "hidden_size": hidden,
                                                              "hidden_layers": 1}))
    return folder


def _same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _train(opt, params, steps=3):
    state = opt.init(params, steps)
    for i in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.1 * (i + 1), opt.params(state))
        state = opt.update(state, grads, None, None)
    return opt.params(state)


PARAMS = {"w": 0.3 * jax.random.normal(KEY, (128, 40)), "b": jnp.zeros((40,))}
SCALES = {"w": 1.0 / 128, "b": 1.0}


def test_hub_layout_loads_back_to_the_same_theta_and_updates(tmp_path):
    theta = _our_theta()
    folder = _write_hub(tmp_path / "hub", theta)
    lo, loaded = hub.read_hub_folder(folder)
    _same(loaded, theta)
    assert lo.name == "mup_small_fc_mlp"
    assert (lo.hparams.hidden_size, lo.hparams.step_mult, lo.hparams.exp_mult) == (32, 0.01, 0.001)
    ours = AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(hidden_size=32, step_mult=0.01, exp_mult=0.001))
    a = _train(ours.opt_fn(theta, SCALES), PARAMS)
    b = _train(lo.opt_fn(loaded, SCALES), PARAMS)
    _same(a, b)
    # as_optax takes the folder too, and gives the same steps
    tx = as_optax(str(folder), update_scales=SCALES)
    state, params = tx.init(PARAMS), PARAMS
    for i in range(3):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.1 * (i + 1), params)
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    for k in a:
        np.testing.assert_allclose(np.asarray(params[k]), np.asarray(a[k]), rtol=1e-6, atol=1e-7)


def test_decay_constants_map_to_pylo_decays():
    """PyLO: β = param_to_decay(decay_to_param(β₀) + θ) with decay_to_param(x) = log(1 − x)/10 and
    param_to_decay(x) = 1 − exp(10x), i.e. 1 − (1 − β₀)·exp(10θ); worked out by hand: the first momentum decay is
    1 − 0.1·exp(1.5216392) = 1 − 0.1·4.5797 = 0.54203, the RMS decay 1 − 0.001·exp(0.1079706) = 0.998886, the
    second Adafactor decay 1 − 0.01·exp(−1.0864615) = 1 − 0.01·0.33743 = 0.996626."""
    from mulo.optimizers.adafac_mlp import _decays

    lo, theta = hub.theta_from_hub(
        {k: np.zeros(s, np.float32) for k, s in hub._expected_shapes(32).items()},
        {"input_size": 39, "hidden_size": 32, "hidden_layers": 1})
    b_m, b_v, b_f = (np.asarray(x, np.float64) for x in _decays(theta, lo.hparams))
    np.testing.assert_allclose(b_m, [0.542027, 0.958441, 0.998024], atol=2e-6)
    np.testing.assert_allclose(b_v, [0.998886], atol=2e-6)
    np.testing.assert_allclose(b_f, [0.356218, 0.996626, 0.999461], atol=2e-6)
    pylo = lambda b0, t: 1 - math.exp(10 * (math.log(1 - b0) / 10 + t))
    for got, b0s, ts in ((b_m, (0.9, 0.99, 0.999), hub.PYLO_DECAYS["momentum_decays"]),
                         (b_v, (0.999,), hub.PYLO_DECAYS["rms_decays"]),
                         (b_f, (0.9, 0.99, 0.999), hub.PYLO_DECAYS["adafactor_decays"])):
        np.testing.assert_allclose(got, [pylo(b0, t) for b0, t in zip(b0s, ts)], rtol=1e-6)


@pytest.mark.parametrize("change, match", [
    (dict(drop=("network.linear_0.bias",)), "lacks network.linear_0.bias"),
    (dict(reshape=("network.input.weight", (32, 40))), r"network.input.weight has shape \(32, 40\), expected \(32, 39\)"),
    (dict(reshape=("network.extra.weight", (2, 2))), "unexpected tensors network.extra.weight"),
    (dict(config={"input_size": 39, "hidden_size": 32, "hidden_layers": 2}), "hidden_layers=2"),
    (dict(config={"input_size": 40, "hidden_size": 32, "hidden_layers": 1}), "input_size=40"),
])
def test_wrong_hub_files_are_one_line(tmp_path, change, match):
    folder = _write_hub(tmp_path / "hub", _our_theta(), **change)
    with pytest.raises(CheckpointError, match=match) as e:
        hub.read_hub_folder(folder)
    assert "\n" not in str(e.value)


def test_wrong_hub_folder_through_the_cli_is_one_line_exit_2(tmp_path, capsys):
    folder = _write_hub(tmp_path / "hub", _our_theta(), drop=("network.output.weight",))
    code = cli_main(["meta-test", "--config", BASE_CFG, "--checkpoint", str(folder), "--task",
                     "mumlp-w8-d1_fashionmnist-28x28x1", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "lacks network.output.weight" in err
    assert not (tmp_path / "out").exists()


class _FakeHub:
    """hf_hub_download at the boundary: files in ``cached`` are served from the cache (local_files_only), others
    are 'downloaded' from ``remote`` unless offline."""

    def __init__(self, remote: Path, cached: bool, offline: bool = False):
        self.remote, self.cached, self.offline, self.network_calls = remote, cached, offline, []

    def __call__(self, repo_id, filename, local_files_only=False, revision=None, cache_dir=None, **kw):
        assert repo_id == "btherien/mulo"
        if local_files_only:
            if self.cached:
                return str(self.remote / filename)
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not in the local cache")
        self.network_calls.append(filename)
        if self.offline:
            raise ConnectionError("Failed to resolve 'huggingface.co'\n(second line)")
        return str(self.remote / filename)


def test_download_cached_means_no_network_call(tmp_path):
    folder = _write_hub(tmp_path / "snap", _our_theta())
    fake = _FakeHub(folder, cached=True)
    lo, theta, extra = sources.load_source("hf:btherien/mulo", fetch=fake)
    assert fake.network_calls == []
    _same(theta, _our_theta())
    assert extra["source"] == "hf:btherien/mulo" and extra["path"] == str((folder / "model.safetensors").resolve())
    fake = _FakeHub(folder, cached=False)
    sources.load_source("hf:btherien/mulo", fetch=fake)
    assert fake.network_calls == ["config.json", "model.safetensors"]


def test_download_offline_is_one_line(tmp_path):
    fake = _FakeHub(tmp_path, cached=False, offline=True)
    with pytest.raises(CheckpointError, match="cannot download config.json of btherien/mulo from the Hugging Face "
                                              "hub .ConnectionError: Failed to resolve 'huggingface.co'.") as e:
        sources.load_source("hf:btherien/mulo", fetch=fake)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="bad Hugging Face model"):
        sources.load_source("hf:btherien")


def _hf_cache(cache: Path, theta) -> None:
    """huggingface_hub's cache layout: models--OWNER--NAME/{refs/main, snapshots/<commit>/<files>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--btherien--mulo"
    _write_hub(repo / "snapshots" / commit, theta)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_real_huggingface_hub_cache_hit_and_offline(tmp_path):
    """The real hf_hub_download against an endpoint nobody listens on: a cached model loads (so no network call was
    needed), an uncached one is one line."""
    dead = "http://127.0.0.1:9"  # the discard port: connection refused
    _hf_cache(tmp_path / "cache", _our_theta())
    lo, theta, _ = sources.load_source("hf:btherien/mulo", cache_dir=tmp_path / "cache", endpoint=dead)
    _same(theta, _our_theta())
    with pytest.raises(CheckpointError, match="cannot download config.json of btherien/mulo") as e:
        sources.load_source("hf:btherien/mulo", cache_dir=tmp_path / "empty", endpoint=dead)
    assert "\n" not in str(e.value)


def test_pretrained_names_resolve_and_are_in_meta_test_help():
    assert set(names()) >= {"cpu_mulo_m_fmnist", "cpu_mulo_general", "mulo_m"}
    assert sources.pretrained_location("mulo_m") == "hf:btherien/mulo"
    with pytest.raises(CheckpointError, match="unknown pretrained learned optimizer 'nope'; expected one of "
                                              "cpu_mulo_m_fmnist, cpu_mulo_general, mulo_m"):
        sources.load_source("pretrained:nope")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main(["meta-test", "--help"])
    text = " ".join(out.getvalue().split())
    for name in names():
        assert f"pretrained:{name}" in text or name in text
    assert "hf:OWNER/NAME" in text


def test_every_shipped_theta_loads_by_name():
    shipped = [p for p in PRETRAINED if not p.location.startswith("hf:")]
    assert shipped
    for p in shipped:
        lo, theta, extra = sources.load_source(f"pretrained:{p.name}")
        lo2, theta2, _ = load_theta(PRETRAINED_DIR / p.location)
        assert lo.hparams == lo2.hparams and extra["source"] == f"pretrained:{p.name}"
        _same(theta, theta2)
        assert (PRETRAINED_DIR / f"{p.name}.md").is_file()  # its model card
        tx = as_optax(f"pretrained:{p.name}", update_scales=SCALES)
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, PARAMS), tx.init(PARAMS), PARAMS)
        assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", ["cpu_mulo_m_fmnist", "cpu_mulo_general"])
def test_shipped_theta_meta_tests_through_the_cli(tmp_path, name):
    """``meta-test --checkpoint pretrained:NAME`` (the README's command, shortened to 100 steps of a width-64 muMLP,
    inside the widths both were meta-trained on): the run is named by the shipped file's hash, records the name and
    the file's hyper-parameters, and trains (Fashion-MNIST starts at ln 10 = 2.30)."""
    (shipped,) = [p for p in PRETRAINED if p.name == name]
    path = PRETRAINED_DIR / shipped.location
    out = tmp_path / "out"
    assert cli_main(["meta-test", "--config", BASE_CFG, "--checkpoint", f"pretrained:{name}", "--task",
                     "mumlp-w64-d3_fashionmnist-28x28x1", "--num_runs", "1", "--num_inner_steps", "100",
                     "--local_batch_size", "128", "--test_interval", "100", "--max_eval_examples", "500",
                     "--eval_batch_size", "500", "--progress", "false", "--wandb_mode", "disabled",
                     "--output_dir", str(out)]) == 0
    (run_dir,) = out.iterdir()
    assert theta_label(path) in run_dir.name
    seed = run_dir / "mumlp-w64-d3_fashionmnist-28x28x1" / "seed0"
    summary = json.loads((seed / "summary.json").read_text())
    info = summary["settings"]["optimizer_info"]
    lo, _, _ = load_theta(path)
    assert info["checkpoint_extra"]["source"] == f"pretrained:{name}"
    assert (info["hparams"]["step_mult"], info["hparams"]["eps_scaling"]) == (lo.hparams.step_mult,
                                                                              lo.hparams.eps_scaling)
    assert not summary["diverged"] and summary["steps_completed"] == 100
    losses = [r["train_loss"] for r in read_jsonl(seed / "metrics.jsonl") if "train_loss" in r]
    assert losses[0] > 2.0 and float(np.mean(losses[-10:])) < 0.7  # 0.51 measured; a random θ: 7.4
