"""Sharded (FSDP-style) parameters: the μLO and μVeLO through as_optax on params split over 4 forced CPU devices take
the same steps as on one device, keep each device's optimizer state at about 1/4 of the whole, in one jitted program
(tests/optimizers/sharded_lo_cases.py, in a subprocess: the device count is fixed when JAX starts).

Stated float32 tolerance: sharding changes the order of the per-tensor reductions (the LO's feature normalisers,
VeLO's tensor statistics) into all-reduces, so results are equal to rounding, not bit for bit. Measured after 3 steps
at width 64: params differ by <= 3.4e-7 of the largest step any parameter took (tolerance 1e-5) and the state by
<= 4e-8 of its largest entry (tolerance 1e-5); a wrong shard or a missing all-reduce gives O(1) differences.
"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

STEP_TOL = 1e-5
STATE_TOL = 1e-5
# 1/4 of the per-parameter state, plus what is replicated: the 10-class readout's bias, Adafactor's row/column
# factors (O(n) of each n x n matrix), the counters and VeLO's per-tensor LSTM state (measured 0.27-0.28)
MAX_FRACTION = 0.3
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")


def test_sharded_params_take_the_same_lo_steps_with_a_quarter_of_the_state_per_device():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "optimizers" / "sharded_lo_cases.py")], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert set(result) == {"mulo", "mup_velo"}
    for name, r in result.items():
        assert r["params_rel_to_step"] <= STEP_TOL, (name, r)
        assert r["state_rel"] <= STATE_TOL, (name, r)
        assert abs(r["loss"][0] - r["loss"][1]) <= 1e-6 * abs(r["loss"][0]), (name, r)
        assert 0.25 <= r["fraction_sharded"] <= MAX_FRACTION, (name, r)  # every step, the state stays split
        assert r["fraction_single"] == 1.0
        assert r["compiles"] == 1, (name, r)  # one jitted program for every step


def test_place_like_params_follows_each_parameter_and_replicates_the_rest():
    """In-process, on a 1-device mesh: a state array of its parameter's shape takes the parameter's sharding, a
    smaller one (an Adafactor factor) and the counters are replicated; unsharded params leave the state as it is."""
    from typing import Any, NamedTuple

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from mulo.parallel import place_like_params

    class State(NamedTuple):
        params: Any
        mom: Any
        fac_row: Any
        iteration: jax.Array

    mesh = Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    params = {"w": jax.device_put(jnp.ones((4, 6)), NamedSharding(mesh, P(None, "fsdp"))),
              "b": jax.device_put(jnp.ones((6,)), NamedSharding(mesh, P("fsdp")))}
    state = State(None, {"w": (jnp.zeros((4, 6)),), "b": (jnp.zeros((6,)),)}, {"w": (jnp.zeros((6,)),), "b": ()},
                  jnp.asarray(0))
    placed = place_like_params(state, params)
    assert placed.params is None
    assert placed.mom["w"][0].sharding.spec == P(None, "fsdp") and placed.mom["b"][0].sharding.spec == P("fsdp")
    assert placed.fac_row["w"][0].sharding.spec == P() and placed.iteration.sharding.spec == P()
    assert np.array_equal(placed.mom["w"][0], state.mom["w"][0])
    plain = {"w": jnp.ones((4, 6)), "b": jnp.ones((6,))}
    assert place_like_params(state, plain) is state
