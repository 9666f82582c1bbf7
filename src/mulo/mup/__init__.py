"""μP for any JAX model: metadata inferred from shapes, the μP init, update scales, readout multiplier, coord check.

    import mulo.mup as mup
    init = lambda w: Net(w).init(jax.random.key(0), x)["params"]   # flax linen; haiku / nnx params work the same
    meta = mup.infer(init, width=1024)                              # ParamMeta per leaf: role, fan_in (no FLOPs)
    params = mup.mup_init(init(1024), meta, jax.random.key(1))     # N(0, 1/fan_in), zero readout
    tx = as_optax("pretrained:cpu_mulo_m_fmnist", update_scales=mup.update_scales(meta))
    # in Net's forward pass: logits = readout(h) * mup.readout_multiplier(meta)  (= 1 / width)

The metadata is the same ``mulo.tasks.base.ParamMeta`` mulo's own tasks use, and every scale derives from it there.
The readout multiplier and the attention's 1/d_head are forward-pass choices: mulo cannot inject them from outside,
the model must apply them (``mulo.mup.params``). Nothing here knows about the CLI.
"""

from mulo.mup.coord import CoordCheck, coord_check
from mulo.mup.infer import FLAX_ATTENTION, InferenceError, Override, describe, infer, infer_from_shapes, leaf_path
from mulo.mup.params import mup_init, readout_multiplier, update_scales

__all__ = ["infer", "infer_from_shapes", "Override", "FLAX_ATTENTION", "InferenceError", "describe", "leaf_path",
           "mup_init", "readout_multiplier", "update_scales", "coord_check", "CoordCheck"]
