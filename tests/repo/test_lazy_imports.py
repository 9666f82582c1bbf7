"""mulo's random-data benchmarks and tests import and run without TensorFlow / TFDS / seqio (the GPU test machine has
none of them): a subprocess whose import system refuses those packages imports every module, builds tasks of every
family, runs a training step of the μLO on random data and the benchmark scripts' entry modules."""

import os
import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorflow_text", "seqio")

_PROBE = r"""
import importlib.abc, sys
BLOCKED = {blocked!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"import of {{name}} refused by the test")
        return None

sys.meta_path.insert(0, Refuse())
for name in BLOCKED:
    sys.modules.pop(name, None)
sys.path[:0] = [{src!r}, {scripts!r}]

import importlib, pkgutil
import mulo
for info in pkgutil.walk_packages(mulo.__path__, "mulo."):
    importlib.import_module(info.name)
import bench_optimizers, bench_meta_train, bench_bound, device_check  # noqa: F401

import jax, jax.numpy as jnp
from mulo.tasks import get_task
from mulo.optimizers import AdafacMLPLO
for name in ("mumlp-w16-d2_imagenet-32x32x3", "mutransformer-w64-d1_tinyshakespeare-s8-vbyte",
             "mutransformer-w64-d1_lm1b-s8-v32k"):
    get_task(name)  # building a task reads no data
task = get_task("mumlp-w16-d2_cifar10-32x32x3")
params = task.init(jax.random.PRNGKey(0))
batch = {{"x": jnp.ones((4, 32, 32, 3)), "y": jnp.arange(4, dtype=jnp.int32)}}
lo = AdafacMLPLO("mup_small_fc_mlp")
opt = lo.opt_fn(lo.init_theta(jax.random.PRNGKey(1)), task.update_scales)
state = opt.init(params, 10)
loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, jax.random.PRNGKey(2))
state = opt.update(state, grads, loss, jax.random.PRNGKey(3))
assert bool(jnp.isfinite(loss))
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
print("LAZY-OK")
"""


def test_mulo_imports_and_trains_on_random_data_without_tensorflow_or_seqio():
    code = _PROBE.format(blocked=BLOCKED, src=str(REPO / "src"), scripts=str(REPO / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0 and "LAZY-OK" in out.stdout, out.stderr[-3000:]


def test_the_probe_does_refuse_the_blocked_packages():
    # the hook itself works: a direct import of a blocked package fails inside the probe's interpreter
    code = _PROBE.split("import importlib, pkgutil")[0].format(blocked=BLOCKED, src="", scripts="")
    code += "\ntry:\n    import tensorflow\nexcept ImportError as e:\n    print('REFUSED', e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED import of tensorflow refused by the test" in out.stdout, out.stderr[-2000:]
