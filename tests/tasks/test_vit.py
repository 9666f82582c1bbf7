"""muViT / ViT tasks: names, parameter counts, muP metadata and scales, attention and patches against plain oracles,
coordinate checks (flat in width under muP, growing under SP), recipes."""

import math

import haiku as hk
import jax
import numpy as np
import pytest

from mulo.app import cli
from mulo.app.config import load_config
from mulo.errors import TaskError
from mulo.evaluate.coord_check import coord_data
from mulo.optimizers import adam, muadam
from mulo.tasks import ParamMeta, TaskSettings, get_task, get_tasks, parse_task_name, with_width
from mulo.tasks.vit import PAPER_HEADS, SelfAttention, patchify, vit_geometry

IS_META = dict(is_leaf=lambda x: isinstance(x, ParamMeta))
FMNIST = "fashionmnist-28x28x1"


def _flat(tree):
    return {f"{m}/{n}": leaf for m, leaves in tree.items() for n, leaf in leaves.items()}


# ---------------------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name, patch, heads, tokens", [
    ("muvit-w192-d3_imagenet-32x32x3", 16, 3, 5),      # the reference's patch 16: 2x2 patches + class token
    ("vit-w3072-d3_imagenet-32x32x3", 16, 16, 5),      # the paper's table
    ("muvit-w768-d1_imagenet-64x64x3", 16, 8, 17),
    ("muvit-w128-d2_" + FMNIST, 14, 2, 5),             # default patch on 28x28: largest divisor up to 16; heads W/64
    ("muvit-w96-d2-p7-h3_" + FMNIST, 7, 3, 17),
    ("vit-w64-d1-h4-p4_cifar10-32x32x3", 4, 4, 65),
])
def test_patch_and_heads_from_the_name_or_the_defaults(name, patch, heads, tokens):
    spec = parse_task_name(name)
    assert spec.name == name and spec.family == "vit" and spec.is_mup == name.startswith("mu")
    geometry = vit_geometry(spec)
    assert (geometry.patch, geometry.heads, geometry.num_tokens) == (patch, heads, tokens)


def test_paper_heads_table_and_d_head_fallback():
    assert PAPER_HEADS == {192: 3, 384: 6, 768: 8, 1024: 8, 2048: 16, 3072: 16}
    assert vit_geometry(parse_task_name("muvit-w96-d1_" + FMNIST, d_head=32), d_head=32).heads == 3
    assert with_width("muvit-w64-d1-p7_" + FMNIST, 1024) == "muvit-w1024-d1-p7_" + FMNIST


@pytest.mark.parametrize("name, needles", [
    ("muvit-w64-d1-p5_" + FMNIST, ["patch size 5", "28x28", "-p4, -p7, -p14"]),
    ("muvit-w64-d1-x5_" + FMNIST, ["bad part '-x5'", "[-p{patch}][-h{heads}]"]),
    ("muvit-w64-d1-p4-p7_" + FMNIST, ["bad part '-p7'", "at most once"]),
    ("muvit-w64-d1-h0_" + FMNIST, ["bad part '-h0'", "positive integers"]),
    ("muvit-w64-d1-h3_" + FMNIST, ["bad heads 3", "width 64"]),
    ("muvit-w100-d1_" + FMNIST, ["bad width 100", "192, 384", "d_head=64", "-h{heads}"]),
    ("muvit-w64-d1_tinyshakespeare-s8-vbyte", ["ViTs take an image dataset", FMNIST]),
    ("mumlp-w64-d1-p4_" + FMNIST, ["bad part '-p4'", "only ViTs (muvit, vit)"]),
    ("muvit-w64-d0-p4_" + FMNIST, ["depth '0'"]),
])
def test_a_bad_name_part_is_one_error_line(name, needles):
    with pytest.raises(TaskError) as err:
        get_task(name)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_a_bad_name_part_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["coord-check", "--config", "config/coord_check/mumlp_fashionmnist.py", "--output_dir",
                     str(tmp_path), "--task", "muvit-w64-d1-p5_" + FMNIST])
    err = capsys.readouterr().err
    assert code == 2 and "patch size 5" in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# parameters and muP metadata


def test_muvit_param_count_by_hand():
    task = get_task("muvit-w64-d1-p7_" + FMNIST)  # 16 patches of 7*7*1 = 49 values, + class token = 17 tokens
    w, ff, classes = 64, 4 * 64, 10
    embed = (49 * w + w) + w + 17 * w                             # patch_embed w, b; cls; pos_embed
    attn = 4 * (w * w + w)                                        # query, key, value, out projection
    mlp = (w * ff + ff) + (ff * w + w)
    block = 2 * (2 * w) + attn + mlp                              # two LayerNorms (scale, offset)
    head = 2 * w + (w * classes + classes)                        # ln_f, readout
    assert embed + block + head == 3200 + 64 + 1088 + (256 + 16640 + 16640 + 16448) + (128 + 650) == 55114
    assert task.num_params == 55114
    shapes = {k: tuple(v.shape) for k, v in _flat(task.param_shapes).items()}
    assert shapes["vit/patch_embed/w"] == (49, 64) and shapes["vit/pos_embed"] == (17, 64)
    assert shapes["vit/b0_attn/linear/w"] == (64, 64) and shapes["vit/b0_mlp/linear_1/w"] == (256, 64)
    two = get_task("muvit-w64-d2-p7_" + FMNIST)
    assert two.num_params - task.num_params == block


def test_mup_scale_reaches_hidden_matrices_only():
    hidden_lr_mult = 2.0
    task = get_task("muvit-w64-d2-p7-h2_" + FMNIST, TaskSettings(hidden_lr_mult=hidden_lr_mult))
    meta, scales = _flat(task.param_meta), _flat(task.update_scales)
    hidden = {k for k, m in meta.items() if m.role == "hidden"}
    assert hidden == {f"vit/b{i}_{part}/w" for i in range(2) for part in
                      ("attn/query", "attn/key", "attn/value", "attn/linear", "mlp/linear", "mlp/linear_1")}
    for key, m in meta.items():
        expected = hidden_lr_mult / m.fan_in if m.role == "hidden" else 1.0
        assert scales[key] == expected, key
    # the out projection gets 1/width (the reference's (heads, d_head, width) kernel got 1/d_head = 1/32 here)
    assert scales["vit/b0_attn/linear/w"] == 2.0 / 64
    assert scales["vit/b1_mlp/linear_1/w"] == 2.0 / 256
    # patch and position embeddings are input weights with their real (width-independent) fan-in
    assert meta["vit/patch_embed/w"] == ParamMeta("input", 49) and meta["vit/pos_embed"] == ParamMeta("input", 17)
    assert meta["vit/head/w"] == ParamMeta("output", 64)
    assert {meta[k].role for k in ("vit/cls", "vit/ln_f/scale", "vit/b0_attn/query/b")} == {"vector"}
    # SP twin: same metadata, scale 1 everywhere
    sp = get_task("vit-w64-d2-p7-h2_" + FMNIST)
    assert _flat(sp.param_meta) == meta
    assert set(jax.tree.leaves(sp.update_scales)) == {1.0}


def test_mup_init_variances_follow_the_fan_in_and_sp_uses_standard_init():
    mu = _flat(get_task("muvit-w128-d1-p4_" + FMNIST).init(jax.random.key(1)))  # 50 tokens, patches of 16
    std = lambda k: float(np.std(np.asarray(mu[k])))  # noqa: E731
    assert std("vit/patch_embed/w") == pytest.approx(1 / math.sqrt(16), rel=0.05)
    assert std("vit/pos_embed") == pytest.approx(1 / math.sqrt(50), rel=0.05)
    assert std("vit/b0_attn/linear/w") == pytest.approx(1 / math.sqrt(128), rel=0.05)
    assert std("vit/b0_mlp/linear_1/w") == pytest.approx(1 / math.sqrt(512), rel=0.05)
    assert std("vit/b0_attn/query/b") == pytest.approx(1.0, rel=0.2)
    assert np.all(np.asarray(mu["vit/head/w"]) == 0) and np.all(np.asarray(mu["vit/cls"]) == 0)
    sp = _flat(get_task("vit-w128-d1-p4_" + FMNIST).init(jax.random.key(1)))
    assert float(np.std(np.asarray(sp["vit/pos_embed"]))) == pytest.approx(0.02, rel=0.05)
    assert np.all(np.asarray(sp["vit/b0_attn/query/b"]) == 0)
    assert float(np.std(np.asarray(sp["vit/head/w"]))) > 0


# ---------------------------------------------------------------------------------------------------------------------
# forward pass against plain oracles


def test_patchify_matches_a_plain_loop():
    images = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    out = np.asarray(patchify(images, 2))
    assert out.shape == (2, 6, 12)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                np.testing.assert_array_equal(out[b, r * 3 + c], images[b, 2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel())


@pytest.mark.parametrize("mup", [True, False])
def test_attention_logits_are_scaled_by_one_over_d_head_under_mup(mup):
    heads, width, tokens = 2, 8, 3
    net = hk.transform(lambda x: SelfAttention(heads, mup, name="attn")(x))
    x = np.asarray(jax.random.normal(jax.random.key(0), (tokens, width)))
    params = net.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: np.asarray(jax.random.normal(jax.random.key(2), p.shape)), params)
    lin = lambda name, h: h @ params[f"attn/{name}"]["w"] + params[f"attn/{name}"]["b"]  # noqa: E731
    d_head = width // heads
    q, k, v = (lin(n, x).reshape(tokens, heads, d_head) for n in ("query", "key", "value"))
    mixed = np.zeros((tokens, heads, d_head))
    for h in range(heads):
        scores = q[:, h] @ k[:, h].T / (d_head if mup else math.sqrt(d_head))
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        mixed[:, h] = weights @ v[:, h]
    expected = lin("linear", mixed.reshape(tokens, width))
    np.testing.assert_allclose(np.asarray(net.apply(params, None, x)), expected, rtol=1e-4, atol=1e-4)


def test_forward_multipliers_and_zero_readout():
    settings = TaskSettings(input_mult=3.0, output_mult=0.5)
    task = get_task("muvit-w64-d1-p7_" + FMNIST, settings)
    plain = get_task("muvit-w64-d1-p7_" + FMNIST)
    params = task.init(jax.random.key(0))
    batch = {"x": np.asarray(jax.random.normal(jax.random.key(3), (4, 28, 28, 1))), "y": np.zeros(4, np.int32)}
    acts, acts1 = jax.jit(task.activations)(params, batch), jax.jit(plain.activations)(params, batch)
    np.testing.assert_allclose(np.asarray(acts["embed"]), 3.0 * np.asarray(acts1["embed"]), rtol=1e-5)
    # the readout weight is zero: the logits are the readout bias x output_mult / width, for every example
    expected = np.broadcast_to(np.asarray(params["vit/head"]["b"]) * 0.5 / 64, (4, 10))
    np.testing.assert_allclose(np.asarray(acts["logits"]), expected, rtol=1e-6)
    loss, acc = jax.jit(task.loss_and_accuracy)(params, batch)
    assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0
    assert float(task.normalizer(np.float32(np.nan))) == pytest.approx(1.5 * math.log(10))


# ---------------------------------------------------------------------------------------------------------------------
# coordinate checks (microsoft/mup's protocol, mulo.evaluate.coord_check)

WIDTHS = (64, 512)  # 1 and 8 heads of 64


def _coord_ratios(model, make_opt, seeds):
    """``{stat: {(layer, t): mean over seeds at width 512 / the same at width 64}}`` for the stats ``l1`` (mean |x_t|)
    and ``delta_std`` (std of x_t - x_1, from t = 2): each seed is a new init and batch; at width 64 a single init's
    layer sizes vary by ~10% (the N(0, 1) biases are shared by all tokens), so the mean of a few inits is compared."""
    tasks = get_tasks([f"{model}-w{w}-d1-p7_{FMNIST}" for w in WIDTHS])
    values: dict = {}
    for seed in seeds:
        for r in coord_data(tasks, make_opt, steps=3, batch_size=16, seed=seed):
            for stat in ("l1", "delta_std"):
                if stat == "l1" or r["t"] > 1:
                    values.setdefault(stat, {}).setdefault((r["layer"], r["t"]), {}).setdefault(r["width"], []) \
                        .append(r[stat])
    # (under muP nothing below the zero readout moves in the first step: no delta ratio there)
    return {stat: {k: np.mean(by_w[WIDTHS[1]]) / np.mean(by_w[WIDTHS[0]]) for k, by_w in table.items()
                   if np.mean(by_w[WIDTHS[0]]) > 0} for stat, table in values.items()}


def test_muvit_coordinates_are_flat_in_width_under_muadam():
    make = lambda t: muadam(0.01, t.update_scales)  # noqa: E731
    both = _coord_ratios("muvit", make, seeds=(0, 1, 2))
    ratios = both["l1"]
    layers = {layer for layer, _ in ratios}
    assert layers == {"embed", "b0_attn", "b0_mlp", "b0_out", "logits"}
    bad = {k: r for k, r in ratios.items() if k[0] != "logits" and not 1 / 1.2 <= r <= 1.2}
    assert not bad, f"activation size changes with width: {bad}"
    # the logits start at bias / width (checked exactly above), which fades with width; what the updates add to
    # them (std of x_t - x_1) must not depend on width
    delta = both["delta_std"]
    assert {("b0_attn", 3), ("b0_mlp", 3), ("embed", 3)} <= set(delta), delta  # the second update moved them
    assert all(1 / 1.2 <= delta[("logits", t)] <= 1.2 for t in (2, 3)), delta


def test_sp_vit_coordinates_grow_with_width_under_adam():
    ratios = _coord_ratios("vit", lambda t: adam(0.01), seeds=(0,))["l1"]
    assert all(1 / 1.2 <= r <= 1.2 for (layer, t), r in ratios.items() if t == 1 and layer != "logits"), ratios
    assert min(ratios[(layer, 3)] for layer in ("b0_attn", "b0_mlp", "b0_out", "logits")) > 2.0, ratios


# ---------------------------------------------------------------------------------------------------------------------
# recipes


def test_vit_recipes():
    paper = load_config("config/meta_test/paper_vit_imagenet32.py")
    specs = [parse_task_name(n, d_head=paper.d_head) for n in paper.task]
    assert [s.width for s in specs] == [192, 384, 768, 1024, 2048, 3072]
    assert [vit_geometry(s).heads for s in specs] == [3, 6, 8, 8, 16, 16]
    assert {s.depth for s in specs} == {3} and paper.local_batch_size == 1024 and paper.num_inner_steps == 5000
    cpu = load_config("config/meta_test/cpu_vit_fashionmnist.py")
    geometries = [vit_geometry(parse_task_name(n, d_head=cpu.d_head), cpu.d_head) for n in cpu.task]
    assert {g.image for g in geometries} == {(28, 28, 1)} and {g.patch for g in geometries} <= {4, 7}
