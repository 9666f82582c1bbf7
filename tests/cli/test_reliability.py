"""Issue 14: every bad input is one line (exit 2, no traceback, nothing written or damaged), concurrent runs are safe,
unwritable outputs and damaged files are handled.

Almost every case runs the CLI in-process (``mulo.app.cli.main``) and stops in the checks that come before anything is
created or compiled; the concurrency test and one end-to-end stderr check start real processes.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mulo.app import runtime
from mulo.app.cli import main, parse
from mulo.app.config import SCHEMA
from mulo.app.schema import INT_MAX
from mulo.errors import CheckpointError
from mulo.app.memory import Footprint, check_fits, footprint, is_out_of_memory, tree_bytes
from mulo.app.rundir import LOCK_FILE, claim, run_dir_path, write_config

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "config" / "meta_train" / "quickstart.py")
META_TEST = str(REPO / "config" / "meta_test" / "cpu_fashionmnist.py")
SWEEP = str(REPO / "config" / "sweeps" / "sweep_muadam.py")
COORD = str(REPO / "config" / "coord_check" / "mumlp_fashionmnist.py")
TINY = "mumlp-w16-d1_fashionmnist-28x28x1"
QUIET = ["--wandb_mode", "disabled", "--progress", "false"]


@pytest.fixture(autouse=True)
def _library_dirs(tmp_path_factory, monkeypatch):
    """The CLI points library caches at ~/.cache/mulo when unset; in tests they go to a temporary folder."""
    root = tmp_path_factory.getbasetemp() / "libdirs"
    for var, sub in runtime.LIBRARY_DIRS.items():
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def qs(out: Path, *extra: str) -> list[str]:
    """The issue's QS: a one-step quickstart meta-training of a width-16 muMLP."""
    return ["meta-train", "--config", QUICKSTART, "--task", TINY, "--estimator.num_pairs", "1", "--num_outer_steps",
            "1", "--output_dir", str(out), *QUIET, *extra]


def mt(out: Path, *extra: str) -> list[str]:
    return ["meta-test", "--config", META_TEST, "--optimizer.name", "adam", "--task",
            "mumlp-w8-d1_fashionmnist-28x28x1", "--num_inner_steps", "20", "--num_runs", "1", "--output_dir", str(out),
            *QUIET, *extra]


def sweep(out: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", SWEEP, "--task", TINY, "--output_dir", str(out), *QUIET, *extra]


def run(argv, capsys) -> tuple[int, list[str]]:
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


def one_line(rc: int, err: list[str], *needles: str) -> str:
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def listing(root: Path) -> dict[str, int]:
    """Every file under root with its size (what "nothing written or damaged" compares), but the empty lock file
    a run directory keeps once it has been locked."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


# ---------------------------------------------------------------------------------------------------------------------
# 1. concurrent runs: one lock per run directory


def test_a_run_directory_held_by_another_run_is_refused_naming_the_holder(tmp_path, capsys):
    argv = mt(tmp_path / "out")
    _, cfg = parse(argv)
    path = run_dir_path(cfg, "meta-test")
    unfinished = path / "mumlp-w8-d1_fashionmnist-28x28x1" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.3}\n')
    before = listing(path)
    with claim(path, "meta-test"):
        rc, err = run(argv, capsys)
        line = one_line(rc, err, "in use by meta-test", f"pid {os.getpid()}")
    assert str(path) in line
    assert listing(path) == before  # the live run was neither moved aside nor given a config.py
    assert not (path / "config.py").exists()


@pytest.mark.parametrize("kind, argv", [
    ("meta-train", lambda o: qs(o)),
    ("coord-check", lambda o: ["coord-check", "--config", COORD, "--widths", "8,16", "--output_dir", str(o), *QUIET])])
def test_meta_train_and_coord_check_refuse_a_held_run_directory(tmp_path, capsys, kind, argv):
    _, cfg = parse(argv(tmp_path / "O"))
    path = run_dir_path(cfg, kind)
    with claim(path, "another " + kind):
        one_line(*run(argv(tmp_path / "O"), capsys), f"is in use by another {kind} (pid {os.getpid()}")
    assert listing(tmp_path / "O") == {}  # no config.py, no metrics, no checkpoints


def test_a_sweep_directory_belongs_to_one_study(tmp_path, capsys):
    from mulo.app.sweep_study import STUDY_RECORD, claim_study, storage_url

    argv = sweep(tmp_path / "O", "--study_name", "s")
    _, cfg = parse(argv)
    path = run_dir_path(cfg, "sweep")
    path.mkdir(parents=True)
    claim_study(path, storage_url(cfg, path), "s")
    claim_study(path, storage_url(cfg, path), "s")  # a second worker of the same study joins
    with pytest.raises(Exception, match="holds the sweep study 's'"):
        claim_study(path, "sqlite:////elsewhere/study.db", "s")
    before = listing(path)
    one_line(*run(sweep(tmp_path / "O", "--study_name", "other"), capsys), "holds the sweep study 's'")
    assert listing(path) == before and set(before) == {STUDY_RECORD}  # and no config.py was written


def test_two_processes_at_one_run_directory_leave_what_one_run_writes(tmp_path):
    steps = 60
    argv = [sys.executable, str(REPO / "src" / "main.py"), *mt(tmp_path / "out", "--num_inner_steps", str(steps),
            "--test_interval", str(steps), "--max_eval_examples", "100", "--eval_batch_size", "100",
            "--local_batch_size", "16")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, _, err in results:
        if rc == 2:  # the loser stops at once with one line naming the winner
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "is in use by meta-test (pid" in lines[0], err
    (run_dir,) = (tmp_path / "out").iterdir()
    seed = run_dir / "mumlp-w8-d1_fashionmnist-28x28x1" / "seed0"
    records = [json.loads(line) for line in (seed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    assert train_steps == list(range(1, steps + 1))  # every step once: the two runs did not interleave
    assert not [p for p in seed.parent.iterdir() if ".old-" in p.name]  # nothing moved aside
    assert json.loads((seed / "summary.json").read_text())["steps_completed"] == steps


# ---------------------------------------------------------------------------------------------------------------------
# 2. a rejected rerun leaves the run's provenance alone


def test_rejected_rerun_does_not_rewrite_config_or_checkpoints(tmp_path, capsys):
    import jax.numpy as jnp

    from mulo.meta.checkpoint import Checkpointer
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned
    from mulo.tasks import TaskSettings, get_tasks

    _, cfg = parse(qs(tmp_path / "O"))
    path = run_dir_path(cfg, "meta-train")
    path.mkdir(parents=True)
    write_config(path, cfg)
    tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
    identity = meta_trainer(cfg, tasks, build_learned(cfg)).identity()
    ckpt = Checkpointer(path / "checkpoints", 3, identity)
    ckpt.save(1, {"theta": jnp.arange(3.0)})
    ckpt.close()
    before = listing(path)
    config_text = (path / "config.py").read_text()

    rc, err = run(qs(tmp_path / "O", "--auto_resume", "true", "--seed", "3", "--estimator.std", "0.2"), capsys)
    one_line(rc, err, "does not match this run", "seed")
    rc, err = run(qs(tmp_path / "O"), capsys)
    one_line(rc, err, "already has meta-training checkpoints", "--auto_resume true")
    assert (path / "config.py").read_text() == config_text  # still seed 0, like its checkpoints
    assert listing(path) == before


# ---------------------------------------------------------------------------------------------------------------------
# 3. unwritable outputs


def _statvfs(flag: int = 0, bavail: int = 10**6):
    real = os.statvfs

    def fake(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, bavail, st.f_files, st.f_ffree,
                                  st.f_favail, flag, st.f_namemax))

    return fake


COMMANDS = {"meta-train": qs, "meta-test": mt, "sweep": sweep}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("fault, needle", [("file", "is not a directory"), ("below_file", "cannot be created"),
                                           ("read_only", "read-only file system"), ("full", "no space left"),
                                           ("long_suffix", "run name is")])
def test_unwritable_outputs_are_one_line_and_create_nothing(tmp_path, capsys, monkeypatch, command, fault, needle):
    out, extra = tmp_path / "out", []
    if fault == "file":
        out.write_text("not a folder")
    elif fault == "below_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    elif fault == "read_only":  # (the tests may run as root, whom permission bits do not stop)
        monkeypatch.setattr(os, "statvfs", _statvfs(flag=os.ST_RDONLY))
    elif fault == "full":
        monkeypatch.setattr(os, "statvfs", _statvfs(bavail=0))
    else:
        extra = ["--name_suffix", "_" + "x" * 300]
    before = listing(tmp_path)
    rc, err = run(COMMANDS[command](out, *extra), capsys)
    one_line(rc, err, needle)
    assert listing(tmp_path) == before and not (out.exists() and out.is_dir())


def test_a_disk_that_fills_while_the_config_is_written_leaves_no_partial_run(tmp_path, capsys, monkeypatch):
    from mulo import io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    rc, err = run(mt(tmp_path / "out"), capsys)
    one_line(rc, err, "No space left on device", "cannot write")
    assert not list((tmp_path / "out").iterdir())  # the run directory it had created is gone again


def test_errors_that_escape_a_run_are_one_line(capsys, monkeypatch):
    import mulo.app.cli as cli

    def raising(exc):
        def handler(cfg, args):
            raise exc
        return lambda command: handler

    monkeypatch.setattr(cli, "_handler", raising(OSError(errno.ENOSPC, "No space left on device", "/x/m.jsonl")))
    one_line(*run(["report", "somewhere"], capsys), "No space left on device: /x/m.jsonl")
    monkeypatch.setattr(cli, "_handler", raising(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                                              "allocate 98765432100 bytes.\nBufferAssignment ...")))
    one_line(*run(["report", "somewhere"], capsys), "out of memory", "RESOURCE_EXHAUSTED")
    monkeypatch.setattr(cli, "_handler", raising(ValueError("a bug")))
    with pytest.raises(ValueError):  # a bug is not hidden behind a one-line message
        main(["report", "somewhere"])


# ---------------------------------------------------------------------------------------------------------------------
# 4. damaged files


def _meta_test_run(root: Path, seed: int, steps: int = 10) -> Path:
    d = root / "mumlp-w16-d1_fashionmnist-28x28x1" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"task": "mumlp-w16-d1_fashionmnist-28x28x1", "seed": seed,
                                                "diverged": False, "diverged_step": None}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 2.0 - 0.1 * s}) + "\n"
                                             for s in range(1, steps + 1)))
    return d


def test_report_skips_a_damaged_summary_and_a_damaged_metrics_line_with_a_warning(tmp_path, capsys):
    run_dir = tmp_path / "meta-test_adam"
    good = _meta_test_run(run_dir, 0)
    lines = (good / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"step": 5, "train_lo\n'  # one torn line in the middle
    (good / "metrics.jsonl").write_text("".join(lines))
    bad = _meta_test_run(run_dir, 1)
    (bad / "summary.json").write_text('{"task": "mumlp-w16-d1_fash')  # truncated
    rc = main(["report", str(run_dir), "--output_dir", str(tmp_path / "rep"), "--sweep_objective_frac", "0.2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and len(err) == 2 and all(e.startswith("warning: ") for e in err), err
    assert str(good / "metrics.jsonl") in err[0] and "line 5" in err[0]
    assert str(bad) in err[1] and "summary.json is damaged" in err[1]
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [r["seeds"] for r in results] == [1]
    # the tail mean of the 9 good lines' last 20% (steps 9, 10): the damaged line is skipped, not fatal
    assert math.isclose(results[0]["final_train_loss_mean"], np.mean([2.0 - 0.9, 2.0 - 1.0]))
    rc, err = run(["report", str(tmp_path / "nothing_here")], capsys)
    one_line(rc, err, "not a directory")
    (tmp_path / "a_file").write_text("x")
    rc, err = run(["report", str(run_dir), "--output_dir", str(tmp_path / "a_file" / "rep")], capsys)
    one_line(rc, err, "report directory", "cannot be created")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_fashion_mnist_files_are_one_line(tmp_path, capsys, damage):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        whole = gzip.compress(b"\0\0\x08\x01" + (400).to_bytes(4, "big") + bytes(range(200)) * 2)
        data = b"\x89garbage" * 10 if damage == "garbage" else whole[:len(whole) // 2]
        (folder / f"{stem}.gz").write_bytes(data)
    rc, err = run(mt(tmp_path / "out", "--fashion_mnist_dir", str(folder)), capsys)
    one_line(rc, err, "is damaged", "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "out").exists()


def test_binary_tiny_shakespeare_is_one_line(tmp_path, capsys):
    binary = tmp_path / "input.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    rc, err = run(mt(tmp_path / "out", "--task", "mutransformer-w8-d1_tinyshakespeare-s8-vbyte",
                     "--tinyshakespeare_path", str(binary), "--d_head", "8"), capsys)
    one_line(rc, err, "is not a UTF-8 text file", str(binary))
    assert not (tmp_path / "out").exists()


def test_a_latest_pointer_that_points_to_itself_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "meta-train_run"
    run_dir.mkdir()
    (run_dir / "latest").symlink_to("latest")
    rc, err = run(["meta-test", "--config", META_TEST, "--optimizer", "mup_small_fc_mlp", "--checkpoint",
                   str(run_dir / "latest"), "--output_dir", str(tmp_path / "out"), *QUIET], capsys)
    one_line(rc, err, "broken symbolic link", "loop")
    rc, err = run(["meta-test", "--config", META_TEST, "--optimizer", "mup_small_fc_mlp", "--checkpoint",
                   str(run_dir), "--output_dir", str(tmp_path / "out"), *QUIET], capsys)
    one_line(rc, err, "no theta file")
    assert not (tmp_path / "out").exists()


def test_corrupt_newest_checkpoint_falls_back_in_one_line_and_says_corrupt(tmp_path, capsys):
    import jax.numpy as jnp

    from mulo.meta.checkpoint import Checkpointer

    ident = {"run": "x", "num_processes": 1}
    state = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4)}
    ckpt = Checkpointer(tmp_path, 5, ident)
    for step in (1, 2, 3):
        ckpt.save(step, {"a": state["a"] + step, "b": state["b"] * step})
    ckpt.close()
    (tmp_path / "3" / "default" / "_METADATA").unlink()  # the "deleted metadata" case
    with pytest.raises(CheckpointError) as err:
        Checkpointer(tmp_path, 5, ident).restore(state, 3)
    assert "corrupt" in str(err.value) and "differ" not in str(err.value)
    capsys.readouterr()
    step, restored = Checkpointer(tmp_path, 5, ident).restore(state)
    warning = capsys.readouterr().err.strip().splitlines()
    assert step == 2 and np.array_equal(restored["b"], np.full(4, 2.0))
    assert len(warning) == 1 and "3 is corrupt" in warning[0] and "resuming from step 2" in warning[0]
    assert [p.name.split("-")[:2] for p in tmp_path.iterdir() if p.name.startswith("corrupt")] == [["corrupt", "3"]]
    for step in (1, 2):
        (tmp_path / str(step) / "default" / "_METADATA").unlink()
    with pytest.raises(CheckpointError, match="no loadable checkpoint .* corrupt"):
        Checkpointer(tmp_path, 5, ident).restore(state)


def test_read_jsonl_skips_damaged_lines_and_reports_them(tmp_path):
    from mulo.io import read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n[1, 2]\n\xff\xfe\n\n{"step": 2}\n{"step": 3, "tr')
    bad: list[int] = []
    assert read_jsonl(path, bad) == [{"step": 1}, {"step": 2}] and bad == [2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------------
# 5. validation holes


@pytest.mark.parametrize("extra, needle", [
    (["--learning_rate", "nan"], "NaN and inf"),
    (["--pes_std", "nan"], "'pes_std'"),
    (["--pes_std", "inf"], "NaN and inf"),
    (["--beta1", "1.5"], "in [0, 1)"),
    (["--beta2", "1"], "in [0, 1)"),
    (["--sweep_objective_frac", "2"], "in (0, 1]"),
    (["--cfg-options", "schedule.warmup_steps=-10"], "'schedule.warmup_steps': expected an integer >= 0"),
    (["--cfg-options", "schedule.peak_value=abc"], "'schedule.peak_value': expected a number > 0"),
    (["--cfg-options", "schedule.peak_valeu=1e-3"], "did you mean 'peak_value'"),
    (["--cfg-options", "sweep_config.method=bayes"], "'sweep_config.method'"),
    (["--seed", str(2**64)], f"at most {INT_MAX}"),
    (["--seed", "2**64"], "'seed'"),
])
def test_validation_holes_are_closed(tmp_path, capsys, extra, needle):
    one_line(*run(qs(tmp_path / "O", *extra), capsys), needle)
    assert not (tmp_path / "O").exists()


def test_a_bad_wandb_mode_in_the_environment_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offlne")
    one_line(*run(qs(tmp_path / "O"), capsys), "WANDB_MODE", "offlne")
    assert not (tmp_path / "O").exists()


def test_a_config_whose_import_fails_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.py"
    cfg.write_text("import nonexistent_module_of_mulo_tests\nseed = 1\n")
    one_line(*run(["meta-train", "--config", str(cfg), "--output_dir", str(tmp_path / "O")], capsys),
             "no module named 'nonexistent_module_of_mulo_tests'", "line 1")


# ---------------------------------------------------------------------------------------------------------------------
# 6. sizes that cannot fit


def test_footprint_counts_copies_meta_parameters_and_batches():
    fp = footprint(model=100, copies=4, batch=10, prefetch=3, theta=7, theta_copies=2, host_batches=1)
    assert (fp.device, fp.host) == (4 * 100 + 7 * 2 + 10 * 3, 10)
    check_fits(fp, "x", cap=(444, 10, False))  # exactly fits
    with pytest.raises(Exception, match=r"x needs at least .* of accelerator memory"):
        check_fits(fp, "x", cap=(443, 10, False))
    with pytest.raises(Exception, match="host memory"):
        check_fits(fp, "x", cap=(444, 9, False))
    with pytest.raises(Exception, match=r"of memory \(model parameters"):  # CPU: device and host share the RAM
        check_fits(fp, "x", cap=(453, 453, True))
    check_fits(fp, "x", cap=(454, 454, True))
    assert isinstance(fp, Footprint) and is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("x"))


def test_capacity_sums_the_accelerators_of_every_process_and_falls_back_to_host_ram():
    from mulo.app.memory import capacity

    class Device:
        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return None if self.limit is None else {"bytes_limit": self.limit, "bytes_in_use": 5}

    device, host, shared = capacity([Device(100), Device(50)], processes=2)
    assert (device, shared) == (300, False) and host > 0
    cpu_device, cpu_host, shared = capacity([Device(None)], processes=1)
    assert shared and cpu_device == cpu_host == host // 2  # CPU: the host RAM of one process
    if Path("/proc/meminfo").is_file():
        kib = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1])
        assert cpu_host == kib * 1024


def test_parameter_bytes_from_shapes_match_the_real_parameters():
    import jax

    from mulo.tasks import get_task

    task = get_task("mumlp-w16-d2_fashionmnist-28x28x1")
    key = jax.random.PRNGKey(0)
    real = sum(np.asarray(x).nbytes for x in jax.tree.leaves(task.init(key)))
    # hand count: 784*16 + 16 (input), 16*16 + 16 (hidden), 16*10 + 10 (readout), float32
    assert tree_bytes(jax.eval_shape(task.init, key)) == real == 4 * (784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10)


@pytest.mark.parametrize("argv", [
    ["--num_tasks", "100000"], ["--local_batch_size", "10000000"], ["--hidden_size", "1000000"],
    ["--task", "mumlp-w1000000-d3_fashionmnist-28x28x1"]])
def test_meta_train_sizes_that_cannot_fit_are_refused_before_compiling(tmp_path, capsys, argv):
    one_line(*run(qs(tmp_path / "O", *argv), capsys), "meta-train needs at least", "GiB")
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("argv", [
    ["coord-check", "--config", COORD, "--widths", "64,10000000"],
    ["meta-test", "--config", META_TEST, "--optimizer", "adam", "--local_batch_size", "10000000"]])
def test_other_sizes_that_cannot_fit_are_refused(tmp_path, capsys, argv):
    one_line(*run([*argv, "--output_dir", str(tmp_path / "O"), *QUIET], capsys), "needs at least")
    assert not (tmp_path / "O").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 7. late failures: data and storage before anything is created


@pytest.mark.parametrize("argv", [
    lambda o: qs(o, "--fashion_mnist_dir", str(o.parent / "missing")),
    lambda o: sweep(o, "--fashion_mnist_dir", str(o.parent / "missing")),
    lambda o: ["coord-check", "--config", COORD, "--output_dir", str(o), "--fashion_mnist_dir",
               str(o.parent / "missing"), *QUIET]])
def test_missing_data_is_found_before_the_run_directory_exists(tmp_path, capsys, argv):
    one_line(*run(argv(tmp_path / "O"), capsys), "Fashion-MNIST not found")
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--cfg-options", "sweep_config.parameters={'lr': [0.1]}"], "not a config key"),
    (["--cfg-options", "sweep_config.method='tpe'"], "needs a trial budget"),
    (["--storage", "notadb:/x"], "'storage'"),
    (["--storage", "sqlite:///{tmp}/a_file/study.db"], "storage's SQLite folder"),
    (["--optimizer", "mup_small_fc_mlp"], "hand-designed"),
])
def test_bad_sweeps_leave_no_sweep_directory(tmp_path, capsys, extra, needle):
    (tmp_path / "a_file").write_text("x")
    one_line(*run(sweep(tmp_path / "O", *[e.replace("{tmp}", str(tmp_path)) for e in extra]), capsys), needle)
    assert not (tmp_path / "O").exists()


def test_missing_data_is_the_only_line_on_stderr_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "src" / "main.py"),
                           *qs(tmp_path / "O", "--fashion_mnist_dir", str(tmp_path / "missing"))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Fashion-MNIST not found" in lines[0], proc.stderr
    assert not (tmp_path / "O").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 8. writes outside the output directory


def test_library_caches_go_to_the_documented_cache_unless_set():
    env = {"MPLCONFIGDIR": "/mine"}
    set_now = runtime.library_dirs(env)
    assert env["MPLCONFIGDIR"] == "/mine" and "MPLCONFIGDIR" not in set_now
    root = str(Path(runtime.CACHE_ROOT).expanduser())
    assert set(set_now) == set(runtime.LIBRARY_DIRS) - {"MPLCONFIGDIR"}
    assert all(v.startswith(root + os.sep) for v in set_now.values())
    assert env["KERAS_HOME"] == os.path.join(root, "keras")


def test_private_tempdir_removes_what_a_library_leaves_in_it():
    import tempfile

    from mulo.io import private_tempdir

    with private_tempdir() as where:
        leftover = Path(tempfile.mkdtemp("tfds"))  # what TFDS's dataset-info lookup does
        assert leftover.parent == where
    assert not where.exists() and tempfile.gettempdir() != str(where)


# ---------------------------------------------------------------------------------------------------------------------
# fuzz: generated bad values for every schema key


LONG = "9" * 5000
_BAD_ANY = ["", " ", "\u00e9", "\u2603" * 3, LONG]
_BAD = {
    "int": ["nan", "inf", "1.5", "abc", "0x10", "1e3", "2**64", str(2**31), str(10**30), "-" + str(10**30)],
    "float": ["nan", "-nan", "inf", "-inf", "1e400", "abc", "1,2", "0x1p3z", "NaN"],
    "bool": ["maybe", "2", "truee", "nan", "-1", "yes please"],
    "list[int]": [",", "1,x", "nan", "1,1.5", "1," + str(2**40)],
    "list[float]": [",", "1,x", "nan,1", "1,inf"],
    "list[str]": [",", " , "],
    "dict": ["abc", "[1, 2]", "1", "{[]: 1}", "{'a': (", "None"],
}


def _bad_values(key: str) -> list[str]:
    spec = SCHEMA[key]
    values = list(_BAD.get(spec.type, []))
    if spec.type in ("int", "float", "list[int]", "list[float]"):
        values += _BAD_ANY
        if spec.min is not None:
            values.append(str(-1 if spec.min >= 0 else spec.min - 1))
            if spec.min > 0 and spec.type in ("int", "float"):
                values.append("0")
        if spec.max is not None:
            values.append(str(spec.max + 1))
    elif spec.type == "bool":
        values += _BAD_ANY
    elif spec.type == "dict":
        values += _BAD_ANY
        if spec.fields:
            values += ["{'not_an_entry': 1}"] + [f"{{'{name}': 'abc'}}" for name, f in spec.fields.items()
                                                  if f.type in ("int", "float")]
    elif spec.choices:
        values += [v for v in _BAD_ANY + [str(spec.choices[0]).upper() + "x", "none", "nonee"]
                   if v not in spec.choices]
    else:  # free strings: only what no string key accepts
        values += [LONG, "a\x00b", "\udcff"]
    if spec.optional:
        values = [v for v in values if v.strip().lower() not in ("none", "null")]
    return values


CASES = [(key, value) for key in SCHEMA for value in _bad_values(key)]


def test_the_fuzz_covers_every_key_with_a_few_hundred_values():
    assert {k for k, _ in CASES} == set(SCHEMA) and len(CASES) >= 300


SUBCOMMANDS = ["meta-train", "meta-test", "sweep", "coord-check", "report"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_bad_value_of_every_key_is_one_line_on_every_subcommand(tmp_path, capsys, monkeypatch, command):
    """meta-train gets every case, the other subcommands every 4th (each a different quarter). A value that got
    past the checks would reach the command's handler: here that fails at once instead of running it."""
    import mulo.app.cli as cli

    def accepted(name):
        raise AssertionError(f"{name} was started: a bad value was accepted")

    monkeypatch.setattr(cli, "_handler", accepted)
    head = [command, "run_dir"] if command == "report" else [command, "--config", QUICKSTART]
    out = tmp_path / "O"
    offset = SUBCOMMANDS.index(command) - 1
    for key, value in CASES if offset < 0 else CASES[offset::4]:
        argv = [*head, f"--{key}={value}", "--output_dir", str(out)] if key != "output_dir" else \
            [*head, f"--{key}={value}"]
        rc, err = run(argv, capsys)
        assert rc == 2, (key, value, err)
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], (key, value, err)
        assert key in err[0] or "unknown" in err[0], (key, value, err[0])
        assert len(err[0]) < 600, (key, value, err[0])  # over-long values are shown cut
    assert not out.exists()


def test_nested_entries_are_fuzzed_through_the_same_schema(tmp_path, capsys):
    n = 0
    for key in ("schedule", "sweep_config"):
        for entry, spec in SCHEMA[key].fields.items():
            for value in ["abc", "-1", "nan", "1e400", "[1]", "{'x': 1}", LONG] if spec.type != "dict" else \
                    ["abc", "1", "[1]"]:
                if spec.type == "str" and value in ("abc", "nan") and not spec.choices:
                    continue  # a free string entry accepts any (short) string
                argv = qs(tmp_path / "O", "--cfg-options", f"{key}.{entry}={value}")
                rc, err = run(argv, capsys)
                one_line(rc, err, f"'{key}.{entry}'")
                n += 1
    assert n >= 30 and not (tmp_path / "O").exists()
