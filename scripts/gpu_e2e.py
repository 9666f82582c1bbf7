"""The main job on one GPU, end to end through the CLI, in one device call (issue 23). Run it through
``bash scripts/gpu_e2e.sh`` (which installs the carried wheels first); ``--platform cpu`` is the dry run at tiny sizes.

Stages, in order, each with its own timeout inside ``--budget_s`` (a stage that would not fit is skipped and says so;
``e2e.json``, ``e2e.md`` and ``e2e.log`` in ``--out`` are rewritten after every stage, so a call cut short still
returns what it did):

0. ``device_check``: ``bash scripts/device_check.sh`` (issue 22) within ``--device_check_s`` (default 0: skipped);
1. ``train_a1``: ``meta-train`` of the recipe (``config/meta_train/gpu_smoke.py``), sent SIGTERM once step
   ``sigterm_after`` is logged; it saves a checkpoint after step k1 and exits;
2. ``train_a2``: the same command with ``--auto_resume true --num_outer_steps M`` (M = k1 + 2): resumes at k1 and
   ends at M, writing θ at M;
3. ``reference``: the same recipe from scratch in another folder with ``--num_outer_steps M``, never interrupted.
   Bit-exact resume means its θ at M equals the resumed run's bit for bit, and so does every logged metric of
   steps 1..M (a first difference before k1 would be run-to-run nondeterminism, after k1 the resume);
4. ``train_main``: resumed again, the main meta-training, until the recipe ends or the time left for the stages
   after it runs out (then SIGTERM: a checkpoint, as a preempted job);
5. ``tune_muadam``: MuAdam meta-tested at the tuning width for each of ``lrs`` (one seed); the best final train
   loss picks the learning rate;
6. ``test_lo`` and ``test_muadam``: ``meta-test`` of the meta-trained θ, and of MuAdam at that rate, at the
   meta-test widths (1024 and 8192 on a GPU);
7. ``report`` of the two meta-test run directories.

The meta-train and meta-test commands run as ``python src/main.py ...`` would, under a small harness (``--_cli``)
that also records what the CLI does not log: the time each ``next()`` on the device prefetcher blocked, and the
device's ``memory_stats()`` at the end. Outputs (at most 8 files, as the device tool returns): ``e2e.md`` (stages,
resume check, timing table, meta-test table), ``e2e.json``, ``e2e.log`` (every stage's output), ``device_check.md``
/ ``.json``, ``report.md`` and ``artifacts.tar.gz`` (metrics, summaries, configs, θ files, figures; no checkpoints).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_e2e_summary as summary  # noqa: E402

RECIPE = "config/meta_train/gpu_smoke.py"
META_TEST = "config/meta_test/meta_test_base.py"
FMNIST = "fashionmnist-28x28x1"
SIZES = {
    # est: what the stages after train_main are expected to take (they are reserved before it); grace: how long a
    # signalled run may take to finish its step and save its checkpoint
    "gpu": dict(train=[], sigterm_after=3, resume_steps=2, lo_impl=None, widths=(1024, 8192), tune_width=1024,
                lrs=(0.3, 0.1, 0.03), default_lr=0.1,
                test=["--local_batch_size", "4096", "--num_inner_steps", "300", "--test_interval", "100",
                      "--max_eval_examples", "10000", "--eval_batch_size", "5000"],
                cap=dict(train_a1=240, train_a2=120, reference=120, tune_muadam=90, test_lo=150, test_muadam=100,
                         report=60),
                est=dict(reference=45, tune_muadam=45, test_lo=75, test_muadam=50, report=25, pack=10), grace=60,
                min_main=30),
    "cpu": dict(train=["--task", f"mumlp-w8-d3_{FMNIST}", "--local_batch_size", "8", "--estimator.num_pairs", "2",
                       "--estimator.trunc_length", "2", "--steps_per_jit", "2", "--num_inner_steps", "20",
                       "--truncation.min_length", "5", "--truncation.random_offset", "5",
                       "--num_outer_steps", "40", "--save_iter", "10", "--progress", "false"],
                sigterm_after=2, resume_steps=2, lo_impl="reference", widths=(8,), tune_width=8, lrs=(0.1,),
                default_lr=0.1,
                test=["--local_batch_size", "8", "--num_inner_steps", "20", "--test_interval", "10",
                      "--max_eval_examples", "64", "--eval_batch_size", "64", "--progress", "false"],
                cap=dict(train_a1=300, train_a2=120, reference=120, tune_muadam=120, test_lo=120, test_muadam=120,
                         report=120),
                est=dict(reference=15, tune_muadam=20, test_lo=20, test_muadam=20, report=15, pack=5), grace=30,
                min_main=5),
}
# what must still fit after the meta-training stages (the MuAdam tuning is skipped, lr default_lr, when time is short)
ESSENTIAL = ("test_lo", "test_muadam", "report", "pack")


class Call:
    """The whole call: its clock, folders, results (``self.r``) and the stage runner."""

    def __init__(self, args):
        self.args = args
        self.sz = SIZES[args.platform]
        self.t0 = time.monotonic()
        self.data_args: list[str] = []
        self.end = self.t0 + args.budget_s
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        for d in (self.out, self.work / "logs", self.work / "stats"):
            d.mkdir(parents=True, exist_ok=True)
        self.r = {"platform": args.platform, "command": "bash scripts/gpu_e2e.sh " + " ".join(args.argv),
                  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "budget_s": args.budget_s, "stages": [], "lo_impl": None}

    def left(self) -> float:
        return self.end - time.monotonic()

    def reserve(self, names) -> float:
        return sum(self.sz["est"][n] for n in names)

    # ---- running one stage ------------------------------------------------------------------------------------

    def run(self, name: str, cmd: list[str], timeout: float, watch=None, deadline_ok: bool = False,
            grace: float = 5.0) -> dict:
        """Run ``cmd`` (its output to logs/<name>.log) for at most ``timeout`` seconds: then SIGTERM, ``grace`` s
        more (a meta-train run finishes its step and saves), SIGKILL to its process group. ``watch()`` returning True
        sends SIGTERM once (the planned interruption). ``deadline_ok``: reaching the timeout is the planned end (the
        main training), not a failure. The group stays in this session, so nothing outlives the device call."""
        log = self.work / "logs" / f"{name}.log"
        st = {"stage": name, "command": " ".join(cmd), "timeout_s": round(timeout, 1), "log": str(log)}
        if timeout < 5:
            st.update(status="skipped", note="no time left in the budget")
            return self._done(st)
        print(f"[gpu_e2e] {name}: {st['command']} (timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        term_at = kill_at = None
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, process_group=0)
            while proc.poll() is None:
                now = time.monotonic()
                if term_at is None and ((watch is not None and watch()) or now - t0 > timeout):
                    term_at, kill_at = now, now + grace
                    st["sigterm_at_s"] = round(now - t0, 1)
                    st["sigterm_why"] = "planned" if now - t0 <= timeout else "deadline"
                    proc.send_signal(signal.SIGTERM)
                elif kill_at is not None and now > kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    st["killed"] = True
                    proc.wait()
                    break
                time.sleep(0.05)
        st["rc"], st["wall_s"] = proc.returncode, round(time.monotonic() - t0, 1)
        late = st.get("sigterm_why") == "deadline" and not deadline_ok
        st["status"] = "ok" if proc.returncode == 0 and not late and not st.get("killed") else (
            "timeout" if st.get("sigterm_why") == "deadline" else "failed")
        return self._done(st)

    def _done(self, st: dict) -> dict:
        self.r["stages"].append(st)
        self.save()
        return st

    def cli(self, name: str, argv: list[str]) -> list[str]:
        """``python src/main.py ARGV`` under the harness that records prefetch waits and device memory."""
        return [sys.executable, str(ROOT / "scripts" / "gpu_e2e.py"), "--_cli", str(self.work / "stats" /
                                                                                  f"{name}.json"), "--", *argv]

    def save(self) -> None:
        summary.write_outputs(self.r, self.out, self.work)


# ---------------------------------------------------------------------------------------------------------------------
# the stages


def meta_train_argv(call: Call, output_dir: Path, *extra: str) -> list[str]:
    return ["meta-train", "--config", RECIPE, *call.sz["train"], "--lo.impl", call.r["lo_impl"],
            "--output_dir", str(output_dir), *call.data_args, *extra]


def run_dir_of(output_dir: Path, kind: str) -> Path | None:
    found = sorted(output_dir.glob(f"{kind}_*"))
    return found[0] if found else None


def logged_steps(run_dir: Path | None) -> list[int]:
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return []
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass  # a line being written
    return out


def latest_step(run_dir: Path | None) -> int | None:
    p = run_dir / "checkpoints" / "latest" if run_dir else None
    return int(p.read_text().strip()) if p is not None and p.is_file() else None


def stage_device_check(call: Call) -> None:
    if call.args.device_check_s <= 0:
        return
    timeout = min(call.args.device_check_s, call.left() - 60)
    cmd = ["bash", "scripts/device_check.sh", "--out", str(call.work / "device_check"),
           "--budget_s", str(max(0, int(timeout) - 30))]
    if call.args.platform == "cpu":
        cmd += ["--platform", "cpu"]
    if call.args.device_checks:
        cmd += ["--checks", call.args.device_checks]
    call.run("device_check", cmd, timeout)


def stage_train_a1(call: Call, runs: Path) -> tuple[Path | None, int | None]:
    """The interrupted run: SIGTERM once step sigterm_after is logged. Falls back from pallas to fused when the
    pallas run stops before its first step."""
    n = call.sz["sigterm_after"]
    for attempt in ("first", "fallback"):
        out = runs / ("A" if attempt == "first" else "A-fused")
        name = "train_a1" if attempt == "first" else "train_a1_fused"
        watch = lambda: max(logged_steps(run_dir_of(out, "meta-train")), default=0) >= n  # noqa: E731
        st = call.run(name, call.cli(name, meta_train_argv(call, out)),
                      min(call.sz["cap"]["train_a1"], call.left() - call.reserve(ESSENTIAL)), watch=watch,
                      grace=call.sz["grace"])
        run_dir = run_dir_of(out, "meta-train")
        if logged_steps(run_dir) or call.r["lo_impl"] != "pallas" or attempt == "fallback":
            break
        call.r["lo_impl_fallback"] = "pallas stopped before its first step (see the train_a1 log): fused from here"
        call.r["lo_impl"] = "fused"
    k1 = latest_step(run_dir)
    st["k1"] = k1
    st["interrupted"] = k1 is not None and "stopped by SIGTERM" in Path(st["log"]).read_text(errors="replace")
    call.save()
    return run_dir, k1


def stage_resume_and_reference(call: Call, run_dir: Path, k1: int, runs: Path) -> None:
    m = k1 + call.sz["resume_steps"]
    out = run_dir.parent
    call.run("train_a2", call.cli("train_a2", meta_train_argv(call, out, "--auto_resume", "true",
                                                              "--num_outer_steps", str(m))),
             min(call.sz["cap"]["train_a2"], call.left() - call.reserve(ESSENTIAL)), grace=call.sz["grace"])
    if call.left() - call.reserve(ESSENTIAL) < call.sz["est"]["reference"]:
        call.r["resume_check"] = {"k1": k1, "M": m, "checked": False, "why": "no time left for the reference run"}
        return call.save()
    ref = runs / "R"
    call.run("reference", call.cli("reference", meta_train_argv(call, ref, "--num_outer_steps", str(m))),
             min(call.sz["cap"]["reference"], call.left() - call.reserve(ESSENTIAL)), grace=call.sz["grace"])
    call.r["resume_check"] = summary.compare_runs(run_dir, run_dir_of(ref, "meta-train"), k1, m)
    call.save()


def stage_main(call: Call, run_dir: Path) -> None:
    timeout = call.left() - call.reserve(ESSENTIAL + ("tune_muadam",)) - call.sz["grace"]
    if timeout < call.sz["min_main"]:  # train rather than tune MuAdam
        timeout = call.left() - call.reserve(ESSENTIAL) - call.sz["grace"]
    if call.args.main_s:
        timeout = min(timeout, call.args.main_s)
    if timeout < call.sz["min_main"]:
        call.r["stages"].append({"stage": "train_main", "status": "skipped", "note": "no time left in the budget"})
        return call.save()
    call.run("train_main", call.cli("train_main", meta_train_argv(call, run_dir.parent, "--auto_resume", "true")),
             timeout, deadline_ok=True, grace=call.sz["grace"])


def meta_test_argv(call: Call, output_dir: Path, widths, *extra: str) -> list[str]:
    tasks = ",".join(f"mumlp-w{w}-d3_{FMNIST}" for w in widths)
    return ["meta-test", "--config", META_TEST, "--task", tasks, "--num_runs", "1", *call.sz["test"],
            "--output_dir", str(output_dir), *call.data_args, *extra]


def stage_meta_test(call: Call, run_dir: Path | None) -> list[Path]:
    mt = call.work / "meta-test"
    dirs = []
    if run_dir is not None:
        call.run("test_lo", call.cli("test_lo", meta_test_argv(
            call, mt / "lo", call.sz["widths"], "--optimizer.name", "lo", "--lo.name", "mup_small_fc_mlp",
            "--checkpoint", str(run_dir), "--lo.impl", call.r["lo_impl"])), min(call.sz["cap"]["test_lo"], call.left() - call.reserve(ESSENTIAL[1:])))
        dirs.append(run_dir_of(mt / "lo", "meta-test"))
        call.r["run_dirs"]["meta_test"] = [str(d) for d in dirs if d is not None]
    lr = call.args.lrs[0] if call.args.lrs and len(call.args.lrs) == 1 else call.sz["default_lr"]
    scan = {}
    lrs = call.args.lrs or call.sz["lrs"]
    if len(lrs) > 1 and call.left() - call.reserve(ESSENTIAL[1:]) > call.sz["est"]["tune_muadam"]:
        per = min(call.sz["cap"]["tune_muadam"], call.left() - call.reserve(ESSENTIAL[1:])) / len(lrs)
        for x in lrs:
            call.run(f"tune_muadam_lr{x:g}", call.cli(f"tune_muadam_lr{x:g}", meta_test_argv(
                call, mt / "tune", [call.sz["tune_width"]], "--optimizer.name", "muadam", "--optimizer.learning_rate", str(x))),
                per)
        scan = summary.lr_scan(mt / "tune")
        if scan:
            lr = min(scan, key=scan.get)
    call.r["muadam_lr"] = {"lr": lr, "scan": scan, "tuned_at_width": call.sz["tune_width"] if scan else None}
    call.run("test_muadam", call.cli("test_muadam", meta_test_argv(
        call, mt / "muadam", call.sz["widths"], "--optimizer.name", "muadam", "--optimizer.learning_rate", str(lr))),
        min(call.sz["cap"]["test_muadam"], call.left() - call.reserve(ESSENTIAL[2:])))
    dirs.append(run_dir_of(mt / "muadam", "meta-test"))
    dirs = [d for d in dirs if d is not None]
    call.r["run_dirs"]["meta_test"] = [str(d) for d in dirs]
    call.save()
    return dirs


def backend_check(call: Call) -> bool:
    """What JAX and the driver see, from a short subprocess (this process never holds the GPU). On ``--platform gpu``
    without a GPU: one error line, exit 2, before any stage."""
    probe = ("import jax; d = jax.devices()[0]; "
             "print(jax.__version__, d.platform, jax.device_count(), getattr(d, 'device_kind', '?'), sep='|')")
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
        fields = out.stdout.strip().splitlines()[-1].split("|") if out.returncode == 0 and out.stdout.strip() else []
    except subprocess.TimeoutExpired:
        fields = []
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    call.r["environment"] = {"jax": fields[0] if fields else None, "platform": fields[1] if fields else None,
                             "devices": fields[2] if fields else None, "device": fields[3] if fields else None,
                             "nvidia_smi": smi.stdout.strip() if smi is not None and smi.returncode == 0 else None}
    call.save()
    if call.args.platform == "gpu" and (not fields or fields[1] != "gpu"):
        print(f"error: --platform gpu but JAX sees {fields[1] if fields else 'no backend'} (JAX_PLATFORMS="
              f"{os.environ.get('JAX_PLATFORMS')}); use --platform cpu for the dry run", file=sys.stderr)
        return False
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_cli"]:
        return summary.harness(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    p = argparse.ArgumentParser(prog="scripts/gpu_e2e.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--platform", choices=("gpu", "cpu"), default="gpu", help="cpu: the dry run at tiny sizes")
    p.add_argument("--out", default="gpu_e2e", help="where the (at most 8) result files go: $OUT on the device")
    p.add_argument("--work", default=None, help="run directories and checkpoints (default: /tmp/mulo-e2e)")
    p.add_argument("--budget_s", type=float, default=450.0, help="the whole call's seconds (the device call's "
                   "timeout_s less ~30 s)")
    p.add_argument("--device_check_s", type=float, default=None,
                   help="seconds for scripts/device_check.sh first (default 0: skipped; its full run takes ~5 "
                        "minutes, so it fits one 8-minute call with these stages only cut short)")
    p.add_argument("--device_checks", default="", help="device_check.sh --checks (default: all)")
    p.add_argument("--main_s", type=float, default=0, help="cap the main training's seconds (0: what is left)")
    p.add_argument("--lo_impl", choices=("pallas", "fused", "reference"), default=None,
                   help="default: the recipe's (pallas) on gpu, reference on cpu")
    p.add_argument("--lrs", type=lambda t: [float(x) for x in t.split(",")], default=None,
                   help="MuAdam learning rates to tune at the tuning width (default 0.3,0.1,0.03 on gpu; one rate: "
                        "no tuning)")
    p.add_argument("--deterministic", action="store_true",
                   help="every stage with XLA_FLAGS=--xla_gpu_deterministic_ops=true (a rerun when the resume check "
                        "found a difference before the resume: run-to-run nondeterminism, not the resume)")
    p.add_argument("--fashion_mnist_dir", default=None, help="the IDX files (default: .data/fashion-mnist if it "
                   "exists, else what mulo finds)")
    args = p.parse_args(argv)
    args.argv = argv
    args.device_check_s = args.device_check_s or 0.0
    args.work = args.work or "/tmp/mulo-e2e"
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.platform == "gpu" else "cpu")
    call = Call(args)
    fm = args.fashion_mnist_dir or (str(ROOT / ".data" / "fashion-mnist")
                                    if (ROOT / ".data" / "fashion-mnist").is_dir() else None)
    call.data_args = ["--fashion_mnist_dir", fm] if fm else []
    call.r["fashion_mnist_dir"] = fm
    call.r["lo_impl"] = args.lo_impl or call.sz["lo_impl"] or summary.recipe_value(RECIPE, "lo_impl")
    os.environ.setdefault("MULO_COMPILATION_CACHE_DIR", str(call.work / "jax-cache"))  # shared by every stage
    if args.deterministic:
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                         "--xla_gpu_deterministic_ops=true"]))
    call.r["xla_flags"] = os.environ.get("XLA_FLAGS")
    if not backend_check(call):
        return 2
    try:
        stage_device_check(call)
        runs = call.work / "meta-train"
        run_dir, k1 = stage_train_a1(call, runs)
        call.r["run_dirs"] = {"meta_train": str(run_dir) if run_dir else None, "meta_test": []}  # read as they fill
        if run_dir is not None and k1 is not None:
            stage_resume_and_reference(call, run_dir, k1, runs)
            stage_main(call, run_dir)
        test_dirs = stage_meta_test(call, run_dir if latest_step(run_dir) is not None else None)
        if test_dirs:
            call.run("report", [sys.executable, "src/main.py", "report", *map(str, test_dirs), "--output_dir",
                                str(call.work / "report")],
                     min(call.sz["cap"]["report"], call.left() - call.reserve(("pack",))))
    finally:
        call.r["seconds"] = round(time.monotonic() - call.t0, 1)
        call.save()
        summary.pack(call.r, call.out, call.work)
    failed = [s["stage"] for s in call.r["stages"] if s.get("status") in ("failed", "timeout")]
    if (call.r.get("resume_check") or {}).get("checked") and not call.r["resume_check"]["bitexact"]:
        failed.append("resume not bit-exact")
    print(f"[gpu_e2e] done in {call.r['seconds']:.0f} s; results in {call.out}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
