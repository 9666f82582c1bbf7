"""One-command device check (issue 11): GPU correctness tests and speed benchmarks -> one markdown table + JSON.

    bash scripts/device_check.sh                      # on the GPU machine (installs the carried wheels first)
    bash scripts/device_check.sh --platform cpu       # the CPU dry run of CI: the same checks at tiny sizes

Checks, in this order, each recorded (an error or a skip is a row too, never a lost run), until ``--budget_s``:

1. ``tests``: pytest on the LO implementation / mixed-precision / lazy-import tests, on this backend (at most 2 min);
2. ``pallas``: the compiled Pallas LO step against the plain (reference) path on a width × width matrix, for
   float32 (target 1e-5 relative), tensorfloat32 (5e-3: 11-bit inputs) and bfloat16 (1e-2: 8-bit inputs);
3. ``step``: one training step (loss + grad + update) of muMLP depth 3 at batch 4096 (GPU), Adam vs the μLO's fused
   and Pallas implementations, ratio to Adam (target ≤ 1.5×), and μVeLO's (``mup_velo``, fused: no target);
4. ``prefetch``: a meta-test-like loop on uint8 ImageNet-32-shaped host data through the device prefetcher: the
   fraction of wall time the loop is blocked in ``next()`` (target ≤ 5%), measured from outside the prefetcher;
5. ``w8192``: a width-8192 μLO training step compiles, fits and runs; its compiled peak memory;
6. ``meta-train``: one μLO_M outer step (widths 128/512/1024, 8 pairs, K = 50, batch 4096; target ≤ 4 s) and its
   prefetch wait fraction.

``--platform cpu`` uses tiny sizes (seconds) so CI runs the whole script; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SIZES = {  # the settings on a GPU, tiny ones for the CPU dry run
    "gpu": dict(widths=(1024, 4096), batch=4096, repeats=10, pallas_width=1024, meta_widths=(128, 512, 1024),
                meta_pairs=8, meta_k=50, meta_spj=10, meta_batch=4096, pool=16384, prefetch_steps=50,
                prefetch_width=1024, big_width=8192, big_batch=4096, impls=("fused", "pallas"), lo_impl="pallas",
                velo_impls=("fused",),
                # the GPU-specific tests (the rest of the suite runs in CI on CPU); at most tests_s seconds
                tests=["tests/optimizers/test_adafac_pallas.py", "tests/tasks/test_precision.py",
                       "tests/repo/test_lazy_imports.py"],
                tests_s=120),
    "cpu": dict(widths=(16,), batch=8, repeats=2, pallas_width=24, meta_widths=(8,), meta_pairs=2, meta_k=2,
                meta_spj=2, meta_batch=8, pool=64, prefetch_steps=5, prefetch_width=16, big_width=32, big_batch=8,
                # the dry run checks the script, not speed: the plain LO compiles in seconds (the pallas row above
                # already ran the kernel, interpreted)
                impls=("reference",), lo_impl="reference", velo_impls=("fused",),
                tests=["tests/optimizers/test_adafac_pallas.py::test_matmul_precision_names"], tests_s=300),
}
TOLERANCE = {"float32": 1e-5, "tensorfloat32": 5e-3, "bfloat16": 1e-2}


# ------------------------------------------------------------------------------------------------------- helpers


class TimedIterator:
    """Wraps an iterator and adds up the wall time spent blocked in ``next()`` (the prefetch wait)."""

    def __init__(self, it):
        self._it = it
        self.wait_s = 0.0
        self.calls = 0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.wait_s += time.perf_counter() - t
            self.calls += 1


def random_image_dataset(name: str, pool: int, seed: int = 0):
    """The real ImageDataset (uint8 host images, host gather + normalisation) over a random uint8 pool."""
    import numpy as np

    from mulo.data.images import IMAGE_SOURCES, ImageDataset

    rng = np.random.default_rng(seed)
    source = IMAGE_SOURCES[name]
    make = lambda n: (rng.integers(0, 256, (n,) + tuple(source.shape), dtype=np.uint8),
                      rng.integers(0, source.num_classes, (n,), dtype=np.int32))
    data = {"train": make(pool), "test": make(max(8, pool // 8))}
    return ImageDataset(name, loader=lambda: data)


def _fmt_ms(x):
    return f"{x:.2f} ms" if x is not None else "n/a"


# -------------------------------------------------------------------------------------------------------- checks


def check_tests(sz, platform_name):
    env = dict(os.environ, JAX_PLATFORMS="cuda" if platform_name == "gpu" else "cpu", WANDB_MODE="disabled")
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sz["tests"]], cwd=ROOT,
                             capture_output=True, text=True, env=env, timeout=sz["tests_s"])
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return [{"check": "tests", "setting": " ".join(sz["tests"]), "result": f"timed out after {sz['tests_s']} s",
                 "target": "all pass", "met": False, "rc": None, "counts": {}, "log_tail": text[-3000:]}]
    tail = (out.stdout + out.stderr).strip().splitlines()
    summary = next((ln for ln in reversed(tail) if re.search(r"\d+ (passed|failed|error)", ln)), tail[-1] if tail
                   else "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    return [{"check": "tests", "setting": " ".join(sz["tests"]), "result": summary.strip("= "),
             "target": "all pass", "met": out.returncode == 0, "rc": out.returncode, "counts": counts,
             "seconds": time.perf_counter() - t0, "log_tail": "\n".join(tail[-30:])}]


def check_pallas(sz, platform_name):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mulo.optimizers import AdafacHParams, AdafacMLPLO

    w = sz["pallas_width"]
    key = jax.random.PRNGKey(0)
    params = {"w": 1e-3 * jax.random.normal(key, (w, w))}
    grads = [{"w": jnp.cos(1e3 * params["w"] * (t + 2)) * (t + 1)} for t in range(2)]

    def steps(impl, precision):
        lo = AdafacMLPLO("mup_small_fc_mlp", AdafacHParams(), impl=impl, fused_min_size=1)
        theta = lo.init_theta(jax.random.PRNGKey(3))
        theta["nn"]["b2"] = jnp.array([0.01, 0.2])
        opt = lo.opt_fn(theta, {"w": 1.0 / w})
        with jax.default_matmul_precision(precision):
            upd = jax.jit(opt.update)
            state, out = opt.init(params, 10), []
            for g in grads:
                new = upd(state, g, 0.0, None)
                out.append(np.asarray(opt.params(state)["w"], np.float64) - np.asarray(opt.params(new)["w"]))
                state = new
        return out

    want = steps("reference", "float32")
    rows = []
    for prec, tol in TOLERANCE.items():
        got = steps("pallas", prec)
        err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(got, want))
        rows.append({"check": "pallas", "setting": f"{w}×{w} matrix, 2 updates, matmul {prec}",
                     "result": f"max |Δstep| / max |step| = {err:.2e}", "target": f"≤ {tol:g}",
                     "met": err <= tol, "rel_err": err, "precision": prec})
    return rows


# learned optimizers of the step check: name -> (label, target step time × Adam's: the μLO's of issue 11, or None)
STEP_LOS = {"mup_small_fc_mlp": ("μLO", 1.5), "mup_velo": ("μVeLO", None)}


def _lo_step_row(sz, width, adam, name, impl):
    """One learned optimizer's training-step row, with its ratio to Adam's step ``adam`` (bench_one's dict)."""
    from bench_optimizers import bench_one

    label, target = STEP_LOS[name]
    r = bench_one(width, sz["batch"], name, impl, sz["repeats"])
    ratio = r["mean_ms"] / adam["mean_ms"]
    return {"check": "step", "setting": f"muMLP w{width} d3, batch {sz['batch']}, {label} {impl}",
            "result": f"{_fmt_ms(r['mean_ms'])} = {ratio:.2f}× Adam",
            "target": f"≤ {target:g}× Adam" if target else "", "met": ratio <= target if target else None,
            "ratio": ratio, **r}


def check_step(sz, platform_name):
    from bench_optimizers import bench_one

    rows = []
    for width in sz["widths"]:
        adam = bench_one(width, sz["batch"], "adam", "-", sz["repeats"])
        rows.append({"check": "step", "setting": f"muMLP w{width} d3, batch {sz['batch']}, adam",
                     "result": _fmt_ms(adam["mean_ms"]), "target": "", "met": None, **adam})
        rows += [_lo_step_row(sz, width, adam, "mup_small_fc_mlp", impl) for impl in sz["impls"]]
        rows += [_lo_step_row(sz, width, adam, "mup_velo", impl) for impl in sz["velo_impls"]]
    return rows


def check_prefetch(sz, platform_name):
    import jax
    import numpy as np

    from mulo.data.prefetch import DevicePrefetcher
    from mulo.optimizers import adam
    from mulo.tasks import TaskSettings, parse_task_name
    from mulo.tasks.mlp import MLPTask

    name = f"mumlp-w{sz['prefetch_width']}-d3_imagenet-32x32x3"
    dataset = random_image_dataset("imagenet-32x32x3", sz["pool"])
    task = MLPTask(parse_task_name(name), TaskSettings(), dataset)
    opt = adam(1e-3)

    @jax.jit
    def step(state, batch):
        loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, None)
        return opt.update(state, grads, loss, None), loss

    from mulo.data.transfer import device_decoder, host_kwargs, resident_images

    rows = []
    # what meta-train and meta-test do: uint8 images gathered on the host and normalised on the device, or
    # (data_on_device on: the default on accelerators) the split kept on the device, batches gathered there
    for resident, what in ((False, "uint8 host data normalised on the device"),
                           (True, "images resident on the device (data_on_device on)")):
        state = opt.init(task.init(jax.random.PRNGKey(0)), sz["prefetch_steps"])
        images = resident_images(dataset, ["train"], jax.device_put) if resident else None
        host = dataset.batches("train", (sz["batch"],), 0, **host_kwargs(dataset, resident))
        with DevicePrefetcher(host, size=4, transform=device_decoder(dataset, images)) as it:
            state, loss = step(state, next(it))  # compile
            jax.block_until_ready(loss)
            timed = TimedIterator(it)
            t0 = time.perf_counter()
            for _ in range(sz["prefetch_steps"]):
                state, loss = step(state, next(timed))
            jax.block_until_ready((state, loss))
            total = time.perf_counter() - t0
        frac = timed.wait_s / total
        step_ms = 1e3 * total / sz["prefetch_steps"]
        rows.append({"check": "prefetch", "setting": f"adam, muMLP w{sz['prefetch_width']} d3, batch {sz['batch']}, "
                     f"ImageNet-32: {what}, {sz['prefetch_steps']} steps",
                     "result": f"wait {100 * frac:.1f}% of {step_ms:.2f} ms/step", "target": "≤ 5%",
                     "met": frac <= 0.05, "wait_fraction": frac, "step_ms": step_ms,
                     "finite": bool(np.isfinite(loss))})
    return rows


def check_meta_train(sz, platform_name):
    import jax

    from mulo.app.config import load_config
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned
    from mulo.tasks import TaskSettings, parse_task_name
    from mulo.tasks.mlp import MLPTask

    lo_impl = sz["lo_impl"]
    names = [f"mumlp-w{w}-d3_imagenet-32x32x3" for w in sz["meta_widths"]]
    cfg = load_config(None, cli=dict(task=names, num_tasks=sz["meta_pairs"], trunc_length=sz["meta_k"],
                                     steps_per_jit=sz["meta_spj"], local_batch_size=sz["meta_batch"],
                                     optimizer="mup_small_fc_mlp", lo_impl=lo_impl, progress=False,
                                     prefetch_batches=2))
    dataset = random_image_dataset("imagenet-32x32x3", sz["pool"])
    tasks = [MLPTask(parse_task_name(n), TaskSettings.from_config(cfg), dataset) for n in names]
    trainer = meta_trainer(cfg, tasks, build_learned(cfg))
    state = trainer.init_state()
    streams = [TimedIterator(s) for s in trainer.streams(0)]
    t0 = time.perf_counter()
    state, _ = trainer.step(state, streams)  # compile
    compile_s = time.perf_counter() - t0
    for s in streams:
        s.wait_s = 0.0
    times = []
    for _ in range(2):
        t = time.perf_counter()
        state, metrics = trainer.step(state, streams)
        times.append(time.perf_counter() - t)
    for s in streams:
        close = getattr(s._it, "close", None)
        if close:
            close()
    step_s = sum(times) / len(times)
    frac = sum(s.wait_s for s in streams) / sum(times)
    setting = (f"μLO_M: widths {'/'.join(map(str, sz['meta_widths']))}, {sz['meta_pairs']} pairs, K = {sz['meta_k']},"
               f" batch {sz['meta_batch']}, lo_impl {lo_impl}")
    jax.clear_caches()
    return [{"check": "meta-train", "setting": setting, "result": f"{step_s:.2f} s per outer step (compile "
             f"{compile_s:.0f} s)", "target": "≤ 4 s", "met": step_s <= 4.0, "outer_step_s": step_s,
             "compile_s": compile_s},
            {"check": "meta-train prefetch", "setting": setting, "result": f"wait {100 * frac:.1f}% of step time",
             "target": "≤ 5%", "met": frac <= 0.05, "wait_fraction": frac}]


def check_big(sz, platform_name):
    from bench_optimizers import _bytes, bench_one

    r = bench_one(sz["big_width"], sz["big_batch"], "mup_small_fc_mlp", sz["lo_impl"], 2)
    peak = r.get("device_peak") or r.get("peak")
    return [{"check": "w8192", "setting": f"μLO ({sz['lo_impl']}) step, muMLP w{sz['big_width']} d3, batch {sz['big_batch']}",
             "result": f"runs: {_fmt_ms(r['mean_ms'])}, peak {_bytes(peak) if peak else 'n/a'}", "target": "fits",
             "met": True, **r}]


CHECKS = {"tests": check_tests, "pallas": check_pallas, "step": check_step, "prefetch": check_prefetch,
          "w8192": check_big, "meta-train": check_meta_train}  # by priority: the costliest (3 tasks to compile) last


# ---------------------------------------------------------------------------------------------------------- main


def carried_wheels() -> dict:
    """{wheel file: installed version or None} of the wheels device_check.sh installed (MULO_CARRIED_WHEELS)."""
    from importlib import metadata

    out = {}
    for wheel in os.environ.get("MULO_CARRIED_WHEELS", "").split():
        dist = wheel.split("-")[0]
        try:
            out[wheel] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[wheel] = None
    return out


def markdown(report: dict) -> str:
    lines = [f"Device check: {report['device']}; jax {report['jax']}; {report['date']}; `{report['command']}`", "",
             "| check | setting | result | target | met |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        met = {True: "yes", False: "**no**", None: "–"}[r.get("met")]
        lines.append(f"| {r['check']} | {r['setting']} | {r['result']} | {r['target']} | {met} |")
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/device_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--out", default="device_check", help="folder for device_check.md and device_check.json")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"some of {','.join(CHECKS)}")
    parser.add_argument("--budget_s", type=float, default=240.0,
                        help="no check starts after this many seconds (the whole run should fit in 5 minutes, so "
                             "that one 8-minute device call also holds scripts/gpu_e2e.sh's stages)")
    args = parser.parse_args(argv)
    names = [c for c in args.checks.split(",") if c]
    bad = [c for c in names if c not in CHECKS]
    if bad:
        parser.error(f"unknown check(s) {bad}; expected some of {list(CHECKS)}")
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.platform == "gpu" else "cpu")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import jax

    from mulo.app import runtime
    from mulo.app.config import load_config

    runtime.enable_compilation_cache(None, 1.0)  # measure compilation, do not write caches on a borrowed machine
    runtime.set_matmul_precision(load_config(None).jax_default_matmul_precision)
    dev = jax.devices()[0]
    if args.platform == "gpu" and dev.platform != "gpu":
        print(f"device_check: --platform gpu but JAX sees {dev.platform}; use --platform cpu for the dry run",
              file=sys.stderr)
        return 2
    sz = SIZES[args.platform]
    report = {"device": f"{dev.device_kind} ({dev.platform}, {jax.device_count()} device(s))" if dev.platform != "cpu"
              else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "jax": jax.__version__, "python": platform.python_version(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "bash scripts/device_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
              "platform": args.platform, "carried_wheels": carried_wheels(),
              "rows": []}
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if time.perf_counter() - t_start > args.budget_s:
            report["rows"].append({"check": name, "setting": "", "result": "skipped: time budget spent",
                                   "target": "", "met": None})
            continue
        t0 = time.perf_counter()
        print(f"device_check: {name} ...", file=sys.stderr, flush=True)
        try:
            rows = CHECKS[name](sz, args.platform)
        except Exception as exc:  # one broken check must not lose the others' results
            rows = [{"check": name, "setting": "", "result": f"error: {type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:300]}", "target": "", "met": False,
                     "traceback": traceback.format_exc()[-3000:]}]
        for r in rows:
            r.setdefault("seconds", time.perf_counter() - t0)
        report["rows"].extend(rows)
        (out / "device_check.json").write_text(json.dumps(_jsonable(report), indent=1))  # partial results survive
    report["seconds"] = time.perf_counter() - t_start
    (out / "device_check.json").write_text(json.dumps(_jsonable(report), indent=1))
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [r for r in report["rows"] if r["check"] in ("tests", "pallas") and r.get("met") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
