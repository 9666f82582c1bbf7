"""VeLO's released weights: Google's checkpoint format, amoudgl/velo-4000's theta.state and PyLO's safetensors, each
written here from a HyperV2-layout θ, load as that θ mapped onto mulo's (no network: the hub is faked)."""

from __future__ import annotations

import collections
import io
import json
import re
import urllib.error

import flax
import numpy as np
import pytest
from flax import serialization
from safetensors.numpy import save_file

from mulo.errors import CheckpointError
from mulo.optimizers import as_optax, sources, url_cache
from mulo.optimizers import velo_weights as W
from mulo.optimizers import velo_lstm as VL
from tests.optimizers.test_velo_hyperv2 import SIZES, hyperv2_theta

LSTMState = collections.namedtuple("LSTMState", ["hidden", "cell"])  # haiku's


@flax.struct.dataclass
class ParameterCheckpoint:  # learned_optimization's outer_trainers.gradient_learner.ParameterCheckpoint
    params: dict
    gen_id: str
    step: int


def _hv2():
    tree = hyperv2_theta(4, **SIZES)
    tree = {**tree, "lstm_init_state": LSTMState(**tree["lstm_init_state"])}
    return jax_free_f32(tree)


def jax_free_f32(tree):
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(jax_free_f32(x) for x in tree))
    if isinstance(tree, dict):
        return {k: jax_free_f32(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def _expected(tree) -> dict:
    """HyperV2 θ -> mulo θ, written out by hand."""
    r, ff = tree["rnn_params"], tree["ff_mod_stack"]["~"]
    lh = SIZES["lstm_hidden_size"]
    rnn = {f"{ours}_{p}": r[theirs][p] for ours, theirs in (("mix0", "linear"), ("mix1", "linear_1"),
                                                            ("in", "linear_2"), ("ctrl", "rnn_to_controls"),
                                                            ("lr", "step_size")) for p in "wb"}
    rnn.update(lstm_wx=r["rnn/linear"]["w"][:lh], lstm_wh=r["rnn/linear"]["w"][lh:], lstm_b=r["rnn/linear"]["b"],
               init_h=tree["lstm_init_state"].hidden[0], init_c=tree["lstm_init_state"].cell[0])
    out = {"w0": np.concatenate([ff[f"w0__{i}"] for i in range(14)], axis=1)}
    out.update({k: v for k, v in ff.items() if "__" not in k})
    return {"rnn": rnn, "ff": out}


def _assert_theta(lo, theta, tree):
    assert lo.name == "velo" and lo.hparams.interp_mult == 100.0 and lo.hparams.param_scale_mult
    assert {k: getattr(lo.hparams, k) for k in SIZES} == SIZES
    want = _expected(tree)
    assert set(theta) == set(want) and all(set(theta[k]) == set(want[k]) for k in want)
    for part in want:
        for k in want[part]:
            np.testing.assert_array_equal(theta[part][k], want[part][k], err_msg=f"{part}/{k}")


def _pylo_folders(tmp_path, tree):
    r, ff = tree["rnn_params"], tree["ff_mod_stack"]["~"]
    rnn = {f"{theirs}.weight": r[ours]["w"].T.copy() for ours, theirs in (
        ("linear", "mix_layer1"), ("linear_1", "mix_layer2"), ("linear_2", "final_mix_layer"),
        ("rnn_to_controls", "rnn_to_controls"), ("step_size", "step_size"), ("rnn/linear", "lstm.linear"))}
    rnn.update({k.replace("weight", "bias"): r[ours]["b"] for k, ours in zip(list(rnn), (
        "linear", "linear_1", "linear_2", "rnn_to_controls", "step_size", "rnn/linear"))})
    rnn["lstm_init_state.0"], rnn["lstm_init_state.1"] = tree["lstm_init_state"]
    w0 = np.concatenate([ff[f"w0__{i}"] for i in range(14)], axis=1)
    mlp = {"input_weights_": w0.transpose(0, 2, 1).copy(), "input_bias_": ff["b0"],
           "hidden_weights_.0": ff["w1"].transpose(0, 2, 1).copy(), "hidden_bias_.0": ff["b1"],
           "output_weights_": ff["w2"].transpose(0, 2, 1).copy(), "output_bias_": ff["b2"],
           "input_weights": np.zeros((4, 30), np.float32), "input_bias": np.zeros(4, np.float32),
           "hidden_weights.0": np.zeros((4, 4), np.float32), "hidden_bias.0": np.zeros(4, np.float32),
           "output_weights": np.zeros((3, 4), np.float32), "output_bias": np.zeros(3, np.float32)}
    lh, k = SIZES["lstm_hidden_size"], SIZES["param_inits"]
    configs = {"VeLO_RNN": {"input_size": 30, "lstm_hidden_size": lh, "param_inits": k, "mix_layers": True},
               "VeLO_MLP": {"param_inits": k, "input_size": 30, "hidden_size": 4, "hidden_layers": 1,
                            "output_size": 3}}
    for name, tensors in (("VeLO_RNN", rnn), ("VeLO_MLP", mlp)):
        (tmp_path / name).mkdir()
        save_file({key: np.ascontiguousarray(v) for key, v in tensors.items()}, str(tmp_path / name /
                                                                                   "model.safetensors"))
        (tmp_path / name / "config.json").write_text(json.dumps(configs[name]))
    return tmp_path


def _fake_fetch(files: dict):
    def fetch(repo_id, filename, local_files_only=False, **kwargs):
        if (repo_id, filename) not in files:
            raise ConnectionError("offline")
        return str(files[repo_id, filename])
    return fetch


def test_googles_checkpoint_and_velo_4000_load_as_the_mapped_theta(tmp_path):
    tree = _hv2()
    google = tmp_path / "params"
    google.write_bytes(serialization.to_bytes(ParameterCheckpoint(params=tree, gen_id="", step=0)))
    lo, theta, extra = sources.load_source(f"velo:{google}", impl="reference")
    _assert_theta(lo, theta, tree)
    assert lo.impl == "reference" and extra["source"] == f"velo:{google}"
    (tmp_path / "hub").mkdir()
    bare = tmp_path / "hub" / "theta.state"
    bare.write_bytes(serialization.to_bytes(tree))  # amoudgl/velo-4000: θ itself
    fetch = _fake_fetch({("amoudgl/velo-4000", "theta.state"): bare})
    lo, theta, extra = sources.load_source("velo:velo-4000", fetch=fetch)
    _assert_theta(lo, theta, tree)
    assert extra["path"] == str(bare.resolve())
    # as an optax transformation: a named VeLO source with its planned length
    tx = as_optax(f"velo:{google}", num_steps=100)
    assert tx.init({"w": np.ones((2, 3), np.float32)}).num_steps == 100


def test_pylo_safetensors_load_as_the_mapped_theta(tmp_path):
    tree = _hv2()
    folder = _pylo_folders(tmp_path, tree)
    lo, theta, _ = sources.load_source(f"velo:{folder}")
    _assert_theta(lo, theta, tree)
    fetch = _fake_fetch({(f"Pauljanson002/{n}", f): folder / n / f for n in ("VeLO_RNN", "VeLO_MLP")
                         for f in ("config.json", "model.safetensors")})
    lo, theta, _ = sources.load_source("velo:pylo", fetch=fetch)
    _assert_theta(lo, theta, tree)


def test_bad_velo_files_and_names_are_one_line(tmp_path):
    tree = _hv2()
    cases = {}
    bad = {**tree, "rnn_params": {**tree["rnn_params"], "linear_1": {"w": np.zeros((29, 8), np.float32),
                                                                     "b": tree["rnn_params"]["linear_1"]["b"]}}}
    cases["shape"] = (bad, "rnn_params/linear_1/w has shape (29, 8), expected (30, 8)")
    missing = {**tree, "rnn_params": {k: v for k, v in tree["rnn_params"].items() if k != "step_size"}}
    cases["missing"] = (missing, "rnn_params lacks step_size")
    ff = dict(tree["ff_mod_stack"]["~"], w0__14=np.zeros((4, 1, 4), np.float32))
    cases["extra"] = ({**tree, "ff_mod_stack": {"~": ff}}, "unexpected entries w0__14")
    for name, (t, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(serialization.to_bytes(t))
        with pytest.raises(CheckpointError, match=re.escape(message)) as err:
            sources.load_source(f"velo:{path}")
        assert "\n" not in str(err.value), name
    (tmp_path / "junk").write_bytes(b"\x00not msgpack")
    for spec, message in ((f"velo:{tmp_path / 'junk'}", "not a flax msgpack file|not a map"),
                          ("velo:nonesuch", "unknown VeLO 'nonesuch': expected velo:NAME")):
        with pytest.raises(CheckpointError, match=message) as err:
            sources.load_source(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="cannot download theta.state of amoudgl/velo-4000") as err:
        sources.load_source("velo:velo-4000", fetch=_fake_fetch({}))
    assert "\n" not in str(err.value)
    assert VL.LSTM_FEATURES == 30


class _Response(io.BytesIO):
    """What urllib's urlopen returns, as far as the downloader reads it."""

    def __init__(self, body: bytes, length: int):
        super().__init__(body)
        self.headers = {"Content-Length": str(length)}


def test_velo_google_downloads_once_into_the_cache_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tree = _hv2()
    body = serialization.to_bytes(ParameterCheckpoint(params=tree, gen_id="", step=0))
    requests = []
    serve = {"body": body, "length": len(body), "error": None}

    def open_url(url, timeout):
        requests.append((url, timeout))
        if serve["error"] is not None:
            raise serve["error"]
        return _Response(serve["body"], serve["length"])

    monkeypatch.setattr(url_cache, "open_url", open_url)
    folder = tmp_path / "home" / ".cache" / "mulo" / "velo" / W.GOOGLE_CHECKPOINT
    # a failing request and a truncated body: one line naming the URL and velo:PATH, nothing left in the cache
    serve["error"] = urllib.error.URLError(OSError("Temporary failure in name resolution"))
    with pytest.raises(CheckpointError, match=f"cannot download {re.escape(W.GOOGLE_URL)} .*velo:PATH") as err:
        sources.load_source("velo:google")
    assert "\n" not in str(err.value) and "name resolution" in str(err.value)
    assert not folder.exists() or not any(folder.iterdir())
    serve.update(error=None, body=body[:len(body) // 2])
    with pytest.raises(CheckpointError, match=f"truncated: got {len(body) // 2} of {len(body)} bytes.*velo:PATH"):
        sources.load_source("velo:google")
    assert not any(folder.iterdir())
    assert len(requests) == 2 and all(url == W.GOOGLE_URL and timeout > 0 for url, timeout in requests)
    # the first good call downloads into ~/.cache/mulo/velo and loads the mapped θ; the next makes no request
    serve["body"] = body
    lo, theta, extra = sources.load_source("velo:google", impl="reference")
    _assert_theta(lo, theta, tree)
    assert [p.name for p in folder.iterdir()] == ["params"] and (folder / "params").read_bytes() == body
    assert extra["path"] == str((folder / "params").resolve()) and len(requests) == 3
    serve["error"] = AssertionError("the cached file must be read without a request")
    lo, theta, _ = sources.load_source("velo:google")
    _assert_theta(lo, theta, tree)
    assert len(requests) == 3
