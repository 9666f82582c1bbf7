"""mulo.mup.coord_check on a user-style flax linen MLP: flat in width under μP (inferred metadata, mup_init, the
readout multiplier, MuAdam), growing in the standard parametrisation with Adam; the CLI's plots are drawn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import mulo.mup as mup
from mulo.optimizers.muadam import muadam_transform

WIDTHS = (64, 512)


class Net(nn.Module):
    width: int
    mup: bool

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        h = nn.relu(nn.Dense(self.width)(h))
        h = nn.relu(nn.Dense(self.width)(h))
        logits = nn.Dense(10)(h)
        return logits / self.width if self.mup else logits  # the readout multiplier (mup.readout_multiplier)


BATCH = {"x": jax.random.normal(jax.random.key(1), (32, 8, 8, 1)),
         "y": jax.random.randint(jax.random.key(2), (32,), 0, 10)}


def _setup(use_mup: bool):
    raw = lambda w: Net(w, use_mup).init(jax.random.key(0), BATCH["x"])["params"]
    meta = lambda w: mup.infer(raw, w)
    init = (lambda w: mup.mup_init(raw(w), meta(w), jax.random.key(0))) if use_mup else raw

    def apply(params, batch):
        logits, state = Net(width_of(params), use_mup).apply(
            {"params": params}, batch["x"], capture_intermediates=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        # every layer's output but the readout's before its multiplier (the logits are the coordinate that counts)
        acts = {name: out["__call__"][0] for name, out in state["intermediates"].items()
                if name not in ("__call__", "Dense_2")}
        return loss, {**acts, "logits": logits}

    return init, apply, meta


def width_of(params) -> int:
    return params["Dense_0"]["kernel"].shape[1]


def test_coord_check_is_flat_under_mup_and_grows_in_sp(tmp_path):
    init, apply, meta = _setup(True)
    assert mup.readout_multiplier(meta(64)) == 1 / 64  # what Net applies
    tx = lambda w: muadam_transform(0.03, mup.update_scales(meta(w)))
    result = mup.coord_check(init, apply, WIDTHS, tx, BATCH, steps=3)
    ratios = result.ratios()
    assert {layer for layer, _ in ratios} == {"Dense_0", "Dense_1", "logits"}
    assert {t for _, t in ratios} == {1, 2, 3}
    # t = 1: the zero readout (and flax's zero bias) leave the logits at exactly 0
    assert all(r["l1"] == 0.0 for r in result.records if r["layer"] == "logits" and r["t"] == 1)
    bad = {k: r for k, r in ratios.items() if k != ("logits", 1) and not 1 / 1.3 <= r <= 1.3}
    assert not bad, ratios
    # every layer moved; per-leaf update sizes recorded, hidden update RMS shrinking with width as 1/width
    assert all(r["delta_std"] > 0 for r in result.records if r["t"] == 3)
    upd = {(r["param"], r["width"]): r["update_rms"] for r in result.param_records if r["t"] == 2}
    assert upd[("Dense_1/kernel", 512)] / upd[("Dense_1/kernel", 64)] == pytest.approx(1 / 8, rel=0.3)
    assert upd[("Dense_0/bias", 512)] / upd[("Dense_0/bias", 64)] == pytest.approx(1, rel=0.3)
    paths = result.plot(tmp_path, "user flax MLP, μP + MuAdam")
    assert all(p.stat().st_size > 1000 for p in paths)

    sp_init, sp_apply, _ = _setup(False)
    sp = mup.coord_check(sp_init, sp_apply, WIDTHS, optax.adam(0.03), BATCH, steps=3).ratios()
    assert max(r for (layer, t), r in sp.items() if t > 1) > 2.0, sp
    assert 1 / 1.3 <= sp[("Dense_1", 1)] <= 1.3  # at init SP is fine too: it is the updates that blow up


def test_coord_check_refuses_one_width():
    init, apply, _ = _setup(False)
    with pytest.raises(ValueError, match="at least two widths"):
        mup.coord_check(init, apply, (64, 64), optax.adam(0.01), BATCH)
