"""mulo.mup: μP metadata inferred from shapes equals mulo's own tasks' metadata and the hand-derived μP of user
models (flax linen, flax nnx, haiku); ambiguous shapes are one clear error; the μP init, update scales and readout
multiplier derive from it."""

import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import mulo.mup as mup
from mulo.errors import MuloError
from mulo.tasks import TaskSettings, get_task
from mulo.tasks.base import ParamMeta

I, H, O, V = "input", "hidden", "output", "vector"
KEY = jax.random.key(0)


def _flat(meta) -> dict:
    """{path: (role, fan_in)} of a ParamMeta pytree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(meta, is_leaf=lambda m: isinstance(m, ParamMeta))
    return {mup.leaf_path(p): (m.role, m.fan_in) for p, m in flat}


# ---- mulo's own tasks: inferred == the task's hand-written role functions ----------------------------------------

TASKS = {"mumlp-w{}-d3_fashionmnist-28x28x1": (64, 256),
         "mutransformer-w{}-d2_tinyshakespeare-s16-vbyte": (32, 64),
         "muvit-w{}-d2-p7-h2_fashionmnist-28x28x1": (32, 96)}


@pytest.mark.parametrize("name", list(TASKS))
def test_inferred_metadata_equals_mulo_tasks(name):
    settings = TaskSettings(d_head=16, hidden_lr_mult=4.0)
    width, probe = TASKS[name]
    task = get_task(name.format(width), settings)
    # through the user-facing entry point: init_fn(width) evaluated abstractly
    meta = mup.infer(lambda w: get_task(name.format(w), settings).init(KEY), width, probe)
    assert jax.tree.structure(meta) == jax.tree.structure(task.param_meta)
    assert _flat(meta) == _flat(task.param_meta)
    roles = {r for r, _ in _flat(meta).values()}
    assert roles == {I, H, O, V}
    assert mup.update_scales(meta, 4.0) == task.update_scales


def test_init_std_is_what_mulo_tasks_draw():
    """mulo.tasks.base.init_std (the one place) is the std the muTransformer draws its N(0, 1/fan_in) weights with,
    and mup_init draws the same."""
    task = get_task("mutransformer-w64-d1_tinyshakespeare-s16-vbyte", TaskSettings(d_head=16))
    params = task.init(KEY)
    redrawn = mup.mup_init(params, task.param_meta, jax.random.key(3))
    for module, leaves in task.param_meta.items():
        for name, m in leaves.items():
            a, b = np.asarray(params[module][name]), np.asarray(redrawn[module][name])
            if m.role == V:
                assert np.array_equal(a, b)
            elif m.role == O:
                assert not a.any() and not b.any()
            else:
                expected = 1 / np.sqrt(m.fan_in)
                assert a.std() == pytest.approx(expected, rel=0.1) and b.std() == pytest.approx(expected, rel=0.1)
    assert mup.readout_multiplier(task.param_meta) == 1 / 64
    assert mup.readout_multiplier(task.param_meta, output_mult=2.0) == 2 / 64


# ---- user models -----------------------------------------------------------------------------------------------


class LinenCNN(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.width // 4, (3, 3), strides=2)(x))
        h = nn.relu(nn.Conv(self.width // 4, (3, 3), strides=2)(h))
        h = nn.LayerNorm()(h.reshape(h.shape[0], -1))
        h = nn.relu(nn.Dense(self.width)(h))
        return nn.Dense(10)(h) / self.width


def test_flax_linen_cnn():
    x = jnp.zeros((1, 28, 28, 1))
    init = lambda w: LinenCNN(w).init(KEY, x)["params"]
    meta = mup.infer(init, 64)
    c = 16
    assert _flat(meta) == {
        "Conv_0/bias": (V, 1), "Conv_0/kernel": (I, 9),
        "Conv_1/bias": (V, 1), "Conv_1/kernel": (H, 9 * c),
        "LayerNorm_0/bias": (V, 1), "LayerNorm_0/scale": (V, 1),
        "Dense_0/bias": (V, 1), "Dense_0/kernel": (H, 49 * c),
        "Dense_1/bias": (V, 1), "Dense_1/kernel": (O, 64)}
    assert mup.readout_multiplier(meta) == 1 / 64
    # the whole {"params": ...} collection works too, paths prefixed
    full = mup.infer(lambda w: LinenCNN(w).init(KEY, x), 64)
    assert _flat(full)["params/Dense_1/kernel"] == (O, 64)


class LinenAttention(nn.Module):
    width: int
    tied: bool = False

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(50, self.width)
        h = embed(tokens)
        h = h + nn.MultiHeadDotProductAttention(num_heads=self.width // 8)(h, h)
        h = nn.LayerNorm()(h)
        return embed.attend(h) if self.tied else nn.Dense(50)(h)


def test_flax_linen_attention_needs_the_flax_overrides_and_then_is_right():
    tokens = jnp.zeros((1, 4), jnp.int32)
    init = lambda w: LinenAttention(w).init(KEY, tokens)["params"]
    with pytest.raises(mup.InferenceError) as e:
        mup.infer(init, 32)
    msg = str(e.value)
    assert "\n" not in msg and "MultiHeadDotProductAttention_0/key/kernel" in msg and "Override(" in msg
    meta = _flat(mup.infer(init, 32, overrides=mup.FLAX_ATTENTION))
    att = "MultiHeadDotProductAttention_0"
    assert {k: v for k, v in meta.items() if k.endswith("kernel") or "embedding" in k} == {
        "Embed_0/embedding": (I, 50),
        f"{att}/query/kernel": (H, 32), f"{att}/key/kernel": (H, 32), f"{att}/value/kernel": (H, 32),
        f"{att}/out/kernel": (H, 32), "Dense_0/kernel": (O, 32)}
    assert meta[f"{att}/query/bias"] == (V, 1)  # (heads, d_head)
    # tied embeddings: the shapes say "input"; the user says it is the readout too
    tied = lambda w: LinenAttention(w, tied=True).init(KEY, tokens)["params"]
    meta = _flat(mup.infer(tied, 32, overrides=(*mup.FLAX_ATTENTION, mup.Override("Embed_0/embedding", role=O,
                                                                                    fan_in=32))))
    assert meta["Embed_0/embedding"] == (O, 32)


class NnxLM(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs, vocab: int = 40):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = h + self.blocks[1](nnx.gelu(self.blocks[0](h)))
        return self.head(self.norm(h)) / h.shape[-1]


def test_flax_nnx_state():
    init = lambda w: nnx.split(NnxLM(w, nnx.Rngs(0)), nnx.Param)[1]
    meta = mup.infer(init, 16, probe_width=48)
    assert _flat(meta) == {
        "embed/embedding": (I, 40),
        "blocks/0/kernel": (H, 16), "blocks/0/bias": (V, 1), "blocks/1/kernel": (H, 64), "blocks/1/bias": (V, 1),
        "norm/scale": (V, 1), "norm/bias": (V, 1), "head/kernel": (O, 16), "head/bias": (V, 1)}
    state = init(16)
    scales = mup.update_scales(meta)
    assert jax.tree.structure(scales) == jax.tree.structure(state)
    leaf = lambda tree, *path: jax.tree.leaves(tree[path[0]][path[1]][path[2]] if len(path) == 3 else
                                               tree[path[0]][path[1]])[0]
    assert leaf(scales, "blocks", 1, "kernel") == 1 / 64 and leaf(scales, "head", "kernel") == 1.0
    new = mup.mup_init(state, meta, KEY)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert not np.asarray(leaf(new, "head", "kernel")).any()
    assert np.asarray(leaf(new, "blocks", 1, "kernel")).std() == pytest.approx(1 / 8, rel=0.1)


def test_haiku_params():
    def forward(x, width):
        h = jax.nn.relu(hk.Conv2D(width, 3, stride=2)(x))
        h = hk.Flatten()(h)
        h = hk.nets.MLP([width, width])(h)
        h = hk.LayerNorm(-1, True, True)(h)
        return hk.Linear(10, name="readout")(h)

    x = jnp.zeros((1, 8, 8, 3))
    init = lambda w: hk.transform(lambda x: forward(x, w)).init(KEY, x)
    meta = mup.infer(init, 32, probe_width=64)
    assert _flat(meta) == {
        "conv2_d/w": (I, 27), "conv2_d/b": (V, 1),
        "mlp/~/linear_0/w": (H, 16 * 32), "mlp/~/linear_0/b": (V, 1),
        "mlp/~/linear_1/w": (H, 32), "mlp/~/linear_1/b": (V, 1),
        "layer_norm/scale": (V, 1), "layer_norm/offset": (V, 1),
        "readout/w": (O, 32), "readout/b": (V, 1)}


def test_equinox_layout_and_class_tokens():
    """(out, in) layouts with out_axis=0; unit axes ignored: a (1, 1, d) class token is a vector."""
    def init(w):
        return {"w_in": jnp.zeros((w, 7)), "w_hid": jnp.zeros((2 * w, w)), "w_out": jnp.zeros((5, 2 * w)),
                "cls": jnp.zeros((1, 1, w)), "pos": jnp.zeros((1, 9, w))}

    assert _flat(mup.infer(init, 8, out_axis=0)) == {
        "w_in": (I, 7), "w_hid": (H, 8), "w_out": (O, 16), "cls": (V, 1), "pos": (O, 8)}
    # pos (1, 9, w) in the default layout: fan_in 9 positions, as mulo's ViT's position embedding
    assert _flat(mup.infer(init, 8))["pos"] == (I, 9)


# ---- errors ------------------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_clear_error_each():
    def init(w):
        return {"qkv": jnp.zeros((w, w // 4, 4)), "dense": jnp.zeros((w, w))}

    cases = [
        (lambda: mup.infer(init, 16), r"'qkv'.*Override\('qkv', in_axes"),
        (lambda: mup.infer(init, 16, overrides=[mup.Override("qkv", in_axes=(0,)), mup.Override("nope")]),
         r"\['nope'\] match no parameter"),
        (lambda: mup.infer(init, 16, 16), "must differ"),
        (lambda: mup.infer(lambda w: {"a": jnp.zeros((3, 4))}, 16), "no parameter changes shape"),
        (lambda: mup.infer(lambda w: {f"l{i}": jnp.zeros((w, w)) for i in range(w // 8)}, 8), "different structure"),
        (lambda: mup.infer(lambda w: {"a": jnp.zeros((w,) * (1 + w // 8))}, 8), "rank 2 at one width and 3"),
        (lambda: mup.Override("x", role="readout"), "bad role 'readout'"),
        (lambda: mup.Override("(", role="output"), "bad pattern"),
        (lambda: mup.infer(init, 16, out_axis=1), "bad out_axis"),
        (lambda: mup.infer(init, 16, overrides=[mup.Override("qkv", in_axes=(5,))]), r"bad in_axes \(5,\)"),
        (lambda: mup.readout_multiplier({"a": ParamMeta(H, 4)}), "no readout"),
    ]
    for call, pattern in cases:
        with pytest.raises(MuloError) as e:
            call()
        assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), (pattern, str(e.value))
    meta = _flat(mup.infer(init, 16, overrides=[mup.Override("qkv", in_axes=(0,))]))
    assert meta == {"qkv": (H, 16), "dense": (H, 16)}
