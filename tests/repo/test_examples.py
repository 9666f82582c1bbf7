"""The examples run (shortened: 2 steps at width 32): μP inferred by mulo.mup on a flax linen CNN and a flax nnx
transformer, the shipped μLO and MuAdam (swept at the narrowest width) at every width."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("script, metric", [("flax_cnn_fashionmnist.py", "test_accuracy"),
                                            ("nnx_transformer_shakespeare.py", "test_bits_per_byte")])
def test_example_runs_shortened(tmp_path, script, metric):
    out = tmp_path / "result.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO / "src"))
    args = ["--steps", "2", "--widths", "32", "--muadam_lrs", "0.1,0.01", "--lo_impl", "reference", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hidden  fan_in=" in proc.stdout and "output  fan_in=32" in proc.stdout  # the inferred μP, printed
    r = json.loads(out.read_text())
    assert set(r["muadam_sweep"]) == {"0.1", "0.01"}
    assert r["muadam_lr"] == float(min(r["muadam_sweep"], key=r["muadam_sweep"].get))  # tuned at the narrowest
    runs = {(x["width"], x["optimizer"].split()[0]) for x in r["runs"]}
    assert runs == {(32, "μLO"), (32, "MuAdam")}  # one width keeps it short (each width compiles the LO again)
    assert all(math.isfinite(x["final_train_loss"]) and math.isfinite(x[metric]) for x in r["runs"])
