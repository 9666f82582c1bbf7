"""Compile the Pallas LO kernel for an NVIDIA GPU without one: does it build, and how many registers does it need?

    pip install triton                         # optional, ~290 MB: Triton's compiler and ptxas, no GPU needed
    python scripts/triton_check.py             # sm_90 (H100/H200), the kernel's default tile, three precisions
    python scripts/triton_check.py --block_cols 32,64,128 --num_warps 4,8
    python scripts/triton_check.py --ttir_only DIR    # just write the Triton IR (no triton package needed)

For each matmul precision (``jax_default_matmul_precision``: float32, tensorfloat32, bfloat16) and tile setting, the
kernel of ``mulo.optimizers.adafac_pallas`` is lowered for CUDA from this (CPU) machine, as XLA would on a GPU, and
its Triton IR is captured; the ``triton`` package then compiles that IR to PTX and a cubin for ``--arch``. The table
gives, per thread, the registers and the local-memory stack (spills: slow on a GPU) from the cubin's resource usage,
the shared memory Triton reserves, and the tensor-core ``mma`` instructions in the PTX (none in float32: IEEE fp32
dots run on CUDA cores). What this cannot tell: speed, and whether the GPU machine's own Triton (bundled in its jaxlib,
another version than the package) makes the same choices; ``bash scripts/device_check.sh`` measures on the device.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


def kernel_ttir(precision: str, block_cols: int, num_warps: int, shape=(1024, 1024)) -> str:
    """The Triton IR (text) of the LO kernel for one matrix of ``shape``, lowered for CUDA on this machine."""
    import jax
    import jax.numpy as jnp
    from jax._src.pallas.triton import pallas_call_registration as registration

    from mulo.optimizers import adafac_pallas as P
    from mulo.optimizers.adafac_mlp import AdafacHParams, AdafacMLPLO
    from mulo.optimizers.features import init_acc, update_acc

    captured = []
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        captured.append(result.module.operation.get_asm())
        return result

    hp = AdafacHParams()
    nn = AdafacMLPLO("mup_small_fc_mlp", hp).init_theta(jax.random.PRNGKey(0))["nn"]
    p = jnp.ones(shape, jnp.float32)
    acc = init_acc(p, 3, 1, 3)
    decays = (jnp.array(hp.momentum_decays), jnp.array(hp.rms_decays), jnp.array(hp.adafactor_decays))
    new = update_acc(acc, p, *decays)
    fn = functools.partial(P.update_matrix, hp=hp, precision=precision, block_cols=block_cols, num_warps=num_warps)
    with mock.patch.object(registration.lowering, "lower_jaxpr_to_triton_module", capture), \
            mock.patch.object(P, "_interpret", lambda: False):
        jax.jit(fn).trace(nn, p, p, acc, new, decays, jnp.int32(3), scale=1.0).lower(lowering_platforms=("cuda",))
    if len(captured) != 1:
        raise RuntimeError(f"expected one Triton kernel, lowered {len(captured)}")
    return captured[0]


def compile_ttir(path: Path, arch: int, num_warps: int) -> dict:
    """Compile a .ttir file with the ``triton`` package for sm_<arch>; registers, stack, shared memory, mma count."""
    import triton
    from triton.backends.compiler import GPUTarget

    kernel = triton.compile(str(path), target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    cubin = path.with_suffix(".cubin")
    cubin.write_bytes(kernel.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {usage[:200]!r}")
    return {"registers": int(m[1]), "stack_bytes": int(m[2]), "shared_bytes": int(kernel.metadata.shared),
            "mma": kernel.asm["ptx"].count("mma.sync") + kernel.asm["ptx"].count("wgmma.mma_async")}


def _ints(text: str, name: str, parser) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        parser.error(f"bad --{name} {text!r}: expected integers joined by commas")
    if not values or min(values) < 1 or any(v & (v - 1) for v in values):
        parser.error(f"bad --{name} {text!r}: expected powers of two")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="triton_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--block_cols", default=None, help="tile widths, e.g. 32,64,128 (default: the kernel's)")
    parser.add_argument("--num_warps", default=None, help="warps per program, e.g. 4,8 (default: the kernel's)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--ttir_only", metavar="DIR", help="write the Triton IR files to DIR and stop (no triton)")
    args = parser.parse_args(argv)
    from mulo.optimizers import adafac_pallas as P

    cols = _ints(args.block_cols, "block_cols", parser) if args.block_cols else [P.BLOCK_COLS]
    warps = _ints(args.num_warps, "num_warps", parser) if args.num_warps else [P.NUM_WARPS]
    precisions = [x for x in args.precisions.split(",") if x]
    for x in precisions:
        if x not in PRECISIONS:
            parser.error(f"bad precision {x!r}: expected some of {','.join(PRECISIONS)}")
    if not args.ttir_only:
        try:
            import triton  # noqa: F401
        except ImportError:
            print("error: the triton package is not installed (pip install triton); --ttir_only DIR needs none",
                  file=sys.stderr)
            return 2
    out_dir = Path(args.ttir_only) if args.ttir_only else Path(os.environ.get("TMPDIR", "/tmp")) / "mulo_triton_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for precision, bc in itertools.product(precisions, cols):
        ttir = kernel_ttir(precision, bc, warps[0])  # the IR does not depend on the warps (a compile option)
        path = out_dir / f"adafac_lo_{precision}_c{bc}.ttir"
        path.write_text(ttir)
        if args.ttir_only:
            print(f"{path}: {len(ttir)} characters, {ttir.count('tt.dot ')} tt.dot", flush=True)
            continue
        for nw in warps:
            r = compile_ttir(path, args.arch, nw)
            rows.append({"precision": precision, "block": f"{P.BLOCK_ROWS}×{bc}", "warps": nw, **r})
            print(f"{precision} {P.BLOCK_ROWS}x{bc} warps {nw}: {r}", flush=True)
    if args.ttir_only:
        return 0
    import triton

    table = [f"sm_{args.arch}, triton {triton.__version__} (pip), jax {_jax_version()}, "
             f"{datetime.date.today().isoformat()}, command: `python scripts/triton_check.py"
             f"{' ' + ' '.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`",
             "", "| matmul precision | tile (rows × cols) | warps | registers / thread | spill stack / thread "
             "| shared memory | mma instructions |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['precision']} | {r['block']} | {r['warps']} | {r['registers']} | {r['stack_bytes']} B "
                     f"| {r['shared_bytes']} B | {r['mma']} |")
    text = "\n".join(table)
    print("\n" + text)
    return 0


def _jax_version() -> str:
    import jax

    return jax.__version__


if __name__ == "__main__":
    sys.exit(main())
