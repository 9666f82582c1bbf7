"""μP metadata inferred from shapes: which axes of every parameter grow with width, hence its role and fan_in.

The model's init is evaluated abstractly (``jax.eval_shape``: no FLOPs, no memory) at two widths; an axis whose size
differs between them scales with width. A tensor of rank >= 2 (unit axes ignored) splits into input axes (all but the
last by default: flax's and haiku's Dense/Conv/Embed layouts, ``(..., in, out)``; ``out_axis=0`` for
equinox/PyTorch's ``(out, in, ...)``) and its output axis:

=============================  ==========  ===============================
input axes scale  output scales  role        examples
=============================  ==========  ===============================
no                yes            input       first Dense, embeddings, conv stem
yes               yes            hidden      Dense d -> 4d, conv c -> c
yes               no             output      readout
no                no             input       a width-independent matrix
=============================  ==========  ===============================

fan_in is the product of the input axes' sizes (an embedding's: the vocabulary, as mulo's tasks), 1 for vectors
(rank <= 1 once unit axes are dropped: biases, norm scales, a (1, 1, d) class token). Which axes are inputs cannot be
told from shapes when a width-scaling axis sits before the last two (e.g. flax's ``DenseGeneral`` attention kernels
(d, heads, d_head)); such a leaf is one ``InferenceError`` naming it and the ``Override`` to give.

``Override(pattern, ...)``: for the leaves whose path (``"params/Dense_0/kernel"``) matches the regular expression
``pattern`` (``re.search``; the first matching override wins), set ``in_axes``, ``role`` and/or ``fan_in`` -- for
what shapes cannot tell: a tied embedding used as the readout, attention kernels, a fan_in that should not be the
product of the input axes. ``FLAX_ATTENTION`` holds the overrides for flax linen's ``MultiHeadDotProductAttention``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax

from mulo.errors import MuloError
from mulo.tasks.base import ROLES, ParamMeta


class InferenceError(MuloError):
    """μP metadata cannot be inferred from the shapes (one line naming the leaf and what to do)."""


@dataclass(frozen=True)
class Override:
    """What shapes cannot tell, for the leaves whose path matches ``pattern`` (a regular expression, ``re.search``).

    in_axes: the tensor's input (contracted) axes; role / fan_in: set outright (``role`` one of input, hidden,
    output, vector)."""

    pattern: str
    in_axes: tuple[int, ...] | None = None
    role: str | None = None
    fan_in: int | None = None

    def __post_init__(self):
        if self.role is not None and self.role not in ROLES:
            raise InferenceError(f"bad role {self.role!r} in Override({self.pattern!r}): expected one of {ROLES}")
        if self.fan_in is not None and self.fan_in < 1:
            raise InferenceError(f"bad fan_in {self.fan_in} in Override({self.pattern!r}): must be >= 1")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise InferenceError(f"bad pattern {self.pattern!r} in Override: {e}") from None


# flax linen's MultiHeadDotProductAttention: q/k/v kernels (d, heads, d_head) read d, their biases (heads, d_head)
# are vectors; the out kernel (heads, d_head, d) reads heads x d_head
FLAX_ATTENTION = (Override(r"(query|key|value)/kernel$", in_axes=(0,)), Override(r"(query|key|value)/bias$",
                                                                                   role="vector"),
                  Override(r"out/kernel$", in_axes=(0, 1)))


def leaf_path(path: Sequence[Any]) -> str:
    """``"params/Dense_0/kernel"`` from a ``tree_flatten_with_path`` key path (nnx's ``.value`` dropped)."""
    parts = []
    for k in path:
        part = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(part))
    if len(parts) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def _leaf_meta(name: str, shape: tuple[int, ...], probe: tuple[int, ...], override: Override | None,
               out_axis: int) -> ParamMeta:
    if len(shape) != len(probe):
        raise InferenceError(f"parameter {name!r} has rank {len(shape)} at one width and {len(probe)} at the other; "
                             f"give Override({name!r}, role=..., fan_in=...)")
    ov = override or Override(".")
    if ov.role is not None and ov.fan_in is not None:
        return ParamMeta(role=ov.role, fan_in=ov.fan_in)
    if ov.role == "vector":
        return ParamMeta(role="vector", fan_in=1)
    scales = [a != b for a, b in zip(shape, probe)]
    axes = [i for i, n in enumerate(shape) if n > 1 or probe[i] > 1]  # unit axes carry nothing
    if ov.in_axes is None and len(axes) <= 1:
        return ParamMeta(role=ov.role or "vector", fan_in=ov.fan_in or 1)
    if ov.in_axes is not None:
        in_axes = tuple(a % len(shape) for a in ov.in_axes)
        if not in_axes or any(not 0 <= a < len(shape) for a in ov.in_axes) or len(set(in_axes)) != len(in_axes):
            raise InferenceError(f"bad in_axes {ov.in_axes} in Override({ov.pattern!r}) for {name!r} of shape "
                                 f"{shape}")
    else:
        out = axes[-1] if out_axis == -1 else axes[0]
        in_axes = tuple(a for a in axes if a != out)
        # conv-like layouts: the input axis next to the output axis may scale, the others (spatial) must not
        others = in_axes[:-1] if out_axis == -1 else in_axes[1:]
        if any(scales[a] for a in others):
            grow = [a for a in axes if scales[a]]
            raise InferenceError(
                f"cannot tell the input axes of parameter {name!r} (shape {shape}, axes {grow} grow with width): "
                f"give Override({name!r}, in_axes=(...)) (e.g. (0,) for a (d, heads, d_head) attention kernel, "
                f"(0, 1) for a (heads, d_head, d) one; mulo.mup.FLAX_ATTENTION has flax's)")
    out_axes = [a for a in range(len(shape)) if a not in in_axes]
    in_scales, out_scales = any(scales[a] for a in in_axes), any(scales[a] for a in out_axes)
    role = ov.role or ("hidden" if in_scales and out_scales else "output" if in_scales else "input")
    fan_in = ov.fan_in or (1 if role == "vector" else math.prod(shape[a] for a in in_axes))
    return ParamMeta(role=role, fan_in=int(fan_in))


def infer_from_shapes(shapes: Any, probe_shapes: Any, overrides: Sequence[Override] = (),
                      out_axis: int = -1) -> Any:
    """Pytree of ``ParamMeta`` (structure of ``shapes``) from the param shapes at the width to describe and at a
    second width (any leaves with ``.shape``: arrays or ``jax.ShapeDtypeStruct``)."""
    if out_axis not in (-1, 0):
        raise InferenceError(f"bad out_axis {out_axis}: -1 for (..., in, out) kernels (flax, haiku), 0 for "
                             f"(out, in, ...) ones (equinox, PyTorch)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    probe_flat, probe_def = jax.tree_util.tree_flatten_with_path(probe_shapes)
    if treedef != probe_def:
        names = {leaf_path(p) for p, _ in flat} ^ {leaf_path(p) for p, _ in probe_flat}
        raise InferenceError(f"the params have a different structure at the two widths (leaves only at one: "
                             f"{sorted(names)[:5]}); the width must change sizes only, not which parameters exist")
    used = [False] * len(overrides)
    metas, any_scaling = [], False
    for (path, leaf), (_, probe) in zip(flat, probe_flat):
        name = leaf_path(path)
        hit = next((i for i, o in enumerate(overrides) if re.search(o.pattern, name)), None)
        if hit is not None:
            used[hit] = True
        shape, probe_shape = tuple(leaf.shape), tuple(probe.shape)
        any_scaling |= shape != probe_shape
        metas.append(_leaf_meta(name, shape, probe_shape, None if hit is None else overrides[hit], out_axis))
    unused = [o.pattern for o, u in zip(overrides, used) if not u]
    if unused:
        raise InferenceError(f"override pattern(s) {unused} match no parameter; the parameters are "
                             f"{[leaf_path(p) for p, _ in flat][:8]}{' ...' if len(flat) > 8 else ''}")
    if flat and not any_scaling:
        raise InferenceError("no parameter changes shape between the two widths: does init_fn(width) build the "
                             "model at that width?")
    return jax.tree_util.tree_unflatten(treedef, metas)


def param_shapes(init_fn: Callable[[int], Any], width: int) -> Any:
    """The params' shapes at ``width`` (``jax.ShapeDtypeStruct`` leaves), by ``jax.eval_shape``: nothing runs."""
    return jax.eval_shape(lambda: init_fn(width))


def infer(init_fn: Callable[[int], Any], width: int, probe_width: int | None = None,
          overrides: Sequence[Override] = (), out_axis: int = -1) -> Any:
    """μP metadata (pytree of ``ParamMeta``, the structure of the params) of the model ``init_fn(width)`` builds.

    init_fn: width -> params (e.g. ``lambda w: Net(w).init(jax.random.key(0), x)["params"]``); evaluated abstractly
      at ``width`` and ``probe_width`` (default twice ``width``), so it may be as costly as it likes.
    The fan_ins are those at ``width``. See the module docstring for the rules, ``overrides`` and ``out_axis``.
    """
    probe_width = 2 * width if probe_width is None else probe_width
    if probe_width == width:
        raise InferenceError(f"the two widths must differ, got {width} twice")
    return infer_from_shapes(param_shapes(init_fn, width), param_shapes(init_fn, probe_width), overrides, out_axis)


def describe(meta: Any) -> list[str]:
    """One line per parameter, ``path  role  fan_in``, to read what was inferred."""
    flat, _ = jax.tree_util.tree_flatten_with_path(meta, is_leaf=lambda m: isinstance(m, ParamMeta))
    names = [leaf_path(p) for p, _ in flat]
    width = max((len(n) for n in names), default=0)
    return [f"{n:<{width}}  {m.role:<6}  fan_in={m.fan_in}" for n, (_, m) in zip(names, flat)]
