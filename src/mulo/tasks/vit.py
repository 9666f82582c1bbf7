"""Vision transformers on images: ``muvit`` (muP, done right) and ``vit`` (its SP twin).

Names: ``{muvit|vit}-w{W}-d{D}[-p{P}][-h{H}]_{image dataset}``, e.g. ``muvit-w192-d3_imagenet-32x32x3`` or
``muvit-w128-d2-p7-h2_fashionmnist-28x28x1``.

* patch size P (``-p``): must divide the image's height and width; default the largest divisor of both up to 16
  (16 on 32x32 and 64x64 images, the reference's; 14 on 28x28);
* heads H (``-h``): must divide W; default the paper's width -> heads table (``PAPER_HEADS``: 192 -> 3, 384 -> 6,
  768 -> 8, 1024 -> 8, 2048 -> 16, 3072 -> 16), else W / d_head (config key ``d_head``, 64 by default).

Structure (vit_jax's ViT with the ``token`` classifier, pre-LN, no dropout): the image is cut into P x P patches,
each flattened (P*P*C values) and projected by ``patch_embed`` to W; a learned class token ``cls`` is put first and
the position embedding ``pos_embed`` (tokens x W) is added; then ``depth`` blocks of

    h = h + attn(LN_1(h))        # q, k, v, out projections W -> W, H heads of W / H dims, no mask
    h = h + mlp(LN_2(h))         # W -> 4W, GELU, 4W -> W

then LayerNorm ``ln_f`` of the class token and the readout ``head``.

muP (``muvit``), fixing the reference's MuViT (reference_design.md §2.4, §9.3):

==========================  ==================  =============  =========================  ========================
tensor                      role, fan_in        init           forward                    update scale
==========================  ==================  =============  =========================  ========================
patch_embed w (P*P*C, W)    input, P*P*C        N(0, 1/fan_in) tokens x input_mult        1
pos_embed (tokens, W)       input, tokens       N(0, 1/fan_in) (added to the tokens)      1
cls (W,)                    vector              zeros                                     1
q, k, v, out w (W, W)       hidden, W           N(0, 1/W)      logits q.k / d_head        hidden_lr_mult / W
mlp linear w (W, 4W)        hidden, W           N(0, 1/W)                                 hidden_lr_mult / W
mlp linear_1 w (4W, W)      hidden, 4W          N(0, 1/(4W))                              hidden_lr_mult / (4W)
head w (W, C)               output, W           zeros          logits x output_mult / W   1
biases, LayerNorms          vector              N(0, 1) / 1, 0                            1
==========================  ==================  =============  =========================  ========================

so the patch and position embeddings are input weights with their real, width-independent fan_in (the reference
scaled them by 1/sqrt(W)), the out projection is a (W, W) matrix with scale 1/W (the reference's (heads, d_head, W)
kernel got 1/d_head), and the MLP's second layer has fan_in 4W. ``input_mult`` multiplies the whole token embedding
(patches, class token and positions). The position embedding is looked up one-hot by position, so its fan_in is the
number of positions, as a token embedding's is the vocabulary size (``mulo.tasks.common``).

SP (``vit``): haiku defaults as the other SP twins (truncated normal 1/sqrt(fan_in) weights, zero biases, default
readout), position embedding N(0, 0.02^2) and zero class token (vit_jax's), attention q.k / sqrt(d_head), no
multipliers, update scales 1.

Normaliser: clip(loss, 0, 1.5 ln C) with NaN/inf -> the max, the MLP rule (the reference's MuViT used
10 loss / ln 2C clipped to [0, 10]; one rule for every classifier here).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from mulo.data.images import IMAGE_SOURCES
from mulo.data.names import accepted
from mulo.errors import TaskError
from mulo.tasks.common import HaikuTask, classification_loss
from mulo.tasks.names import TaskSpec
from mulo.tasks.transformer import DenseBlock

PAPER_HEADS = {192: 3, 384: 6, 768: 8, 1024: 8, 2048: 16, 3072: 16}
MAX_DEFAULT_PATCH = 16
SP_POS_STD = 0.02
_OPTION = re.compile(r"-([ph])(\d{1,9})$", re.ASCII)  # ASCII digits, at most 9 of them (fits int32)
MODEL_PART = "{model}-w{width}-d{depth}[-p{patch}][-h{heads}]"


@dataclass(frozen=True)
class ViTGeometry:
    """What a ViT name fixes besides width and depth."""

    image: tuple[int, int, int]  # height, width, channels
    patch: int
    heads: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.image[0] // self.patch, self.image[1] // self.patch

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.grid[0] * self.grid[1] + 1

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * self.image[2]


def _options(spec: TaskSpec) -> dict[str, int]:
    """``{"p": patch, "h": heads}`` from the name's ``-p{P}`` / ``-h{H}`` parts (each at most once)."""
    out: dict[str, int] = {}
    for part in spec.options.split("-")[1:]:
        m = _OPTION.match("-" + part)
        if not m or m.group(1) in out or int(m.group(2)) < 1:
            raise TaskError(f"bad part '-{part}' in task name {spec.name!r}: a ViT's model part is {MODEL_PART} "
                            f"(patch and heads positive integers, each given at most once)")
        out[m.group(1)] = int(m.group(2))
    return out


def default_patch(height: int, width: int) -> int:
    """The largest patch size up to ``MAX_DEFAULT_PATCH`` that divides both sides."""
    return max(p for p in range(1, MAX_DEFAULT_PATCH + 1) if height % p == 0 and width % p == 0)


def vit_geometry(spec: TaskSpec, d_head: int = 64) -> ViTGeometry:
    """Image shape, patch size and heads of a ViT task name; ``TaskError`` (one line) naming the bad part."""
    if spec.dataset not in IMAGE_SOURCES:
        raise TaskError(f"bad dataset {spec.dataset!r} for model {spec.model!r} in task name {spec.name!r}: ViTs "
                        f"take an image dataset, one of {accepted('image')}")
    image = tuple(int(n) for n in IMAGE_SOURCES[spec.dataset].shape)
    options = _options(spec)
    patch = options.get("p", default_patch(image[0], image[1]))
    if image[0] % patch or image[1] % patch:
        fits = [p for p in range(1, min(image[:2]) + 1) if image[0] % p == 0 and image[1] % p == 0]
        raise TaskError(f"bad patch size {patch} in task name {spec.name!r}: it must divide the {image[0]}x{image[1]} "
                        f"images, e.g. -p{', -p'.join(map(str, fits))}")
    if "h" in options:
        heads = options["h"]
    elif spec.width in PAPER_HEADS:
        heads = PAPER_HEADS[spec.width]
    elif spec.width % d_head == 0:
        heads = spec.width // d_head
    else:
        raise TaskError(f"bad width {spec.width} in task name {spec.name!r}: no default number of heads (the paper's "
                        f"widths {', '.join(map(str, PAPER_HEADS))}, else a multiple of d_head={d_head}); give "
                        f"-h{{heads}}")
    if spec.width % heads:
        raise TaskError(f"bad heads {heads} in task name {spec.name!r}: the width {spec.width} must be a multiple of "
                        f"the number of heads")
    return ViTGeometry(image=image, patch=patch, heads=heads)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """(..., H, W, C) -> (..., H/P * W/P, P*P*C): non-overlapping patches in row-major order, each flattened
    (row, column, channel)."""
    *lead, h, w, c = images.shape
    x = images.reshape(*lead, h // patch, patch, w // patch, patch, c)
    x = jnp.moveaxis(x, -4, -3)  # (..., H/P, W/P, P, P, C)
    return x.reshape(*lead, (h // patch) * (w // patch), patch * patch * c)


def _linear(size: int, mup: bool, name: str, zero: bool = False) -> hk.Linear:
    """muP: N(0, 1/fan_in) (or zero) weights and N(0, 1) biases; SP: haiku's defaults."""
    if not mup:
        return hk.Linear(size, name=name)
    w_init = jnp.zeros if zero else hk.initializers.VarianceScaling(1.0, "fan_in", "normal")
    return hk.Linear(size, w_init=w_init, b_init=hk.initializers.RandomNormal(stddev=1.0), name=name)


class SelfAttention(hk.Module):
    """Unmasked multi-head self-attention, all four projections (W, W) matrices."""

    def __init__(self, num_heads: int, mup: bool, name: str):
        super().__init__(name=name)
        self.num_heads, self.mup = num_heads, mup

    def __call__(self, x: jax.Array) -> jax.Array:
        *lead, t, d = x.shape
        d_head = d // self.num_heads
        q, k, v = (_linear(d, self.mup, part)(x).reshape(*lead, t, self.num_heads, d_head)
                   for part in ("query", "key", "value"))
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / (d_head if self.mup else math.sqrt(d_head))
        mixed = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, axis=-1), v)
        return _linear(d, self.mup, "linear")(mixed.reshape(*lead, t, d))


class VisionTransformer(hk.Module):
    def __init__(self, width: int, depth: int, num_classes: int, geometry: ViTGeometry, mup: bool,
                 input_mult: float = 1.0, output_mult: float = 1.0, name: str = "vit"):
        super().__init__(name=name)
        self.width, self.depth, self.num_classes, self.geometry = width, depth, num_classes, geometry
        self.mup, self.input_mult, self.output_mult = mup, input_mult, output_mult

    def __call__(self, images: jax.Array, is_training: bool):
        del is_training  # no dropout
        width, mup = self.width, self.mup
        tokens = _linear(width, mup, "patch_embed")(patchify(images, self.geometry.patch))
        pos_init = (hk.initializers.VarianceScaling(1.0, "fan_in", "normal") if mup
                    else hk.initializers.RandomNormal(stddev=SP_POS_STD))
        pos = hk.get_parameter("pos_embed", (self.geometry.num_tokens, width), init=pos_init)
        cls = hk.get_parameter("cls", (width,), init=jnp.zeros)
        cls = jnp.broadcast_to(cls.astype(tokens.dtype), tokens.shape[:-2] + (1, width))
        h = jnp.concatenate([cls, tokens], axis=-2) + pos.astype(tokens.dtype)
        if mup and self.input_mult != 1.0:
            h = h * self.input_mult
        acts = {"embed": h}
        layer_norm = lambda name: hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)
        for i in range(self.depth):
            a = SelfAttention(self.geometry.heads, mup, name=f"b{i}_attn")(layer_norm(f"b{i}_ln_1")(h))
            h = h + a
            m = DenseBlock(mup, name=f"b{i}_mlp")(layer_norm(f"b{i}_ln_2")(h))
            h = h + m
            acts.update({f"b{i}_attn": a, f"b{i}_mlp": m, f"b{i}_out": h})
        logits = _linear(self.num_classes, mup, "head", zero=True)(layer_norm("ln_f")(h[..., 0, :]))
        if mup:
            logits = logits * (self.output_mult / width)
        acts["logits"] = logits
        return logits, acts


def vit_role(module: str, name: str, shape: tuple[int, ...]) -> str:
    leaf_module = module.rsplit("/", 1)[-1]
    if name == "pos_embed" or (leaf_module == "patch_embed" and name == "w"):
        return "input"
    if name != "w":
        return "vector"  # biases, LayerNorm scale/offset, the class token
    return "output" if leaf_module == "head" else "hidden"


class ViTTask(HaikuTask):
    """``muvit-w{W}-d{D}[-p{P}][-h{H}]_{image dataset}`` and ``vit-...``."""

    def __init__(self, spec: TaskSpec, settings: Any, dataset: Any):
        self.num_classes = int(dataset.num_classes)
        self.geometry = vit_geometry(spec, int(settings.d_head))
        self.num_heads, self.patch_size = self.geometry.heads, self.geometry.patch
        mup = spec.is_mup

        def forward(images, is_training):
            return VisionTransformer(spec.width, spec.depth, self.num_classes, self.geometry, mup,
                                     input_mult=settings.input_mult if mup else 1.0,
                                     output_mult=settings.output_mult if mup else 1.0)(images, is_training)

        super().__init__(spec, settings, dataset, forward, role_fn=vit_role, loss_fn=classification_loss,
                         normalizer_max=1.5 * math.log(self.num_classes))


def _register() -> None:
    # this family's entry in the task registry (mulo.registry): the names, μP flags and checks parse_task_name uses
    from mulo.registry import TaskFamily, register_task_family

    register_task_family(TaskFamily(name="vit", models={"muvit": True, "vit": False}, dataset_kind=None,
                                    build=ViTTask, check=vit_geometry, takes_options=True, plural="ViTs",
                                    help="vision transformer on images: patches, class token, depth pre-LN blocks"))


_register()
