"""The sharded-parameter case of tests/optimizers/test_export_sharded.py, run in a subprocess with forced host devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/optimizers/sharded_lo_cases.py

A user-style μP MLP (metadata by mulo.mup) whose params are split FSDP-style over 4 devices with NamedSharding,
trained by as_optax's μLO (pretrained:cpu_mulo_m_fmnist) and μVeLO (mup_velo, random θ) inside one jitted step,
against the same steps on one device. Prints one JSON line starting with "RESULT ".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import mulo.mup as mup  # noqa: E402
from mulo.optimizers import as_optax  # noqa: E402
from mulo.optimizers.velo import VeloLO  # noqa: E402

WIDTH, STEPS = 64, 3
SIZES = (48, WIDTH, WIDTH, 10)


def init(width: int, key=jax.random.key(0)) -> dict:
    sizes = (SIZES[0], width, width, SIZES[-1])
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"layer{i}": {"w": jax.random.normal(k, (a, b)), "b": jnp.zeros((b,))}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def loss_fn(params, batch):
    h = batch["x"]
    for i in range(len(SIZES) - 1):
        h = h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
        h = jax.nn.relu(h) if i < len(SIZES) - 2 else h / WIDTH  # the readout multiplier
    return optax.softmax_cross_entropy_with_integer_labels(h, batch["y"]).mean()


def fsdp_spec(shape: tuple[int, ...], devices: int) -> P:
    """Split the largest axis that the device count divides; replicate what does not split."""
    axes = [a for a in sorted(range(len(shape)), key=lambda a: -shape[a]) if shape[a] % devices == 0]
    if not axes:
        return P()
    return P(*["fsdp" if a == axes[0] else None for a in range(len(shape))])


def per_device_fraction(tree) -> float:
    """Bytes device 0 holds of ``tree`` over the bytes of the whole tree."""
    leaves = jax.tree.leaves(tree)
    mine = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == jax.devices()[0])
    return mine / sum(x.nbytes for x in leaves)


def run(tx, params, batch, mesh=None):
    """STEPS jitted steps; sharded: params split over ``mesh``, the step pinned to keep the placement of the params
    and of the state ``tx.init`` placed (out_shardings, as any FSDP step)."""
    if mesh is not None:
        shardings = jax.tree.map(lambda p: NamedSharding(mesh, fsdp_spec(p.shape, mesh.size)), params)
        params = jax.device_put(params, shardings)
    else:
        params = jax.device_put(params, jax.devices()[0])
    opt_state = tx.init(params)
    fractions = [per_device_fraction(opt_state)]
    state_shardings = jax.tree.map(lambda x: x.sharding, opt_state)

    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)  # VeLO reads the loss
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step) if mesh is None else jax.jit(step, out_shardings=(shardings, state_shardings, None))
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        fractions.append(per_device_fraction(opt_state))
    return {"params": jax.device_get(params), "state": jax.device_get(jax.tree.leaves(opt_state)),
            "loss": float(loss), "fractions": fractions, "compiles": step._cache_size()}


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| over all leaves."""
    num = max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in zip(jax.tree.leaves(a),
                                                                                 jax.tree.leaves(b)))
    return num / max(float(np.max(np.abs(y))) for y in jax.tree.leaves(b))


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    meta = mup.infer(init, WIDTH)
    params = mup.mup_init(init(WIDTH), meta, jax.random.key(1))
    scales = mup.update_scales(meta)
    kx, ky = jax.random.split(jax.random.key(2))
    batch = {"x": jax.random.normal(kx, (32, SIZES[0])), "y": jax.random.randint(ky, (32,), 0, SIZES[-1])}
    velo = VeloLO("mup_velo")
    los = {"mulo": as_optax("pretrained:cpu_mulo_m_fmnist", update_scales=scales),
           "mup_velo": as_optax((velo, velo.init_theta(jax.random.key(3))), update_scales=scales,
                                        num_steps=100)}
    result = {}
    for name, tx in los.items():
        single, sharded = run(tx, params, batch), run(tx, params, batch, mesh)
        moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, single["params"], params)
        result[name] = {
            "params_rel": rel_diff(sharded["params"], single["params"]),
            # the difference relative to how far the params moved
            "params_rel_to_step": (max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(
                jax.tree.leaves(sharded["params"]), jax.tree.leaves(single["params"])))
                / max(float(np.max(np.abs(m))) for m in jax.tree.leaves(moved))),
            "state_rel": rel_diff(sharded["state"], single["state"]),
            "loss": [single["loss"], sharded["loss"]],
            "fraction_sharded": max(sharded["fractions"]), "fraction_single": min(single["fractions"]),
            "compiles": sharded["compiles"]}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
