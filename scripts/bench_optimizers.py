"""Optimizer-step benchmark: one jitted training step (loss + grad + optimizer update) of muMLP depth 3 on random
32×32×3 data, for Adam, MuAdam and the learned optimizers, with the ratio to Adam and the compiled peak memory.

    python scripts/bench.py optimizers                       # widths 128,1024, batch 128 (CPU defaults)
    python scripts/bench.py optimizers --widths 1024 --repeats 20 --impls fused,reference

On a GPU the defaults add width 4096 and batch 4096. Timing: one warm-up call (compilation), then ``--repeats``
timed calls, each ended by ``block_until_ready``; mean ± standard error. Memory: XLA's compiled memory analysis
(arguments + temporaries; the optimizer state is donated), plus the device's peak bytes in use where the backend
reports it (GPU).
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

OPTIMIZERS = ("adam", "muadam", "small_fc_mlp", "mup_small_fc_mlp")


def _machine() -> str:
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.device_kind} ({dev.platform})"
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    import os
    return f"CPU {model}, nproc={os.cpu_count()}"


def _make_step(task, name: str, impl: str):
    """(init_fn(params) -> (opt_args, state), step_fn(opt_args, state, batch, key) -> (state, loss))."""
    from mulo.app.config import load_config
    from mulo.optimizers import adam, build_learned, muadam

    if name in ("adam", "muadam"):
        opt = adam(1e-3) if name == "adam" else muadam(1e-3, task.update_scales)

        def step(opt_args, state, batch, key):
            loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, key)
            return opt.update(state, grads, loss, key), loss

        return (lambda params: (None, opt.init(params, 1000))), step

    # any registered learned optimizer, with the config's defaults (the MLP LOs: hidden 32, step_mult 0.01 / 0.001)
    lo = build_learned(load_config(None, cli={"optimizer": name, "lo_impl": impl}))

    def init(params):
        theta = lo.init_theta(jax.random.PRNGKey(1))
        return theta, lo.opt_fn(theta, task.update_scales).init(params, 1000)

    def step(theta, state, batch, key):  # θ is an argument (traced), as in meta-training and real use
        opt = lo.opt_fn(theta, task.update_scales)
        loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, key)
        return opt.update(state, grads, loss, key), loss

    return init, step


def _bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def bench_one(width: int, batch: int, name: str, impl: str, repeats: int) -> dict:
    from mulo.tasks import get_task

    task = get_task(f"mumlp-w{width}-d3_imagenet-32x32x3")
    key = jax.random.PRNGKey(0)
    params = task.init(key)
    kx, ky = jax.random.split(jax.random.PRNGKey(2))
    data = {"x": jax.random.normal(kx, (batch, 32, 32, 3), jnp.float32),
            "y": jax.random.randint(ky, (batch,), 0, 1000, jnp.int32)}
    init, step = _make_step(task, name, impl)
    opt_args, state = init(params)
    jitted = jax.jit(step, donate_argnums=(1,))
    t0 = time.perf_counter()
    compiled = jitted.lower(opt_args, state, data, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + max(
            0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    state, loss = compiled(opt_args, state, data, key)  # warm-up
    jax.block_until_ready((state, loss))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, loss = compiled(opt_args, state, data, key)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - t)
    times = np.asarray(times) * 1e3
    stats = jax.devices()[0].memory_stats() or {}
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return {"width": width, "batch": batch, "optimizer": name if name in ("adam", "muadam") else f"{name} ({impl})",
            "mean_ms": float(times.mean()), "se_ms": float(times.std(ddof=1) / math.sqrt(len(times))),
            "compile_s": compile_s, "peak": peak, "device_peak": stats.get("peak_bytes_in_use"),
            "params": n_params, "loss": float(loss)}


def main(argv=None) -> int:
    on_gpu = jax.devices()[0].platform == "gpu"
    parser = argparse.ArgumentParser(prog="bench.py optimizers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="128,1024,4096" if on_gpu else "128,1024")
    parser.add_argument("--batches", default="128,4096" if on_gpu else "128")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--impls", default="fused", help="learned-optimizer MLP implementations: some of fused,reference,pallas (lo_impl)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls after the warm-up (>= 2)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be >= 2")
    names = [n for n in args.optimizers.split(",") if n]
    from mulo.registry import learned_names

    accepted = ("adam", "muadam") + learned_names()  # the default list, or any registered learned optimizer
    for n in names:
        if n not in accepted:
            parser.error(f"unknown optimizer {n!r}; expected some of {accepted}")
    impls = [i for i in args.impls.split(",") if i]
    print(f"# machine: {_machine()}; jax {jax.__version__}; backend {jax.devices()[0].platform}", flush=True)
    print("# command: python scripts/bench.py optimizers " + " ".join(argv or []), flush=True)
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            adam_ms = None
            for name in names:
                for impl in (impls if name not in ("adam", "muadam") else ["-"]):
                    r = bench_one(width, batch, name, impl, args.repeats)
                    if name == "adam":
                        adam_ms = r["mean_ms"]
                    r["ratio"] = r["mean_ms"] / adam_ms if adam_ms else float("nan")
                    rows.append(r)
                    print(f"  w{width} b{batch} {r['optimizer']}: {r['mean_ms']:.2f} ± {r['se_ms']:.2f} ms "
                          f"(x{r['ratio']:.2f} Adam, compile {r['compile_s']:.1f}s)", file=sys.stderr, flush=True)
    print()
    print("| width | batch | params | optimizer | step ms (mean ± s.e.) | × Adam | compiled peak memory |"
          + (" device peak |" if on_gpu else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if on_gpu else ""))
    for r in rows:
        peak = _bytes(r["peak"]) if r["peak"] else "n/a"
        line = (f"| {r['width']} | {r['batch']} | {r['params']:,} | {r['optimizer']} | {r['mean_ms']:.2f} ± "
                f"{r['se_ms']:.2f} | {r['ratio']:.2f} | {peak} |")
        if on_gpu:
            line += f" {_bytes(r['device_peak']) if r['device_peak'] else 'n/a'} |"
        print(line)
    return 0


if __name__ == "__main__":
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    sys.exit(main(sys.argv[1:]))
