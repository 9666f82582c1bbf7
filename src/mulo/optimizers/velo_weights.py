"""VeLO's released weights as mulo θ: Google's HyperV2 θ layout, mapped one to one onto ``mulo.optimizers.velo``.

A HyperV2 θ (learned_optimization's ``HyperV2.init``) is a tree of three parts:

* ``lstm_init_state``: haiku's ``LSTMState(hidden, cell)``, each (1, H): the LSTM's meta-trained initial state;
* ``rnn_params``: haiku modules ``linear`` (the mix layer's discarded first linear), ``linear_1`` (the mix layer),
  ``linear_2`` (the LSTM's input layer), each {w (30, H), b (H,)}; ``rnn/linear`` {w (2H, 4H): rows [input; hidden],
  gates i, g, f, o; b (4H,)}; ``rnn_to_controls`` {w (H, K), b (K,)}; ``step_size`` {w (H, 1), b (1,)};
* ``ff_mod_stack``: ``{"~": {w0__0 … w0__13, b0, w1, b1, …}}``, the bank of K per-parameter MLPs, the first layer
  one weight per feature group (``w0__i``: (K, group size, F)), the later ones (K, in, out).

Files (all read without learned_optimization, haiku or torch):

* Google's checkpoint (``pretrained_optimizers``:
  ``gs://gresearch/learned_optimization/pretrained_lopts/<name>/params``, default VeLO ``aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620``): flax ``serialization.to_bytes`` of
  ``ParameterCheckpoint(params=θ, gen_id, step)``, i.e. msgpack of ``{"params": θ, "gen_id": str, "step": int}``;
  its ``config.gin`` sets ``HyperV2.lstm_hidden_size = 512``, ``param_inits = 256``, ``use_bugged_loss_features =
  False`` (HyperV2's defaults otherwise: the step's 100× interpolation, RMS(p) factor, step and exp mult 0.001).
* ``amoudgl/velo-4000`` (Hugging Face, Celo's authors): ``theta.state``, flax ``to_bytes`` of θ itself (no wrapper).
* PyLO (``Pauljanson002/VeLO_RNN`` + ``Pauljanson002/VeLO_MLP``, Hugging Face): torch ``PyTorchModelHubMixin``
  safetensors. RNN: ``mix_layer1`` / ``mix_layer2`` / ``final_mix_layer`` (= linear / linear_1 / linear_2),
  ``lstm.linear``, ``rnn_to_controls``, ``step_size`` as {weight (out, in), bias}, ``lstm_init_state.0`` / ``.1``
  (1, H). MLP: ``input_weights_`` (K, F, 30), ``input_bias_``, ``hidden_weights_.i`` / ``hidden_bias_.i``,
  ``output_weights_`` (K, 3, F), ``output_bias_`` (and working copies without the trailing ``_``, not θ).

Every tensor is mapped; a missing, extra or wrongly shaped one is one CheckpointError line naming it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mulo.errors import CheckpointError, one_line

# the per-parameter MLP's 14 first-layer weight groups (velo_mlp.PARAM_FEATURE_GROUPS), columns per group
GROUP_SIZES = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
# mulo θ["rnn"] name -> HyperV2 haiku module (w, b)
RNN_MODULES = {"mix0": "linear", "mix1": "linear_1", "in": "linear_2", "ctrl": "rnn_to_controls", "lr": "step_size"}
LSTM_MODULE = "rnn/linear"
# HyperV2's defaults and the released checkpoint's config.gin
RELEASED = {"lstm_hidden_size": 512, "param_inits": 256, "ff_hidden_size": 4, "ff_hidden_layers": 2}
HYPERV2_HPARAMS = {"interp_mult": 100.0, "param_scale_mult": True, "step_mult": 0.001, "exp_mult": 0.001}


def _fail(origin: str, what: str):
    raise CheckpointError(f"{origin}: {what}")


def _array(x: Any, origin: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(x, np.ndarray) and not hasattr(x, "__array__"):
        _fail(origin, f"{key} is not a tensor ({type(x).__name__})")
    x = np.asarray(x)
    if x.shape != shape:
        _fail(origin, f"{key} has shape {x.shape}, expected {shape}")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        _fail(origin, f"{key} is not a finite float tensor")
    return np.ascontiguousarray(x.astype(np.float32))


def _keys(d: Any, want: set[str], origin: str, where: str) -> None:
    if not isinstance(d, Mapping):
        _fail(origin, f"{where} is not a map")
    missing, extra = sorted(want - set(d)), sorted(set(d) - want)
    if missing:
        _fail(origin, f"{where} lacks {', '.join(missing)}")
    if extra:
        _fail(origin, f"{where} has unexpected entries {', '.join(extra)}")


def _lstm_state(state: Any, origin: str) -> tuple[Any, Any]:
    """(hidden, cell) of a serialised haiku LSTMState: flax writes named tuples as {hidden, cell} (older flax:
    {name, fields, values} with numbered entries)."""
    if isinstance(state, Mapping) and set(state) == {"name", "fields", "values"}:
        fields, values = state["fields"], state["values"]
        state = {fields[str(i)]: values[str(i)] for i in range(len(fields))}
    _keys(state, {"hidden", "cell"}, origin, "lstm_init_state")
    return state["hidden"], state["cell"]


def sizes_of(tree: Mapping) -> dict[str, int]:
    """lstm_hidden_size, param_inits, ff_hidden_size and ff_hidden_layers read off a HyperV2 θ's shapes."""
    ff = tree["ff_mod_stack"]["~"]
    w = tree["rnn_params"]["rnn_to_controls"]["w"]
    layers = sum(1 for k in ff if k.startswith("w") and "__" not in k)  # w1 … w_L
    return {"lstm_hidden_size": int(np.shape(w)[0]), "param_inits": int(np.shape(w)[1]),
            "ff_hidden_size": int(np.shape(ff["b0"])[-1]), "ff_hidden_layers": layers}


def theta_from_hyperv2(tree: Any, origin: str = "HyperV2 theta", sizes: dict | None = None) -> tuple[dict, dict]:
    """(sizes, mulo θ) of a HyperV2 θ tree (nested maps of arrays, as flax's msgpack restores them). ``sizes``
    (lstm_hidden_size, param_inits, ff_hidden_size, ff_hidden_layers) default to those the shapes imply; every tensor
    is checked against them."""
    from mulo.optimizers.velo import NUM_OUTPUTS
    from mulo.optimizers.velo_lstm import LSTM_FEATURES
    from mulo.optimizers.velo_mlp import PARAM_FEATURES

    _keys(tree, {"lstm_init_state", "rnn_params", "ff_mod_stack"}, origin, "theta")
    try:
        sizes = dict(sizes or sizes_of(tree))
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        _fail(origin, f"not a HyperV2 theta ({type(e).__name__}: {e})")
    lh, k, fh, nl = (sizes[n] for n in ("lstm_hidden_size", "param_inits", "ff_hidden_size", "ff_hidden_layers"))
    rnn_in = tree["rnn_params"]
    _keys(rnn_in, set(RNN_MODULES.values()) | {LSTM_MODULE}, origin, "rnn_params")
    fan_in = {"mix0": LSTM_FEATURES, "mix1": LSTM_FEATURES, "in": LSTM_FEATURES, "ctrl": lh, "lr": lh}
    fan_out = {"mix0": lh, "mix1": lh, "in": lh, "ctrl": k, "lr": 1}
    rnn = {}
    for ours, module in RNN_MODULES.items():
        _keys(rnn_in[module], {"w", "b"}, origin, f"rnn_params/{module}")
        rnn[f"{ours}_w"] = _array(rnn_in[module]["w"], origin, f"rnn_params/{module}/w", (fan_in[ours], fan_out[ours]))
        rnn[f"{ours}_b"] = _array(rnn_in[module]["b"], origin, f"rnn_params/{module}/b", (fan_out[ours],))
    _keys(rnn_in[LSTM_MODULE], {"w", "b"}, origin, f"rnn_params/{LSTM_MODULE}")
    w = _array(rnn_in[LSTM_MODULE]["w"], origin, f"rnn_params/{LSTM_MODULE}/w", (2 * lh, 4 * lh))
    rnn["lstm_wx"], rnn["lstm_wh"] = w[:lh], w[lh:]
    rnn["lstm_b"] = _array(rnn_in[LSTM_MODULE]["b"], origin, f"rnn_params/{LSTM_MODULE}/b", (4 * lh,))
    hidden, cell = _lstm_state(tree["lstm_init_state"], origin)
    rnn["init_h"] = _array(hidden, origin, "lstm_init_state/hidden", (1, lh))[0]
    rnn["init_c"] = _array(cell, origin, "lstm_init_state/cell", (1, lh))[0]
    _keys(tree["ff_mod_stack"], {"~"}, origin, "ff_mod_stack")
    ff_in = tree["ff_mod_stack"]["~"]
    firsts = [f"w0__{i}" for i in range(len(GROUP_SIZES))]
    _keys(ff_in, set(firsts) | {f"w{i}" for i in range(1, nl + 1)} | {f"b{i}" for i in range(nl + 1)}, origin,
          "ff_mod_stack/~")
    assert sum(GROUP_SIZES) == PARAM_FEATURES
    ff = {"w0": np.concatenate([_array(ff_in[n], origin, f"ff_mod_stack/~/{n}", (k, size, fh))
                                for n, size in zip(firsts, GROUP_SIZES)], axis=1)}
    widths = [fh] * nl + [NUM_OUTPUTS]
    for i in range(nl + 1):
        if i:
            ff[f"w{i}"] = _array(ff_in[f"w{i}"], origin, f"ff_mod_stack/~/w{i}", (k, widths[i - 1], widths[i]))
        ff[f"b{i}"] = _array(ff_in[f"b{i}"], origin, f"ff_mod_stack/~/b{i}", (k, widths[i]))
    return sizes, {"rnn": rnn, "ff": ff}


# ------------------------------------------------------------------------------------------------ files and names

GOOGLE_CHECKPOINT = "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620"
GOOGLE_URL = ("https://storage.googleapis.com/gresearch/learned_optimization/pretrained_lopts/"
              f"{GOOGLE_CHECKPOINT}/params")
FLAX_FILE = "theta.state"  # amoudgl/velo-4000's file name
PYLO_REPOS = ("Pauljanson002/VeLO_RNN", "Pauljanson002/VeLO_MLP")
# velo:NAME -> where it comes from (README "Use a pretrained LO")
NAMES = {"velo-4000": f"hf:amoudgl/velo-4000 ({FLAX_FILE}: Google's released VeLO, flax msgpack)",
         "pylo": f"hf:{PYLO_REPOS[0]} + hf:{PYLO_REPOS[1]} (PyLO's safetensors conversion of Google's VeLO)",
         "google": f"{GOOGLE_URL} (Google's checkpoint, flax msgpack; downloaded once into ~/.cache/mulo/velo)"}


def velo_lo(sizes: dict, impl: str = "fused"):
    """VeLO (``velo``: HyperV2's step, 100× interpolation and RMS(p) factor) with the given sizes."""
    from mulo.optimizers.velo import VeloHParams, VeloLO

    return VeloLO("velo", VeloHParams(**sizes, **HYPERV2_HPARAMS), impl=impl)


def read_flax_file(path, origin: str | None = None, impl: str = "fused") -> tuple[Any, dict]:
    """(lo, θ) from a flax msgpack file: Google's checkpoint ({params: θ, gen_id, step}) or a bare θ
    (theta.state)."""
    import os

    from flax import serialization

    origin = origin or os.fspath(path)
    if not os.path.isfile(path):
        _fail(origin, "no such file")
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        _fail(origin, f"not a flax msgpack file ({type(e).__name__}: {one_line(e, 120)})")
    if isinstance(tree, Mapping) and set(tree) == {"params", "gen_id", "step"}:  # ParameterCheckpoint
        tree = tree["params"]
    sizes, theta = theta_from_hyperv2(tree, origin)
    return velo_lo(sizes, impl), theta


def _pylo_rnn(tensors: Mapping, config: Any, origin: str) -> tuple[dict, dict]:
    if not isinstance(config, Mapping) or config.get("mix_layers", True) is not True:
        _fail(origin, "VeLO_RNN's config.json must be a JSON object with mix_layers true")
    lh, k = config.get("lstm_hidden_size", 512), config.get("param_inits", 256)
    n_in = config.get("input_size", 30)
    names = {"mix0": "mix_layer1", "mix1": "mix_layer2", "in": "final_mix_layer", "ctrl": "rnn_to_controls",
             "lr": "step_size"}
    want = {f"{m}.{p}" for m in (*names.values(), "lstm.linear") for p in ("weight", "bias")}
    _keys(tensors, want | {"lstm_init_state.0", "lstm_init_state.1"}, origin, "VeLO_RNN's model.safetensors")
    tree = {"rnn_params": {}, "lstm_init_state": {"hidden": tensors["lstm_init_state.0"],
                                                  "cell": tensors["lstm_init_state.1"]}}
    outs = {"mix0": lh, "mix1": lh, "in": lh, "ctrl": k, "lr": 1}
    ins = {"mix0": n_in, "mix1": n_in, "in": n_in, "ctrl": lh, "lr": lh}
    for ours, theirs in names.items():
        w = _array(tensors[f"{theirs}.weight"], origin, f"{theirs}.weight", (outs[ours], ins[ours]))
        tree["rnn_params"][RNN_MODULES[ours]] = {"w": w.T, "b": tensors[f"{theirs}.bias"]}
    w = _array(tensors["lstm.linear.weight"], origin, "lstm.linear.weight", (4 * lh, 2 * lh))
    tree["rnn_params"][LSTM_MODULE] = {"w": w.T, "b": tensors["lstm.linear.bias"]}
    return tree, {"lstm_hidden_size": lh, "param_inits": k}


def _pylo_mlp(tensors: Mapping, config: Any, origin: str) -> tuple[dict, dict]:
    if not isinstance(config, Mapping):
        _fail(origin, "VeLO_MLP's config.json is not a JSON object")
    k, fh = config.get("param_inits", 256), config.get("hidden_size", 4)
    hidden = config.get("hidden_layers", 1)
    if config.get("input_size", 30) != 30 or config.get("output_size", 3) != 3:
        _fail(origin, "VeLO_MLP's config.json must have input_size 30 and output_size 3")
    banks = ["input_weights_", "input_bias_", "output_weights_", "output_bias_"]
    banks += [f"hidden_{w}_.{i}" for i in range(hidden) for w in ("weights", "bias")]
    working = [b[:-1] if b.endswith("_") else b.replace("_.", ".") for b in banks]  # PyLO's mixed copies: not θ
    _keys({k: v for k, v in tensors.items() if k not in working}, set(banks), origin, "VeLO_MLP's model.safetensors")
    w0 = _array(tensors["input_weights_"], origin, "input_weights_", (k, fh, 30)).transpose(0, 2, 1)
    ff, start = {}, 0
    for i, size in enumerate(GROUP_SIZES):  # HyperV2 keeps the first layer one weight per feature group
        ff[f"w0__{i}"], start = w0[:, start:start + size], start + size
    ff["b0"] = tensors["input_bias_"]
    for i in range(hidden):
        w = _array(tensors[f"hidden_weights_.{i}"], origin, f"hidden_weights_.{i}", (k, fh, fh))
        ff[f"w{i + 1}"], ff[f"b{i + 1}"] = w.transpose(0, 2, 1), tensors[f"hidden_bias_.{i}"]
    w = _array(tensors["output_weights_"], origin, "output_weights_", (k, 3, fh))
    ff[f"w{hidden + 1}"], ff[f"b{hidden + 1}"] = w.transpose(0, 2, 1), tensors["output_bias_"]
    return {"~": ff}, {"param_inits": k, "ff_hidden_size": fh, "ff_hidden_layers": hidden + 1}


def read_pylo_folders(rnn_folder, mlp_folder, origin: str = "PyLO VeLO", impl: str = "fused") -> tuple[Any, dict]:
    """(lo, θ) from PyLO's two hub folders (VeLO_RNN, VeLO_MLP: config.json + model.safetensors each)."""
    from mulo.optimizers.hub import read_hub_files  # the hub's reader: file checks, dtypes, BF16

    parts = []
    for folder, what in ((rnn_folder, "VeLO_RNN"), (mlp_folder, "VeLO_MLP")):
        config, tensors = read_hub_files(folder, f"{origin} ({what})")
        parts.append((tensors, config, f"{origin} ({what})"))
    rnn_tree, rnn_sizes = _pylo_rnn(*parts[0])
    ff_tree, ff_sizes = _pylo_mlp(*parts[1])
    if rnn_sizes["param_inits"] != ff_sizes["param_inits"]:
        _fail(origin, f"VeLO_RNN has {rnn_sizes['param_inits']} controls but VeLO_MLP {ff_sizes['param_inits']} MLPs")
    sizes, theta = theta_from_hyperv2({**rnn_tree, "ff_mod_stack": ff_tree}, origin, {**rnn_sizes, **ff_sizes})
    return velo_lo(sizes, impl), theta
