"""The benchmark scripts run end to end at toy sizes and print their tables (numbers are not checked here: speed
targets live in BENCHMARKS.md, not in tests)."""

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _bench(*args: str, cpu: bool = False) -> str:
    """Run ``scripts/bench.py ARGS``; ``cpu``: on JAX's CPU backend (forced host devices), also on a GPU machine."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **({"JAX_PLATFORMS": "cpu"} if cpu else {}))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *args], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_bench_optimizers_prints_a_row_per_optimizer_with_its_ratio_to_adam():
    out = _bench("optimizers", "--widths", "16", "--optimizers", "adam,mup_small_fc_mlp", "--impls", "reference",
                 "--repeats", "2")
    assert re.search(r"\|\s*16\s*\|\s*128\s*\|.*\|\s*adam\s*\|.*\|\s*1\.00\s*\|", out), out
    assert re.search(r"\|\s*mup_small_fc_mlp \(reference\)\s*\|\s*[\d.]+ ± [\d.]+\s*\|\s*[\d.]+\s*\|", out), out


def test_bench_meta_train_prints_inner_steps_per_second():
    out = _bench("meta-train", "--widths", "8", "--num_tasks", "2", "--trunc_length", "4", "--steps_per_jit", "2",
                 "--batch", "8", "--repeats", "2", "--lo_impl", "reference")
    assert re.search(r"\|\s*8\s*\|\s*[\d.]+ ± [\d.]+\s*\|", out), out


def test_bench_bound_prints_the_lower_bound():
    out = _bench("bound", "--width", "16", "--repeats", "2")
    bounds = [float(x) for x in re.findall(r"muLO step >= ([\d.]+)x Adam", out)]
    assert len(bounds) == 2 and bounds[0] > bounds[1] > 1.0, out


def test_bench_meta_train_scaling_table_over_forced_devices():
    out = _bench("meta-train", "--devices", "1,2", "--widths", "8", "--num_tasks", "2", "--trunc_length", "4",
                 "--steps_per_jit", "2", "--batch", "8", "--repeats", "2", "--lo_impl", "reference", cpu=True)
    rows = re.findall(r"\|\s*8\s*\|\s*(\d)\s*\|\s*[\d.]+ ± [\d.]+\s*\|\s*([\d.]+)×\s*\|", out)
    assert [n for n, _ in rows] == ["1", "2"] and float(rows[0][1]) == 1.0, out


def test_bench_xla_flags_compares_flag_sets_in_processes_and_counts_the_lo_kernel():
    out = _bench("xla-flags", "--shape", "64x64", "--rounds", "1", "--repeats", "1", "--disasm",
                 "--flags", "default", "xla_cpu_enable_fast_math=true", "xla_no_such_flag=1")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in out.splitlines() if ln.startswith("| ")]
    rows = {c[0]: c[1:] for c in cells}
    assert float(rows["(defaults)"][3]) == 0.0, out  # the baseline against itself
    assert float(rows["`--xla_cpu_enable_fast_math=true`"][3]) > 0.0, out  # fast math changes the LO's step
    assert "failed: Unknown flag" in rows["`--xla_no_such_flag=1`"][0], out
    assert re.search(r"per packed FMA: [\d.]+ broadcasts", out), out


def test_triton_check_writes_the_kernels_triton_ir_per_matmul_precision(tmp_path):
    """The GPU kernel's Triton IR, lowered for CUDA on this CPU (what `scripts/triton_check.py` compiles for sm_90
    when the triton package is installed): one layer-2 dot per precision, with the stated input types."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "triton_check.py"), "--ttir_only", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    dots = {p: re.findall(r"tt\.dot [^\n]*", (tmp_path / f"adafac_lo_{p}_c64.ttir").read_text())
            for p in ("float32", "tensorfloat32", "bfloat16")}
    assert all(len(d) == 1 for d in dots.values()), dots
    assert "inputPrecision" not in dots["float32"][0] and "32x32xf32> * tensor<32x64xf32>" in dots["float32"][0]
    assert "inputPrecision = tf32" in dots["tensorfloat32"][0] and "xf32>" in dots["tensorfloat32"][0]
    assert "32x32xbf16> * tensor<32x64xbf16> -> tensor<32x64xf32>" in dots["bfloat16"][0]  # float32 accumulation
