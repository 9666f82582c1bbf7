"""Sweeps on a real tiny task (muMLP width 16 on Fashion-MNIST): grid search finds the known-best lr, a killed sweep
resumes without repeating finished trials, two workers share one SQLite study, diverged trials are recorded."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mulo.app.config import load_config
from mulo.errors import ConfigError
from mulo.app.commands.sweep import run_sweep
from mulo.app.sweep_space import parse_sweep_config
from mulo.app.sweep_study import open_study, storage_url
from mulo.io import read_jsonl

REPO = Path(__file__).resolve().parents[3]
TASK = "mumlp-w16-d2_fashionmnist-28x28x1"
# 0.03 is the known-best lr of this grid: 1e-5 and 1e-4 barely move in 40 steps, 30 is far too large for Adam.
LRS = [1e-5, 1e-4, 0.03, 30.0]
BEST = 0.03


def write_config(tmp: Path, steps: int = 40, lrs=LRS, optimizer: str = "muadam", name: str = "cfg.py") -> Path:
    path = tmp / name
    path.write_text(f"""
_base_ = [{str(REPO / 'config' / 'sweeps' / 'sweeps_base.py')!r}]
optimizer = {optimizer!r}
task = [{TASK!r}]
local_batch_size = 32
num_inner_steps = {steps}
test_interval = {steps}
skip_test = True
test_steps_per_jit = 20
max_eval_examples = 100
eval_batch_size = 100
progress = False
wandb_mode = "disabled"
sweep_config = dict(method="grid", parameters=dict(learning_rate={list(lrs)!r}))
""")
    return path


def env():
    return {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def sweep_cmd(cfg_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "src" / "main.py"), "sweep", "--config", str(cfg_path), "--output_dir",
            str(out), "--study_name", "s", *extra]


def trials_of(url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)


def test_killed_sweep_resumes_without_repeating_and_finds_the_best_lr(tmp_path):
    from optuna.trial import TrialState

    cfg_path = write_config(tmp_path, steps=60)
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(cfg_path, out), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_dir = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for one finished trial and one running in the worker
            dbs = list(out.glob("*/study.db"))
            if dbs:
                run_dir = dbs[0].parent
                try:
                    trials = trials_of(f"sqlite:///{dbs[0]}")
                except Exception:
                    trials = []
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                running = [t for t in trials if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
                if done and running:
                    break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    url = f"sqlite:///{run_dir / 'study.db'}"
    before = trials_of(url)
    finished_before = {t.number: t.params["learning_rate"] for t in before if t.state == TrialState.COMPLETE}
    killed = [t.number for t in before if t.state == TrialState.RUNNING]
    assert finished_before and killed

    # joining the study with other training settings is refused (objectives would not be comparable)
    with pytest.raises(ConfigError, match="other settings.*num_inner_steps"):
        run_sweep(load_config(cfg_path, cli={"num_inner_steps": 40}), run_dir, study_name="s")
    # restart (same run directory and study): the grid decides what is left
    cfg = load_config(cfg_path, cli={"output_dir": str(out), "study_name": "s"})
    best = run_sweep(cfg, run_dir, base_config=str(cfg_path), study_name="s")
    after = trials_of(url)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    lrs = sorted(t.params["learning_rate"] for t in complete)
    assert lrs == sorted(LRS)  # every grid point once: no finished trial repeated, the killed one re-run
    for number, lr in finished_before.items():
        assert [t.number for t in complete if t.params["learning_rate"] == lr] == [number]
    assert all(t.state == TrialState.FAIL for t in after if t.number in killed)

    # the best lr is the known one, and its objective is the mean of the last 5% of its logged train losses
    assert best["params"] == {"learning_rate": BEST}
    best_trial = min(complete, key=lambda t: t.value)
    records = read_jsonl(run_dir / "trials" / f"trial{best_trial.number:04d}" / "metrics.jsonl")
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 60
    assert best_trial.value == pytest.approx(sum(losses[-3:]) / 3, rel=1e-6)
    # the saved best configuration is a loadable config with the chosen lr
    best_cfg = load_config(run_dir / "best_config.py")
    assert best_cfg.learning_rate == BEST and best_cfg.optimizer == "muadam" and best_cfg.task == [TASK]

    # a finished sweep run again does nothing new
    n = len(after)
    run_sweep(cfg, run_dir, base_config=str(cfg_path), study_name="s")
    assert len(trials_of(url)) == n


def test_two_workers_share_one_sqlite_study(tmp_path):
    from optuna.trial import TrialState

    lrs = [1e-4, 1e-3, 0.01, 0.1]
    cfg_path = write_config(tmp_path, steps=60, lrs=lrs)
    out = tmp_path / "out"
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    procs = [subprocess.Popen(sweep_cmd(cfg_path, out, "--storage", url), cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = trials_of(url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["learning_rate"] for t in complete) == sorted(lrs)  # each point exactly once
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both workers ran trials of the same study
    assert not list(out.glob("*/study.db"))  # the given storage was used, not the default


def test_diverged_and_failed_trials_are_recorded(tmp_path):
    from optuna.trial import TrialState

    cfg_path = write_config(tmp_path, steps=20, lrs=[0.1, 1e38], optimizer="sgd")
    cfg = load_config(cfg_path, cli={"output_dir": str(tmp_path)})
    run_dir = tmp_path / "run"
    best = run_sweep(cfg, run_dir, study_name="s")
    trials = trials_of(storage_url(cfg, run_dir))
    by_lr = {t.params["learning_rate"]: t for t in trials}
    assert by_lr[1e38].state == TrialState.COMPLETE and by_lr[1e38].value == math.inf
    assert by_lr[1e38].user_attrs["diverged"] is True
    assert by_lr[0.1].user_attrs["diverged"] is False and math.isfinite(by_lr[0.1].value)
    assert best["params"] == {"learning_rate": 0.1}
    rows = {r["params"]["learning_rate"]: r for r in __import__("json").loads((run_dir / "trials.json").read_text())}
    assert rows[1e38]["diverged"] is True


def test_bad_sweep_configs_are_one_line_errors(tmp_path):
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(ConfigError, match="not a config key"):
        parse_sweep_config(cfg.replace(sweep_config={"method": "grid", "parameters": {"lr": [1.0]}}))
    with pytest.raises(ConfigError, match="method"):
        parse_sweep_config(cfg.replace(sweep_config={"method": "bayes", "parameters": {"learning_rate": [1.0]}}))
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_sweep_config(cfg.replace(sweep_config={"method": "grid", "parameters": {"learning_rate": [-1.0]}}))
    with pytest.raises(ConfigError, match="budget"):
        run_sweep(cfg.replace(sweep_config={"method": "tpe", "parameters": {
            "learning_rate": {"low": 1e-4, "high": 1.0, "log": True}}}), tmp_path / "r")
    method, space = parse_sweep_config(load_config(REPO / "config" / "sweeps" / "sweep_muadam.py"))
    assert method == "grid" and len(space["learning_rate"]) * 5 ** 3 == 500
    with pytest.raises(ConfigError, match="storage"):
        open_study("notadb://x", "s", None, attempts=1)


@pytest.mark.parametrize("recipe", ["sweep_muadam.py", "sweep_muadam_fashionmnist.py", "sweep_adam.py",
                                    "sweep_adamw.py", "sweep_adamw_tpe.py"])
def test_sweep_recipes_parse(recipe):
    cfg = load_config(REPO / "config" / "sweeps" / recipe)
    method, space = parse_sweep_config(cfg)
    assert cfg.optimizer in ("muadam", "adam", "adamw") and len(cfg.task) == 1
    assert method == "grid" or cfg.sweep_trials
