"""What ``scripts/gpu_e2e.py`` measures and writes: the CLI harness, the resume comparison, the timing table, and the
files that go back from the device call (``e2e.md``, ``e2e.json``, ``e2e.log``, ``device_check.*``, ``report.md``,
``artifacts.tar.gz``)."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2.0 ** 30
LOG_TAIL_LINES = 400  # per stage in e2e.log (tqdm's carriage returns become lines)
VOLATILE = {"time", "step_time_s", "inner_steps_per_s"}  # metrics that are timings, not results


# ---------------------------------------------------------------------------------------------------------------------
# the harness: python src/main.py ARGV, plus the prefetch waits and the device memory


def harness(stats_path: str, argv: list[str]) -> int:
    """Run ``mulo.app.cli.main(argv)`` as ``python src/main.py`` does, timing every ``next()`` on the device prefetcher
    (wall time blocked, with its end time) and reading the first device's ``memory_stats()`` at the end."""
    sys.path.insert(0, str(ROOT / "src"))
    from mulo.data import prefetch

    waits: list[tuple[float, float]] = []
    plain_next = prefetch.DevicePrefetcher.__next__

    def timed_next(self):
        t = time.perf_counter()
        try:
            return plain_next(self)
        finally:
            waits.append((time.time(), time.perf_counter() - t))

    prefetch.DevicePrefetcher.__next__ = timed_next
    from mulo.app import cli

    rc = 1
    try:
        rc = cli.main(argv)
    finally:
        stats = {"rc": rc, "argv": argv, "waits": waits}
        try:
            import jax

            dev = jax.devices()[0]
            stats.update(jax=jax.__version__, device=f"{dev.device_kind} ({dev.platform})",
                         memory=dev.memory_stats() or None)
        except Exception as exc:  # noqa: BLE001 - the stats must not hide the command's own outcome
            stats["memory_error"] = f"{type(exc).__name__}: {exc}"[:300]
        Path(stats_path).write_text(json.dumps(stats))
    return rc


def recipe_value(recipe: str, key: str):
    sys.path.insert(0, str(ROOT / "src"))
    from mulo.app.config import load_config

    return load_config(ROOT / recipe)[key]


# ---------------------------------------------------------------------------------------------------------------------
# reading runs


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _theta_leaves(path: Path):
    import jax
    import numpy as np

    from mulo.optimizers import load_theta

    _, theta, _ = load_theta(path)
    return [np.asarray(x) for x in jax.tree.leaves(theta)]


def compare_runs(resumed: Path, reference: Path | None, k1: int, m: int) -> dict:
    """θ at step ``m`` of the resumed run against the uninterrupted reference's, bit for bit, and every logged
    metric of steps 1..m (timings aside). The first difference says where determinism broke: before ``k1`` the runs
    themselves differ, after it the resume does."""
    import numpy as np

    from mulo.layout import theta_step_path

    out = {"k1": k1, "M": m, "checked": False}
    if reference is None:
        return {**out, "why": "the reference run wrote nothing"}
    fa, fr = theta_step_path(resumed, m), theta_step_path(reference, m)
    if not (fa.is_file() and fr.is_file()):
        return {**out, "why": f"no θ at step {m} in {fa if not fa.is_file() else fr}"}
    a, b = _theta_leaves(fa), _theta_leaves(fr)
    same = len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                                    for x, y in zip(a, b))
    diff = max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(a, b)
                if x.shape == y.shape and x.size), default=0.0)
    ra = {int(r["step"]): r for r in read_jsonl(resumed / "metrics.jsonl") if int(r["step"]) <= m}
    rb = {int(r["step"]): r for r in read_jsonl(reference / "metrics.jsonl") if int(r["step"]) <= m}
    first = None
    for step in range(1, m + 1):
        x, y = ra.get(step, {}), rb.get(step, {})
        for key in sorted((set(x) | set(y)) - VOLATILE):
            if repr(x.get(key)) != repr(y.get(key)):
                first = {"step": step, "key": key, "resumed": x.get(key), "reference": y.get(key),
                         "where": "before the resume" if step <= k1 else "after the resume"}
                break
        if first:
            break
    return {**out, "checked": True, "theta_bitexact": same, "theta_max_abs_diff": diff,
            "metrics_identical": first is None and len(ra) == len(rb) == m, "first_difference": first,
            "steps_compared": m, "bitexact": same and first is None and len(ra) == len(rb) == m}


def lr_scan(tune_dir: Path) -> dict:
    """{learning rate: final train loss (inf if diverged)} of the MuAdam tuning runs under ``tune_dir``."""
    out = {}
    for run in sorted(tune_dir.glob("meta-test_*")):
        lr = None  # the run's manifest records the optimizer's hyper-parameters (learning_rate of the section)
        try:
            lr = float(json.loads((run / "meta_test.json").read_text())["optimizer_info"]["hparams"]["learning_rate"])
        except (OSError, ValueError, KeyError, TypeError):
            lr = None
        losses = [json.loads(p.read_text()).get("final_train_loss") for p in run.glob("*/seed*/summary.json")]
        if lr is not None and losses:
            out[lr] = min(float("inf") if x is None else float(x) for x in losses)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the timing table


def _stats(work: Path, name: str) -> dict:
    p = work / "stats" / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _stage(r: dict, name: str) -> dict:
    return next((s for s in reversed(r["stages"]) if s["stage"] == name), {})


def _gib(memory: dict | None) -> str | None:
    if not memory or memory.get("peak_bytes_in_use") is None:
        return None
    limit = memory.get("bytes_limit")
    return f"{memory['peak_bytes_in_use'] / GIB:.2f} GiB" + (f" of {limit / GIB:.1f} GiB" if limit else "")


def meta_train_timing(r: dict, work: Path) -> dict:
    """Compile, outer step, inner steps/s, prefetch wait and peak memory of the meta-train stages."""
    run = r.get("run_dirs", {}).get("meta_train")
    records = read_jsonl(Path(run) / "metrics.jsonl") if run else []
    if not records:
        return {}
    k1 = _stage(r, "train_a1").get("k1") or _stage(r, "train_a1_fused").get("k1")
    m = (r.get("resume_check") or {}).get("M")
    firsts = {1} | {s + 1 for s in (k1, m) if s}  # the first step of each process compiles or loads the cache
    by_step = {int(x["step"]): x for x in records}
    steady = [x for s, x in sorted(by_step.items()) if s not in firsts]
    main = [x for x in steady if m and int(x["step"]) > m + 1] or steady
    t = {"outer_steps_done": max(by_step)}
    if main:
        med = statistics.median(x["step_time_s"] for x in main)
        t.update(outer_step_s=med, outer_step_n=len(main),
                 inner_steps_per_s=statistics.median(x["inner_steps_per_s"] for x in main))
        if 1 in by_step:
            t["compile_s"] = by_step[1]["step_time_s"] - med
        if m and m + 1 in by_step:
            t["first_step_after_resume_s"] = by_step[m + 1]["step_time_s"]
        seg = main if len(main) > 1 else steady
        t0, t1 = float(seg[0]["time"]) - float(seg[0]["step_time_s"]), float(seg[-1]["time"])
        name = "train_main" if m and any(int(x["step"]) > m + 1 for x in steady) else "train_a1"
        waits = _stats(work, name).get("waits", [])
        if t1 > t0 and waits:
            t["prefetch_wait_fraction"] = sum(dt for end, dt in waits if t0 < end <= t1) / (t1 - t0)
    for name in ("train_a1", "train_a1_fused", "train_main"):
        mem = _gib(_stats(work, name).get("memory"))
        if mem:
            t[f"peak_memory_{name}"] = mem
    return t


def meta_test_table(r: dict, work: Path) -> list[dict]:
    rows = []
    for run in r.get("run_dirs", {}).get("meta_test", []):
        run = Path(run)
        label = run.name.removeprefix("meta-test_").split("_mumlp-")[0]  # optimizer, lr or θ (mulo.app.rundir.run_name)
        for p in sorted(run.glob("*/seed*/summary.json")):
            s = json.loads(p.read_text())
            rows.append({"optimizer": label, "task": p.parent.parent.name, "seed": p.parent.name,
                         "steps": s.get("num_steps") or s.get("steps"), "step_ms": (s.get("mean_step_time") or 0)
                         * 1e3 or None, "final_train_loss": s.get("final_train_loss"),
                         "test_accuracy": s.get("test_accuracy"), "diverged": s.get("diverged")})
    for name in ("test_lo", "test_muadam"):
        mem = _gib(_stats(work, name).get("memory"))
        if mem:
            rows.append({"optimizer": f"device peak memory, {name}", "task": mem})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# the files that go back


def _fmt(x, spec=".3g"):
    if x is None:
        return "–"
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def markdown(r: dict) -> str:
    env = r.get("environment", {})
    lines = [f"# GPU end to end (`scripts/gpu_e2e.sh`): {env.get('device') or '?'}, jax {env.get('jax') or '?'}, "
             f"{r['date']}", "", f"nvidia-smi: {env.get('nvidia_smi') or '–'}", "",
             f"`{r['command']}`: budget {r['budget_s']:.0f} s, took {_fmt(r.get('seconds'))} s, lo_impl "
             f"{r.get('lo_impl')}" + (f" ({r['lo_impl_fallback']})" if r.get("lo_impl_fallback") else ""),
             "", "## Stages", "", "| stage | status | wall s | timeout s | note |", "|---|---|---|---|---|"]
    for s in r["stages"]:
        parts = [s.get("note"), f"SIGTERM at {s['sigterm_at_s']} s ({s['sigterm_why']})" if s.get("sigterm_at_s")
                 is not None else None, f"rc {s['rc']}" if s.get("rc") else None, "killed" if s.get("killed") else None]
        note = "; ".join(p for p in parts if p)
        lines.append(f"| {s['stage']} | {s.get('status')} | {_fmt(s.get('wall_s'))} | {_fmt(s.get('timeout_s'))} | "
                     f"{note} |")
    rc = r.get("resume_check") or {}
    lines += ["", "## Resume (SIGTERM, `--auto_resume true`) against an uninterrupted run", ""]
    if rc.get("checked"):
        first = rc.get("first_difference")
        lines.append(f"Stopped after step {rc['k1']}, resumed to step {rc['M']}; the reference ran 1..{rc['M']} "
                     f"uninterrupted. θ at step {rc['M']}: **{'bit-exact' if rc['theta_bitexact'] else 'differs'}** "
                     f"(max |Δ| {rc['theta_max_abs_diff']:.3g}); logged metrics of steps 1..{rc['M']}: "
                     f"**{'identical' if rc['metrics_identical'] else 'differ'}**"
                     + (f" (first: step {first['step']} `{first['key']}`, {first['where']})" if first else "") + ".")
    else:
        lines.append(f"Not checked: {rc.get('why', 'the stages before it did not finish')}.")
    t = r.get("timing") or {}
    lines += ["", "## Timing (meta-train)", "", "| what | value |", "|---|---|"]
    names = {"compile_s": "compile (first outer step less a steady one), s",
             "first_step_after_resume_s": "first outer step after a resume (compilation cache), s",
             "outer_step_s": "outer step (median), s", "outer_step_n": "steady outer steps measured",
             "inner_steps_per_s": "inner steps/s (2 × pairs × K × tasks per outer step)",
             "prefetch_wait_fraction": "prefetch wait / wall time", "outer_steps_done": "outer steps done"}
    for k, v in t.items():
        lines.append(f"| {names.get(k, k.replace('_', ' '))} | {_fmt(v)} |")
    lr = r.get("muadam_lr") or {}
    lines += ["", "## Meta-test", "", f"MuAdam learning rate {lr.get('lr')}" + (
        f", tuned at width {lr['tuned_at_width']} over {sorted(lr['scan'])}: final train losses "
        + ", ".join(f"{k:g}: {_fmt(v)}" for k, v in sorted(lr["scan"].items())) if lr.get("scan") else
        " (not tuned in this call)"), "",
        "| optimizer | task | seed | steps | step ms | final train loss | test accuracy |",
        "|---|---|---|---|---|---|---|"]
    for x in r.get("meta_test") or []:
        lines.append(f"| {x['optimizer']} | {x['task']} | {x.get('seed', '')} | {_fmt(x.get('steps'))} | "
                     f"{_fmt(x.get('step_ms'))} | {_fmt(x.get('final_train_loss'), '.4f')} | "
                     f"{_fmt(x.get('test_accuracy'), '.4f')} |")
    return "\n".join(lines) + "\n"


def _log_text(work: Path, r: dict) -> str:
    parts = []
    for s in r["stages"]:
        log = Path(s.get("log", ""))
        body = log.read_text(errors="replace").replace("\r", "\n") if log.is_file() else ""
        tail = [x for x in body.splitlines() if x.strip()][-LOG_TAIL_LINES:]
        parts.append(f"===== {s['stage']}: {s.get('status')} (rc {s.get('rc')}, {s.get('wall_s')} s)\n$ "
                     f"{s.get('command', '')}\n" + "\n".join(tail))
    return "\n\n".join(parts) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_outputs(r: dict, out: Path, work: Path) -> None:
    """e2e.json, e2e.md, e2e.log and the device check's files in ``out``; never raises (the call must return)."""
    try:
        r["timing"] = meta_train_timing(r, work)
        r["meta_test"] = meta_test_table(r, work)
    except Exception as exc:  # noqa: BLE001
        r["summary_error"] = f"{type(exc).__name__}: {exc}"[:500]
    _atomic_write(out / "e2e.json", json.dumps(r, indent=1, default=str))
    _atomic_write(out / "e2e.md", markdown(r))
    _atomic_write(out / "e2e.log", _log_text(work, r))
    dc = work / "device_check"
    if (dc / "device_check.json").is_file():
        shutil.copyfile(dc / "device_check.json", out / "device_check.json")
        if (dc / "device_check.md").is_file():
            shutil.copyfile(dc / "device_check.md", out / "device_check.md")
        else:  # cut short by its timeout: the table of the checks it finished
            sys.path.insert(0, str(ROOT / "scripts"))
            from device_check import markdown as dc_markdown

            _atomic_write(out / "device_check.md", dc_markdown(json.loads((dc / "device_check.json").read_text())))


def pack(r: dict, out: Path, work: Path) -> None:
    """report.md and artifacts.tar.gz (logs, harness stats, meta-train metrics/config/θ, meta-test run
    directories, the report with its figures; no checkpoints) into ``out``."""
    report = work / "report" / "report.md"
    if report.is_file():
        shutil.copyfile(report, out / "report.md")
    skip = {"checkpoints", "wandb", "jax-cache"}
    with tarfile.open(out / "artifacts.tar.gz.tmp", "w:gz") as tar:
        for sub in ("logs", "stats", "meta-train", "meta-test", "report", "device_check"):
            base = work / sub
            if not base.exists():
                continue
            for p in sorted(base.rglob("*")):
                rel = p.relative_to(work)
                if p.is_file() and not skip & set(rel.parts) and not p.name.startswith(".mulo"):
                    tar.add(p, arcname=str(rel))
    (out / "artifacts.tar.gz.tmp").replace(out / "artifacts.tar.gz")
