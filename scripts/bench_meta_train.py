"""Meta-training throughput: inner steps/s of PES meta-training (= 2 · num_tasks · K / seconds per outer step).

    python scripts/bench.py meta-train [--widths 32,128] [--repeats 5] [--write]
    python scripts/bench.py meta-train --devices 1,2,4 [--widths 128] [--write]   # scaling over devices

``--devices``: the same outer step with the perturbation pairs sharded over the first n devices
(``mulo.parallel.Placement``), for each n; on a CPU the devices are forced host devices
(``--xla_force_host_platform_device_count``), which share this machine's cores, so the speed-up is bounded by the
core count. ``--write`` then replaces the "Meta-training scaling over devices" section instead.

Setting (fixed, comparable with the public reference engine): muMLP depth 3 on 32×32×3 *random* data (1000 classes;
a pre-generated pool, so data generation is not timed), batch 128, num_tasks 8, K = 20, steps_per_jit 10, the
``mup_small_fc_mlp`` learned optimizer, one task per run. Protocol: one warm-up outer step (compilation), then
``repeats`` timed outer steps (each ends with a host read of the meta-loss, i.e. a full device sync), mean ± standard
error. ``--write`` replaces the table in the "Meta-training throughput" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

REFERENCE = {32: 75.0, 128: 20.0}  # inner steps/s of the public reference engine on this CPU (the brief's anchor)


class RandomImages:
    """Random 32×32×3 images and labels from a small pre-generated pool (cycled), shaped as asked."""

    name = "random-32x32x3"
    num_classes = 1000
    image_shape = (32, 32, 3)

    def example_spec(self):
        return {"x": (self.image_shape, np.float32), "y": ((), np.int32)}

    def batches(self, split, shape, seed):
        rng = np.random.default_rng(seed)
        pool = [{"x": rng.standard_normal(tuple(shape) + self.image_shape, np.float32),
                 "y": rng.integers(0, self.num_classes, tuple(shape), dtype=np.int32)} for _ in range(2)]
        i = 0
        while True:
            yield pool[i % 2]
            i += 1

    def eval_batches(self, split, batch_size, max_examples=None):
        yield from ()


def bench_width(width: int, repeats: int, num_tasks: int, trunc: int, spj: int, batch: int,
                impl: str | None = None, devices: int | None = None) -> tuple[float, float]:
    import jax

    from mulo.app.config import load_config
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned
    from mulo.tasks import TaskSettings, parse_task_name
    from mulo.tasks.mlp import MLPTask

    name = f"mumlp-w{width}-d3_imagenet-32x32x3"
    cfg = load_config(None, cli=dict(task=[name], num_tasks=num_tasks, trunc_length=trunc, steps_per_jit=spj,
                                     local_batch_size=batch, optimizer="mup_small_fc_mlp", progress=False,
                                     prefetch_batches=2))
    task = MLPTask(parse_task_name(name), TaskSettings.from_config(cfg), RandomImages())
    lo = build_learned(cfg)
    if impl is not None and impl != getattr(lo, "impl", impl):
        from mulo.optimizers.theta_io import learned_from_hparams

        lo = learned_from_hparams(lo.name, lo.hparams, impl=impl)
    from mulo.parallel import Placement

    placement = Placement.create(devices=jax.devices()[:devices]) if devices else None
    trainer = meta_trainer(cfg, [task], lo, placement)
    state = trainer.init_state()
    streams = trainer.streams(0)
    state, m = trainer.step(state, streams)  # warm-up: compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = trainer.step(state, streams)  # reads metrics back: synchronised
        times.append(time.perf_counter() - t0)
    rates = 2 * num_tasks * trunc / np.asarray(times)
    for it in streams:
        it.close()
    jax.clear_caches()
    return float(rates.mean()), float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else 0.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})"


def table(rows, args) -> str:
    out = ["| width | inner steps/s (mean ± s.e.) | reference engine | speed-up | target (5×) |",
           "|---|---|---|---|---|"]
    for width, mean, se in rows:
        ref = REFERENCE.get(width)
        out.append(f"| {width} | {mean:.0f} ± {se:.0f} | {ref:.0f} | {mean / ref:.1f}× | {5 * ref:.0f} |" if ref
                   else f"| {width} | {mean:.0f} ± {se:.0f} | – | – | – |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench.py meta-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="32,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num_tasks", type=int, default=8)
    parser.add_argument("--trunc_length", type=int, default=20)
    parser.add_argument("--steps_per_jit", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lo_impl", default=None, help="the LO's implementation (fused|reference|pallas; default: "
                                                          "build_learned's)")
    parser.add_argument("--devices", default=None, help="comma list of device counts: the scaling table")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. 'machine shared, noisy')")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.devices:
        return scaling(args, argv)
    rows = []
    for w in [int(x) for x in args.widths.split(",")]:
        mean, se = bench_width(w, args.repeats, args.num_tasks, args.trunc_length, args.steps_per_jit, args.batch,
                               args.lo_impl)
        rows.append((w, mean, se))
        print(f"width {w}: {mean:.1f} ± {se:.1f} inner steps/s", flush=True)
    text = table(rows, args)
    print(text)
    if args.write:
        cmd = "python scripts/bench.py meta-train " + " ".join(argv if argv is not None else sys.argv[1:])
        section = (f"Setting: PES, muMLP depth 3 on random 32×32×3 data, batch {args.batch}, num_tasks "
                   f"{args.num_tasks}, K {args.trunc_length}, steps_per_jit {args.steps_per_jit}, mup_small_fc_mlp; "
                   f"inner steps/s = 2·num_tasks·K / seconds per outer step; one warm-up step, then {args.repeats} "
                   f"timed steps.\n\nMachine: {machine()}. Command: `{cmd.strip()}`.\n\n{text}\n"
                   + (f"\n{args.note}\n" if args.note else ""))
        write_section(ROOT / "BENCHMARKS.md", section)
    return 0


def scaling(args, argv) -> int:
    counts = [int(x) for x in args.devices.split(",")]
    if "jax" not in sys.modules and not os.environ.get("JAX_PLATFORMS", "").startswith(("cuda", "gpu", "tpu")):
        flag = f"--xla_force_host_platform_device_count={max(counts)}"  # used only where the backend is the CPU
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    import jax

    if jax.device_count() < max(counts):
        raise SystemExit(f"--devices {args.devices}: only {jax.device_count()} device(s) here")
    rows = []
    for w in [int(x) for x in args.widths.split(",")]:
        for n in counts:
            mean, se = bench_width(w, args.repeats, args.num_tasks, args.trunc_length, args.steps_per_jit,
                                   args.batch, args.lo_impl, devices=n)
            rows.append((w, n, mean, se))
            print(f"width {w}, {n} device(s): {mean:.1f} ± {se:.1f} inner steps/s", flush=True)
    out = ["| width | devices | inner steps/s (mean ± s.e.) | speed-up vs 1 device |", "|---|---|---|---|"]
    base = {w: mean for w, n, mean, _ in rows if n == min(counts)}
    for w, n, mean, se in rows:
        out.append(f"| {w} | {n} | {mean:.1f} ± {se:.1f} | {mean / base[w]:.2f}× |")
    text = "\n".join(out)
    print(text)
    if args.write:
        cmd = "python scripts/bench.py meta-train " + " ".join(argv if argv is not None else sys.argv[1:])
        kind = jax.devices()[0].device_kind
        section = (f"Setting: as the throughput table (PES, muMLP depth 3, random 32×32×3 data, batch {args.batch}, "
                   f"num_tasks {args.num_tasks}, K {args.trunc_length}), with the {args.num_tasks} perturbation "
                   f"pairs sharded over the first n devices ({kind}).\n\nMachine: {machine()}. Command: "
                   f"`{cmd.strip()}`.\n\n{text}\n" + (f"\n{args.note}\n" if args.note else ""))
        write_section(ROOT / "BENCHMARKS.md", section, "Meta-training scaling over devices")
    return 0


def write_section(path: Path, body: str, title: str = "Meta-training throughput") -> None:
    from mulo.io import atomic_write_text

    text = path.read_text()
    pattern = re.compile(r"(## " + re.escape(title) + r"[^\n]*\n\n)(.*?)(?=\n## |\Z)", re.S)
    if not pattern.search(text):
        text = text.rstrip("\n") + f"\n\n## {title}\n\n"
    atomic_write_text(path, pattern.sub(lambda m: m.group(1) + body, text, count=1) if pattern.search(text)
                      else text + body)


if __name__ == "__main__":
    sys.exit(main())
