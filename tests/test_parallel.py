"""Every device, every host (src/mulo/parallel.py): sharded meta-training equals the single-device run, resumes
bit-exactly, runs as 2 processes (jax.distributed on localhost with gloo, and under mpirun) with one run directory
written by process 0, and meta-test spreads its seeds over devices with unchanged per-seed results.

The multi-device cases run in subprocesses (tests/parallel_cases.py): the device count is fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mulo.app.config import load_config
from mulo.errors import CheckpointError, ConfigError
from mulo.meta.checkpoint import Checkpointer
from mulo.parallel import Placement, distributed_kwargs, launch_kind

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "parallel_cases.py"
VENV_BIN = Path(sys.executable).parent

# Sharding changes how XLA:CPU vectorises the per-slot arithmetic (N/devices slots per program instead of N), so
# float32 results are equal to rounding, not bit for bit: the meta-losses agree to ~2e-7 (measured). The PES
# meta-gradient is built from differences ℓ⁺ − ℓ⁻ of nearly equal losses (σ = 0.01), so that rounding is ~0.2% of
# it (measured 1.6e-3 relative in its norm, and 1.5-1.8e-3 in how far θ moved over 4 steps): stated tolerance 1e-2.
# A wrong shard of the data, of the keys or of the pairs would give O(1) differences.
META_LOSS_TOL = 1e-5
REL_TOL = 1e-2

QS = ["meta-train", "--config", "config/meta_train/quickstart.py", "--task", "mumlp-w8-d1_fashionmnist-28x28x1",
      "--num_tasks", "2", "--num_outer_steps", "2", "--trunc_length", "4", "--steps_per_jit", "2",
      "--local_batch_size", "8", "--hidden_size", "4", "--save_iter", "1", "--progress", "false"]


def _env(devices: int = 1, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="disabled", **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "SLURM_STEP_ID",
                 "JAX_COORDINATOR_ADDRESS"):
        env.pop(name, None)
    return env


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


# ---- sharded meta-training ------------------------------------------------------------------------------------------


def test_sharded_outer_steps_match_single_device_and_resume_bit_exactly(tmp_path):
    proc = subprocess.run([sys.executable, str(CASES), "sharded-vs-single", str(tmp_path)], env=_env(4), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _result(proc.stdout)
    assert r["steps"] == 4
    for name in ("pairs4", "pairs2x2"):
        assert r["meta_loss"][name] <= META_LOSS_TOL, r
        assert r["theta_rel"][name] <= REL_TOL, r  # ||θ_sharded − θ_single|| / ||θ_single − θ_0||
        assert r["grad_norm_rel"][name] <= REL_TOL, r
        assert r["checkpoint"][name] == pytest.approx(r["state"][name]), r  # the checkpoint is the state
    assert r["checkpoint_vs_state"] == 0.0  # a restored checkpoint is the final state, bit for bit
    assert r["resume_exact"] and r["resumed_meta_loss_exact"], r  # interrupted + --auto_resume, sharded


def test_meta_train_cli_on_two_devices_and_pairs_that_do_not_split(tmp_path):
    """The issue's reproduction (2 forced host devices crashed the first outer step), and an uneven split."""
    bad = subprocess.run([sys.executable, "src/main.py", *QS, "--num_tasks", "3", "--output_dir", str(tmp_path)],
                         env=_env(2), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "num_tasks=3" in lines[0] and "2 device" in lines[0], bad.stderr
    assert "Traceback" not in bad.stderr and not any(tmp_path.iterdir())
    ok = subprocess.run([sys.executable, "src/main.py", *QS, "--output_dir", str(tmp_path)], env=_env(2), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    (run,) = _run_dirs(tmp_path)
    assert (run / "theta_final.msgpack").is_file() and (run / "checkpoints" / "latest").read_text().strip() == "2"


# ---- several processes ----------------------------------------------------------------------------------------------


def _theta_of_one_process(tmp_path: Path) -> list:
    proc = subprocess.run([sys.executable, str(CASES), "meta-train", str(tmp_path), *QS, "--output_dir",
                           str(tmp_path / "one")], env=_env(1), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _result(proc.stdout)
    assert r["code"] == 0 and r["processes"] == 1
    return r["theta"]


def _assert_same_theta(a: list, b: list) -> None:
    """Equal to the tolerance above, relative to the size of θ (2 steps of a 4-pair run move it little)."""
    assert len(a) == len(b)
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y)) ** 2)) for x, y in zip(a, b))
    den = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in a)
    assert np.sqrt(num / den) <= REL_TOL * 1e-1


def _assert_one_run_dir_by_process_0(out: Path, results: list[dict]) -> None:
    assert sorted(r["process"] for r in results) == [0, 1] and all(r["processes"] == 2 for r in results)
    assert all(r["code"] == 0 for r in results), results
    assert [r["theta"] is not None for r in sorted(results, key=lambda r: r["process"])] == [True, False]
    dirs = _run_dirs(out)
    assert len(dirs) == 1, dirs
    run = dirs[0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # one writer: no step twice
    assert sorted(p.name for p in (run / "theta").iterdir()) == ["theta_step1.msgpack", "theta_step2.msgpack"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "2"


def test_two_processes_on_localhost_match_one_process(tmp_path):
    port = _free_port()
    out = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, str(CASES), "meta-train", str(tmp_path), *QS, "--output_dir", str(out),
                               "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                               "--process_id", str(i)], env=_env(1), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    results = [_result(o) for o, _ in outs]
    _assert_one_run_dir_by_process_0(out, results)
    theta0 = next(r["theta"] for r in results if r["process"] == 0)
    _assert_same_theta(_theta_of_one_process(tmp_path), theta0)


def test_mpirun_two_processes(tmp_path):
    mpirun = shutil.which("mpirun", path=str(VENV_BIN)) or shutil.which("mpirun")
    assert mpirun, "mpirun (the pinned openmpi package) is missing"
    out = tmp_path / "mpi"
    proc = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, str(CASES),
                           "meta-train", str(tmp_path), *QS, "--output_dir", str(out)], env=_env(1), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    _assert_one_run_dir_by_process_0(out, results)


# ---- meta-test over devices -----------------------------------------------------------------------------------------


def test_meta_test_seeds_on_four_devices_and_two_processes_match_one_device(tmp_path):
    args = [sys.executable, "src/main.py", "meta-test", "--config", "config/meta_test/cpu_fashionmnist.py",
            "--optimizer", "adam", "--learning_rate", "0.01", "--task", "mumlp-w8-d1_fashionmnist-28x28x1",
            "--num_runs", "4", "--num_inner_steps", "12", "--test_interval", "6", "--local_batch_size", "16",
            "--progress", "false"]
    runs = {}
    for devices in (1, 4):
        out = tmp_path / f"d{devices}"
        proc = subprocess.run(args + ["--output_dir", str(out)], env=_env(devices), cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert devices == 1 or proc.stdout.count("compiling") == 4, proc.stdout  # one loop per device
        (run,) = _run_dirs(out)
        runs[devices] = run
    # two processes (jax.distributed on localhost): each runs half of the seeds, process 0 writes the manifest
    port, out = _free_port(), tmp_path / "p2"
    procs = [subprocess.Popen(args + ["--output_dir", str(out), "--coordinator_address", f"127.0.0.1:{port}",
                                      "--num_processes", "2", "--process_id", str(i)], env=_env(1), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert all(o.count("final train loss") == 2 for o, _ in outs), outs  # seeds 0, 2 and 1, 3
    (runs["2 processes"],) = _run_dirs(out)
    for seed in range(4):
        per = {}
        for devices, run in runs.items():
            seed_dir = next(run.glob(f"*/seed{seed}"))
            summary = json.loads((seed_dir / "summary.json").read_text())
            losses = [r["train_loss"] for r in map(json.loads, (seed_dir / "metrics.jsonl").read_text().splitlines())
                      if "train_loss" in r]
            per[devices] = (summary["final_train_loss"], summary.get("test_loss"), losses)
        assert per[1] == per[4] == per["2 processes"], (seed, per)  # bit for bit: the same program and device kind
    for run in (runs[4], runs["2 processes"]):
        manifest = json.loads((run / "meta_test.json").read_text())
        assert [r["seed"] for r in manifest["runs"]] == [0, 1, 2, 3]


# ---- in-process pieces ----------------------------------------------------------------------------------------------


def _cfg(**kw):
    return load_config(None, cli=kw)


def test_launch_detection_and_initialize_arguments():
    assert launch_kind({}) is None
    assert launch_kind({"OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert launch_kind({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"
    assert launch_kind({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == "slurm"
    assert launch_kind({"SLURM_NTASKS": "8"}) is None  # inside sbatch but not under srun: one process
    assert launch_kind({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == "explicit"

    assert distributed_kwargs(_cfg(), {}) is None
    assert distributed_kwargs(_cfg(), {"OMPI_COMM_WORLD_SIZE": "2"}) == {"cluster_detection_method": "mpi4py"}
    assert distributed_kwargs(_cfg(), {"SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}) == {}
    assert distributed_kwargs(_cfg(distributed="off"), {"OMPI_COMM_WORLD_SIZE": "2"}) is None
    assert distributed_kwargs(_cfg(distributed="on"), {}) == {}
    explicit = _cfg(coordinator_address="127.0.0.1:5000", num_processes=2, process_id=1)
    assert distributed_kwargs(explicit, {}) == {"coordinator_address": "127.0.0.1:5000", "num_processes": 2,
                                                "process_id": 1}
    assert distributed_kwargs(_cfg(cluster_detection_method="slurm"), {"OMPI_COMM_WORLD_SIZE": "2"}) == {
        "cluster_detection_method": "slurm"}


def test_placement_on_one_device_and_its_errors():
    import jax

    p = Placement.create(devices=jax.devices()[:1])
    assert (p.pair_shards, p.batch_shards) == (1, 1)
    assert p.local_block((10, 4, 8)) == (slice(0, 10), slice(0, 4), slice(0, 8))
    p.check(num_tasks=3, batch_size=5)  # one device splits anything
    with pytest.raises(ConfigError, match="data_parallel=2 must divide"):
        Placement.create(data_parallel=2)


def test_resume_with_another_process_count_says_so(tmp_path):
    ident = {"task": ["t"], "num_processes": 2}
    saver = Checkpointer(tmp_path / "ck", 2, ident)
    saver.save(1, {"x": np.ones(3, np.float32)})
    saver.close()
    other = Checkpointer(tmp_path / "ck", 2, {**ident, "num_processes": 1})
    with pytest.raises(CheckpointError, match="written by 2 process.*this run has 1"):
        other.check_identity()
    other.close()


# ---- sweeps over devices --------------------------------------------------------------------------------------------


def test_sweep_runs_one_trial_per_device_with_the_single_device_objectives(tmp_path):
    from tests.app.commands.test_sweep import sweep_cmd, trials_of, write_config

    from mulo.app.sweep_study import storage_url

    cfg_path = write_config(tmp_path, steps=12, lrs=[1e-4, 0.03])
    values = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        proc = subprocess.run(sweep_cmd(cfg_path, out), env=_env(devices), cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run,) = _run_dirs(out)
        trials = trials_of(storage_url(load_config(str(cfg_path)), run))
        assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials), trials
        values[devices] = sorted((t.params["learning_rate"], t.value) for t in trials)
    assert values[1] == values[2]  # each trial computes what it computes alone
