"""Tasks: name grammar, muP metadata and scales, models' init and forward multipliers, losses, normalisers."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.app.config import load_config
from mulo.errors import TaskError
from mulo.tasks import (ParamMeta, TaskSettings, get_task, get_tasks, parse_task_name, split_task_names,
                        with_width)
from mulo.tasks.common import clip_normalizer, token_loss
from mulo.tasks.transformer import CausalSelfAttention

IS_META = dict(is_leaf=lambda x: isinstance(x, ParamMeta))
FMNIST = "fashionmnist-28x28x1"
TS = "tinyshakespeare-s8-vbyte"


# ---------------------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name, expected", [
    ("mumlp-w128-d3_imagenet-32x32x3", ("mumlp", 128, 3, "imagenet-32x32x3")),
    ("mlp-w7-d1_fashionmnist-28x28x1", ("mlp", 7, 1, "fashionmnist-28x28x1")),
    ("mumlp-w100000-d64_cifar10-32x32x3", ("mumlp", 100000, 64, "cifar10-32x32x3")),
    ("mutransformer-w192-d2_lm1b-s64-v32k", ("mutransformer", 192, 2, "lm1b-s64-v32k")),
    ("transformer-w64-d5_tinyshakespeare-s17-vbyte", ("transformer", 64, 5, "tinyshakespeare-s17-vbyte")),
    ("mumlp-w64-d2_imagenet-64x64x3", ("mumlp", 64, 2, "imagenet-64x64x3")),
])
def test_parse_good_names(name, expected):
    spec = parse_task_name(name)
    assert (spec.model, spec.width, spec.depth, spec.dataset) == expected
    assert spec.name == name
    assert spec.is_mup == name.startswith("mu")


@pytest.mark.parametrize("name, needles", [
    ("resnet-w64-d3_cifar10-32x32x3", ["model 'resnet'", "mumlp, mlp, mutransformer, transformer"]),
    ("mumlp-w0-d3_cifar10-32x32x3", ["width '0'", "positive integer"]),
    ("mumlp-wabc-d3_cifar10-32x32x3", ["width 'abc'", "positive integer"]),
    ("mumlp-w64-d0_cifar10-32x32x3", ["depth '0'", "positive integer"]),
    ("mumlp-w64-d3_mnist-28x28x1", ["dataset 'mnist-28x28x1'", "fashionmnist-28x28x1", "lm1b-s{seq}-v32k"]),
    ("mumlp-w64-d3_lm1b-s64-v32k", ["MLPs take an image dataset"]),
    ("mutransformer-w128-d3_cifar10-32x32x3", ["transformers take a text dataset"]),
    ("mutransformer-w100-d3_lm1b-s64-v32k", ["width 100", "multiple of d_head=64"]),
    ("mutransformer-w128-d3_lm1b-s0-v32k", ["sequence length"]),
    ("mumlp-w64-d3", ["expected {model}-w{width}-d{depth}_{dataset}"]),
    ("mumlp-64-3_cifar10-32x32x3", ["model part 'mumlp-64-3'"]),
])
def test_bad_names_say_which_part_is_wrong(name, needles):
    with pytest.raises(TaskError) as err:
        get_task(name)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_d_head_setting_changes_valid_widths():
    with pytest.raises(TaskError):
        parse_task_name("mutransformer-w96-d1_" + TS)
    task = get_task("mutransformer-w96-d1_" + TS, TaskSettings(d_head=32))
    assert task.num_heads == 3
    assert task.param_shapes["transformer/h0_attn/query"]["w"].shape == (96, 96)


def test_comma_lists_are_multi_task_and_share_datasets():
    assert split_task_names("a, b,c") == ["a", "b", "c"]
    assert split_task_names(["a,b", "c"]) == ["a", "b", "c"]
    tasks = get_tasks(f"mumlp-w8-d1_{FMNIST},mumlp-w16-d2_{FMNIST},mutransformer-w64-d1_{TS}")
    assert [t.spec.width for t in tasks] == [8, 16, 64]
    assert tasks[0].dataset is tasks[1].dataset
    assert tasks[2].dataset is not tasks[0].dataset
    with pytest.raises(TaskError):
        get_tasks(" , ")


def test_with_width():
    assert with_width(f"mumlp-w128-d3_{FMNIST}", 2048) == f"mumlp-w2048-d3_{FMNIST}"
    with pytest.raises(TaskError):
        with_width(f"mutransformer-w128-d3_{TS}", 100)


def test_settings_from_config():
    cfg = load_config(None, cli={"mup_input_mult": 2.0, "mup_output_mult": 0.5, "mup_hidden_lr_mult": 4.0,
                                 "d_head": 32, "vocab_path": "/x.model", "tfds_download": True})
    s = TaskSettings.from_config(cfg)
    assert (s.input_mult, s.output_mult, s.hidden_lr_mult, s.d_head) == (2.0, 0.5, 4.0, 32)
    assert s.vocab_path == "/x.model" and s.tfds_download is True and s.data_dir is None
    assert TaskSettings.from_config({**cfg.to_dict(), **cfg.section("task_options")}) == s  # a plain mapping


# ---------------------------------------------------------------------------------------------------------------------
# shapes and metadata (no data needed)


def test_parameter_counts_match_the_reference():
    assert get_task("mumlp-w128-d3_imagenet-32x32x3").num_params == 555_368
    assert get_task("mumlp-w1024-d3_imagenet-32x32x3").num_params == 6_270_952
    assert get_task("mlp-w128-d3_imagenet-32x32x3").num_params == 555_368
    # 3072 -> 128 -> 128 -> 128 -> 1000, by hand
    assert 3072 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 1000 + 1000 == 555_368


def test_construction_reads_no_data():
    task = get_task(f"mumlp-w64-d2_{FMNIST}")
    assert task.dataset._raw == {}
    text = get_task(f"mutransformer-w64-d1_{TS}")
    assert text.dataset._tokens is None


@pytest.mark.parametrize("name", [f"mumlp-w32-d3_{FMNIST}", f"mlp-w32-d1_{FMNIST}", f"mutransformer-w64-d2_{TS}",
                                  f"transformer-w64-d1_{TS}"])
def test_meta_and_scales_have_the_params_structure(name):
    task = get_task(name, TaskSettings(hidden_lr_mult=3.0))
    params = task.init(jax.random.key(0))
    assert jax.tree.structure(task.param_meta, **IS_META) == jax.tree.structure(params)
    assert jax.tree.structure(task.update_scales) == jax.tree.structure(params)
    assert jax.tree.structure(task.param_shapes) == jax.tree.structure(params)
    for module, leaves in params.items():
        for pname, value in leaves.items():
            meta = task.param_meta[module][pname]
            scale = task.update_scales[module][pname]
            assert type(scale) is float
            assert meta.fan_in == (value.shape[0] if meta.role != "vector" else 1)
            if not task.is_mup:
                assert scale == 1.0
            elif meta.role == "hidden":
                assert scale == 3.0 / value.shape[0]
            else:
                assert scale == 1.0


def test_mlp_roles():
    task = get_task(f"mumlp-w32-d3_{FMNIST}", TaskSettings(hidden_lr_mult=2.0))
    roles = {(m, n): meta.role for m, d in task.param_meta.items() for n, meta in d.items()}
    assert roles[("linear_0", "w")] == "input"
    assert roles[("linear_1", "w")] == roles[("linear_2", "w")] == "hidden"
    assert roles[("linear_3", "w")] == "output"
    assert all(roles[(f"linear_{i}", "b")] == "vector" for i in range(4))
    assert task.update_scales["linear_1"]["w"] == 2.0 / 32
    assert task.update_scales["linear_0"]["w"] == task.update_scales["linear_3"]["w"] == 1.0


def test_transformer_roles_and_scales():
    d = 128
    task = get_task(f"mutransformer-w{d}-d2_{TS}", TaskSettings(hidden_lr_mult=5.0))
    meta, scales = task.param_meta, task.update_scales
    assert meta["transformer/embed_in"]["embeddings"] == ParamMeta("input", 259)
    assert meta["transformer/linear_out"]["w"] == ParamMeta("output", d)
    for i in range(2):
        for proj in ("query", "key", "value", "linear"):
            assert meta[f"transformer/h{i}_attn/{proj}"]["w"] == ParamMeta("hidden", d)
            assert scales[f"transformer/h{i}_attn/{proj}"]["w"] == 5.0 / d
            assert scales[f"transformer/h{i}_attn/{proj}"]["b"] == 1.0
        assert scales[f"transformer/h{i}_mlp/linear"]["w"] == 5.0 / d
        assert scales[f"transformer/h{i}_mlp/linear_1"]["w"] == 5.0 / (4 * d)
        assert scales[f"transformer/h{i}_ln_1"] == {"scale": 1.0, "offset": 1.0}
    assert scales["transformer/h_f"] == {"scale": 1.0, "offset": 1.0}
    assert scales["transformer/embed_in"]["embeddings"] == scales["transformer/linear_out"]["w"] == 1.0


def test_example_batch_matches_the_spec():
    task = get_task(f"mumlp-w8-d1_{FMNIST}")
    b = task.example_batch((2, 3))
    assert b["x"].shape == (2, 3, 28, 28, 1) and b["x"].dtype == np.float32
    assert b["y"].shape == (2, 3) and b["y"].dtype == np.int32
    assert task.batch_spec()["x"].shape == (28, 28, 1)
    text = get_task(f"mutransformer-w64-d1_{TS}")
    b = text.example_batch((4,))
    assert b["x"].shape == b["y"].shape == (4, 8) and b["x"].dtype == np.int32
    assert np.isfinite(float(text.loss(text.init(jax.random.key(0)), b, jax.random.key(1))))


# ---------------------------------------------------------------------------------------------------------------------
# muMLP init and forward


def _fake_images(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.random((n, 28, 28, 1), np.float32), "y": rng.integers(0, 10, n).astype(np.int32)}


def test_mumlp_init_distributions():
    width = 512
    task = get_task(f"mumlp-w{width}-d2_{FMNIST}")
    p = task.init(jax.random.key(0))
    w0, w1 = np.asarray(p["linear_0"]["w"]), np.asarray(p["linear_1"]["w"])
    # truncated at +-2 std, no variance correction: actual std = 0.8796 * sqrt(1/fan_in)
    for w, fan_in in ((w0, 784), (w1, width)):
        std = math.sqrt(1.0 / fan_in)
        assert np.abs(w).max() <= 2 * std + 1e-7
        assert abs(w.std() / std - 0.8796) < 0.01
    biases = np.concatenate([np.asarray(p[f"linear_{i}"]["b"]) for i in range(3)])
    assert abs(biases.std() - 1.0) < 0.1 and abs(biases.mean()) < 0.1
    assert np.all(np.asarray(p["linear_2"]["w"]) == 0.0)


def test_mumlp_logits_at_init_are_the_scaled_readout_bias():
    width, out_mult = 64, 2.5
    task = get_task(f"mumlp-w{width}-d2_{FMNIST}", TaskSettings(output_mult=out_mult))
    p = task.init(jax.random.key(1))
    batch = _fake_images()
    logits = np.asarray(task.logits(p, batch))
    expected = np.asarray(p["linear_2"]["b"]) * out_mult / width
    np.testing.assert_array_equal(logits, np.broadcast_to(expected, logits.shape))


def test_mumlp_forward_multipliers_by_hand():
    task = get_task(f"mumlp-w16-d2_{FMNIST}", TaskSettings(input_mult=3.0, output_mult=5.0))
    p = task.init(jax.random.key(2))
    p = jax.tree.map(lambda a: a + 0.01, p)  # non-zero readout
    batch = _fake_images(4)
    x = batch["x"].reshape(4, -1)
    h0 = 3.0 * (x @ p["linear_0"]["w"] + p["linear_0"]["b"])
    h1 = np.maximum(h0, 0) @ p["linear_1"]["w"] + p["linear_1"]["b"]
    logits = (np.maximum(h1, 0) @ p["linear_2"]["w"] + p["linear_2"]["b"]) * 5.0 / 16
    acts = task.activations(p, batch)
    np.testing.assert_allclose(acts["linear_0"], h0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["linear_1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(task.logits(p, batch), logits, rtol=1e-5, atol=1e-5)
    loss, acc = task.loss_and_accuracy(p, batch)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(loss, np.mean(lse - logits[np.arange(4), batch["y"]]), rtol=1e-5)
    np.testing.assert_allclose(acc, np.mean(logits.argmax(-1) == batch["y"]))
    np.testing.assert_allclose(task.loss(p, batch, None), loss, rtol=1e-6)


def test_sp_mlp_is_standard():
    task = get_task(f"mlp-w64-d2_{FMNIST}", TaskSettings(input_mult=3.0, output_mult=7.0, hidden_lr_mult=9.0))
    assert not task.is_mup
    p = task.init(jax.random.key(0))
    for i in range(3):
        assert np.all(np.asarray(p[f"linear_{i}"]["b"]) == 0.0)
    readout = np.asarray(p["linear_2"]["w"])
    assert abs(readout.std() / math.sqrt(1 / 64) - 0.8796) < 0.05  # haiku default, not zero
    batch = _fake_images(4)
    x = batch["x"].reshape(4, -1)
    h = np.maximum(x @ p["linear_0"]["w"], 0)
    h = np.maximum(h @ p["linear_1"]["w"], 0)
    np.testing.assert_allclose(task.logits(p, batch), h @ readout, rtol=1e-4, atol=1e-5)  # multipliers ignored


# ---------------------------------------------------------------------------------------------------------------------
# transformer


def test_mutransformer_init():
    task = get_task(f"mutransformer-w128-d1_{TS}")
    p = task.init(jax.random.key(0))
    emb = np.asarray(p["transformer/embed_in"]["embeddings"])
    assert emb.shape == (259, 128)
    assert abs(emb.std() * math.sqrt(259) - 1.0) < 0.05
    assert np.all(np.asarray(p["transformer/linear_out"]["w"]) == 0.0)
    q = np.asarray(p["transformer/h0_attn/query"]["w"])
    assert abs(q.std() * math.sqrt(128) - 1.0) < 0.05
    l1 = np.asarray(p["transformer/h0_mlp/linear_1"]["w"])
    assert l1.shape == (512, 128) and abs(l1.std() * math.sqrt(512) - 1.0) < 0.05
    assert abs(np.asarray(p["transformer/h0_attn/query"]["b"]).std() - 1.0) < 0.3
    batch = task.example_batch((2,))
    logits = np.asarray(task.logits(p, batch))
    expected = np.asarray(p["transformer/linear_out"]["b"]) / 128
    np.testing.assert_allclose(logits, np.broadcast_to(expected, logits.shape), rtol=1e-6)


def _attention_by_hand(p, x, num_heads, d_head, scale):
    t = x.shape[0]
    proj = lambda name: (x @ p[name]["w"] + p[name]["b"]).reshape(t, num_heads, d_head)
    q, k, v = proj("attn/query"), proj("attn/key"), proj("attn/value")
    out = np.zeros((t, num_heads, d_head))
    for h in range(num_heads):
        logits = q[:, h] @ k[:, h].T * scale
        logits = np.where(np.tril(np.ones((t, t))) > 0, logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out[:, h] = w @ v[:, h]
    return out.reshape(t, -1) @ p["attn/linear"]["w"] + p["attn/linear"]["b"]


@pytest.mark.parametrize("mup", [True, False])
def test_attention_scale_and_causality_by_hand(mup):
    num_heads, d_head, t = 2, 4, 5
    f = hk.without_apply_rng(hk.transform(lambda x: CausalSelfAttention(num_heads, d_head, mup, name="attn")(x, None)))
    x = np.random.default_rng(0).normal(size=(t, num_heads * d_head)).astype(np.float32)
    p = f.init(jax.random.key(0), x)
    assert set(p) == {"attn/query", "attn/key", "attn/value", "attn/linear"}
    p = jax.tree.map(lambda a: a + 0.3, p)  # non-zero SP biases too
    scale = 1.0 / d_head if mup else 1.0 / math.sqrt(d_head)
    np.testing.assert_allclose(f.apply(p, x), _attention_by_hand(p, x, num_heads, d_head, scale), rtol=1e-4,
                               atol=1e-4)


def test_transformer_is_causal_and_dropout_only_in_train_mode():
    task = get_task(f"mutransformer-w64-d2_{TS}")
    p = task.init(jax.random.key(0))
    p["transformer/linear_out"]["w"] = jax.random.normal(jax.random.key(5), p["transformer/linear_out"]["w"].shape)
    x = np.arange(3, 11, dtype=np.int32)[None]
    batch = {"x": x, "y": x}
    x2 = x.copy()
    x2[0, -1] = 100
    l1 = np.asarray(task.logits(p, batch))
    l2 = np.asarray(task.logits(p, {"x": x2, "y": x2}))
    np.testing.assert_allclose(l1[0, :-1], l2[0, :-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(l1[0, -1], l2[0, -1])
    # eval mode: deterministic; train mode: dropout depends on the key
    assert float(task.loss_and_accuracy(p, batch)[0]) == float(task.loss_and_accuracy(p, batch)[0])
    a, b = (float(task.loss(p, batch, jax.random.key(k))) for k in (1, 2))
    assert a != b
    assert float(task.loss(p, batch, jax.random.key(1))) == a


def test_token_loss_masks_pad_targets_by_hand():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    y = jnp.asarray([[1, 2, 0], [4, 0, 0]], jnp.int32)
    loss, acc = token_loss(logits, y)
    lg = np.asarray(logits)
    ce = np.log(np.exp(lg).sum(-1)) - np.take_along_axis(lg, np.asarray(y)[..., None], -1)[..., 0]
    keep = np.asarray(y) != 0
    np.testing.assert_allclose(loss, ce[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(acc, (lg.argmax(-1) == np.asarray(y))[keep].mean())


def test_sp_transformer_is_standard():
    task = get_task(f"transformer-w64-d1_{TS}", TaskSettings(output_mult=9.0, hidden_lr_mult=7.0))
    assert not task.is_mup
    assert set(jax.tree.leaves(task.update_scales)) == {1.0}
    p = task.init(jax.random.key(0))
    assert np.all(np.asarray(p["transformer/h0_attn/query"]["b"]) == 0.0)
    assert np.asarray(p["transformer/linear_out"]["w"]).std() > 0.05  # default readout, not zero
    emb = np.asarray(p["transformer/embed_in"]["embeddings"])
    assert abs(emb.std() - 0.88) < 0.05  # haiku Embed default: truncated normal, std 1


# ---------------------------------------------------------------------------------------------------------------------
# normalisers


def test_normalizers():
    mlp = get_task(f"mumlp-w8-d1_{FMNIST}")
    top = 1.5 * math.log(10)
    values = jnp.asarray([-1.0, 0.5, 100.0, jnp.nan, jnp.inf, -jnp.inf])
    np.testing.assert_allclose(mlp.normalizer(values), [0.0, 0.5, top, top, top, top], rtol=1e-6)
    lm = get_task(f"mutransformer-w64-d1_{TS}")
    np.testing.assert_allclose(lm.normalizer(jnp.asarray([jnp.nan, 2.0])), [1.5 * math.log(259), 2.0], rtol=1e-6)
    np.testing.assert_allclose(clip_normalizer(jnp.asarray(3.0), 2.0), 2.0)
    assert jax.jit(mlp.normalizer)(jnp.nan) == pytest.approx(top)
