"""The meta-training outer loop, outer optimizer and checkpoints (src/mulo/meta/train.py, outer.py, checkpoint.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.app.config import load_config
from mulo.errors import CheckpointError
from mulo.io import read_jsonl
from mulo.meta import outer
from mulo.meta.checkpoint import Checkpointer
from mulo.app.sections import meta_trainer
from tests.meta.test_toys import TOY_META_CONFIG, QuadraticTask, ToyLO, train_flat

REPO = Path(__file__).resolve().parents[2]

BASE = dict(TOY_META_CONFIG, num_tasks=3)


def _cfg(**kw):
    return load_config(None, cli={**BASE, **kw})


def _tasks():
    return [QuadraticTask(dim=3, noise=0.5, init_noise=0.3, name="quad-a"),
            QuadraticTask(dim=2, noise=0.2, init_noise=0.3, name="quad-b")]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_interrupt_and_resume_is_bit_exact(tmp_path):
    cfg = _cfg(num_outer_steps=6)
    full = train_flat(cfg, _tasks(), ToyLO(), tmp_path / "full", handle_signals=False)
    assert full["interrupted"] is None and Path(full["theta_file"]).exists()

    part = train_flat(cfg, _tasks(), ToyLO(), tmp_path / "resumed", stop_after=3, handle_signals=False)
    assert part["interrupted"] == "stop_after" and part["step"] == 3 and part["theta_file"] is None
    with pytest.raises(CheckpointError, match="auto_resume"):  # never silently restarts over a run's checkpoints
        train_flat(cfg, _tasks(), ToyLO(), tmp_path / "resumed", handle_signals=False)
    rest = train_flat(cfg.replace(auto_resume=True), _tasks(), ToyLO(), tmp_path / "resumed", handle_signals=False)
    assert rest["step"] == 6
    for a, b in zip(_leaves(full["state"]), _leaves(rest["state"])):  # θ, Adam, inner states, accumulators
        np.testing.assert_array_equal(a, b)
    # θ moved, metrics are per task and were not duplicated by the resume
    assert not np.array_equal(_leaves(full["state"].theta)[0], _leaves(ToyLO().init_theta(None))[0])
    recs = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert {"meta_loss/quad-a", "meta_loss/quad-b", "meta_loss", "lr", "skipped_steps"} <= set(recs[0])
    full_recs = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["meta_loss/quad-b"] for r in recs] == [r["meta_loss/quad-b"] for r in full_recs]
    # retention: checkpoints_to_keep = 2, and the latest pointer
    ckpt = tmp_path / "resumed" / "checkpoints"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [4, 6]
    assert (ckpt / "latest").read_text().strip() == "6"
    assert sorted(p.name for p in (tmp_path / "resumed" / "theta").iterdir())[0].startswith("theta_step")


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error_and_keeps_old_ones(tmp_path, capsys):
    cfg = _cfg(num_outer_steps=4, checkpoints_to_keep=3)
    train_flat(cfg, _tasks()[:1], ToyLO(), tmp_path, handle_signals=False)
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match="does not match this run"):
        train_flat(cfg.replace(auto_resume=True, num_tasks=5), _tasks()[:1], ToyLO(), tmp_path, handle_signals=False)
    for f in (ckpt / "4").rglob("*"):  # corrupt every data file of the newest checkpoint
        if f.is_file() and f.stat().st_size > 0 and "METADATA" not in f.name and f.suffix != ".txt":
            f.write_bytes(b"garbage")
    template = meta_trainer(cfg, _tasks()[:1], ToyLO()).init_state()
    identity = meta_trainer(cfg, _tasks()[:1], ToyLO()).identity()
    step, state = Checkpointer(ckpt, 3, identity).restore(template, 2)
    assert step == 2 and int(state.step) == 2
    with pytest.raises(CheckpointError, match="corrupt"):  # asked for by step: no fallback
        Checkpointer(ckpt, 3, meta_trainer(cfg, _tasks()[:1], ToyLO()).identity()).restore(template, 4)
    # --auto_resume falls back to the newest loadable checkpoint, says so in one line, keeps the corrupt one aside
    capsys.readouterr()
    result = train_flat(cfg.replace(auto_resume=True, num_outer_steps=6), _tasks()[:1], ToyLO(), tmp_path,
                   handle_signals=False)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "resuming from step 2" in warning[0] and "/4 is corrupt" in warning[0]
    assert result["step"] == 6 and [p.name[:10] for p in ckpt.iterdir() if p.name.startswith("corrupt")] == \
        ["corrupt-4-"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]  # 3-4 redone once


def test_nonfinite_meta_gradient_is_skipped_and_counted(tmp_path):
    cfg = _cfg(num_outer_steps=3)
    trainer = meta_trainer(cfg, _tasks()[:1], ToyLO())
    est = trainer.estimators[0]
    real = est.estimate

    def poisoned(theta, state, key, batches):
        grad, new, metrics = real(theta, state, key, batches)
        return jax.tree.map(lambda g: g.at[...].set(jnp.nan) if g.ndim == 0 else g, grad), new, metrics

    state = trainer.init_state()
    streams = trainer.streams(0)
    try:
        s1, m1 = trainer.step(state, streams)
        object.__setattr__(est, "estimate", poisoned)
        s2, m2 = trainer.step(s1, streams)
    finally:
        for it in streams:
            it.close()
    assert m1["nonfinite"] == 0 and m1["skipped_steps"] == 0
    assert m2["nonfinite"] == 1 and m2["skipped_steps"] == 1 and int(s2.skipped) == 1 and int(s2.step) == 2
    for a, b in zip(_leaves((s1.theta, s1.opt_state)), _leaves((s2.theta, s2.opt_state))):
        np.testing.assert_array_equal(a, b)  # θ and Adam untouched, nothing zeroed into the moments


def test_meta_grad_clip_is_applied_before_adam():
    grads = [{"w": jnp.array([100.0, 0.0])}, {"w": jnp.array([0.1, 0.1])}]
    theta = {"w": jnp.zeros(2)}

    def run(tx):
        state, th = tx.init(theta), theta
        for g in grads:
            upd, state = tx.update(g, state, th)
            th = optax.apply_updates(th, upd)
        return np.asarray(th["w"])

    ours, _ = outer.build_outer_optimizer({}, 1e-2, 0.0, meta_grad_clip=1.0)
    clip_first = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    clip_after = optax.chain(optax.adam(1e-2), optax.clip_by_global_norm(1.0))  # the reference's no-op
    np.testing.assert_allclose(run(ours), run(clip_first), rtol=1e-6)
    assert np.abs(run(clip_first) - run(clip_after)).max() > 1e-4
    np.testing.assert_allclose(run(clip_after), run(optax.adam(1e-2)), rtol=1e-6)


def test_outer_schedule_and_weight_decay_mask():
    sched = dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=110, end_value=0.1, exponent=1.0)
    lr = outer.lr_schedule(sched, 1e-3)
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine (decay includes warmup)
    assert float(lr(110)) == pytest.approx(0.1) and float(lr(500)) == pytest.approx(0.1)
    tx, _ = outer.build_outer_optimizer(sched, 1e-3, 0.5, None)
    theta = {"nn": {"w0": jnp.ones(2)}, "momentum_decays": jnp.ones(3)}
    state = tx.init(theta)
    zero = jax.tree.map(jnp.zeros_like, theta)
    for _ in range(3):
        upd, state = tx.update(zero, state, theta)
    assert float(jnp.abs(upd["nn"]["w0"]).max()) > 0  # weight decay on MLP weights
    assert float(jnp.abs(upd["momentum_decays"]).max()) == 0  # none on decay rates


SIGTERM_SCRIPT = r"""
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from mulo.app.config import load_config
from tests.meta.test_toys import QuadraticTask, ToyLO, train_flat
cfg = load_config(None, cli={cli!r})
def ready(step, metrics):
    if step == 2:
        Path({flag!r}).write_text("ready")
res = train_flat(cfg, [QuadraticTask(dim=3, noise=0.5)], ToyLO(), {run!r}, on_step=ready)
print("RESULT", res["interrupted"], res["step"])
"""


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    cli = {**BASE, "num_outer_steps": 100000, "save_iter": 1000}
    flag, run_dir = tmp_path / "ready", tmp_path / "run"
    script = SIGTERM_SCRIPT.format(repo=str(REPO), cli=cli, flag=str(flag), run=str(run_dir))
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(tmp_path))
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "meta-training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    _, _, step = out.strip().splitlines()[-1].split()
    assert out.strip().splitlines()[-1].startswith("RESULT SIGTERM")
    cfg = load_config(None, cli=cli)
    trainer = meta_trainer(cfg, [QuadraticTask(dim=3, noise=0.5)], ToyLO())
    ckpt = Checkpointer(run_dir / "checkpoints", 2, trainer.identity())
    assert ckpt.latest_step() == int(step) >= 2
    got, state = ckpt.restore(trainer.init_state())
    assert int(state.step) == got == int(step)
    assert json.loads((run_dir / "checkpoints" / "identity.json").read_text())["num_tasks"] == 3


def test_meta_train_configs_load_and_schedules_match_their_names():
    root = REPO / "config" / "meta_train"
    files = sorted(root.rglob("*.py"))
    assert {"meta_train_base.py", "quickstart.py", "mulo_s.py", "mulo_m.py"} <= {f.name for f in files}
    for f in files:
        cfg = load_config(f)
        assert cfg.trunc_length % cfg.steps_per_jit == 0
    for f in (root / "schedules").glob("*.py"):
        cfg = load_config(f)
        fields = dict(part.split("=") for part in f.stem.split("_") if "=" in part)
        assert cfg.schedule["peak_value"] == pytest.approx(float(fields["mxlr"]))
        assert cfg.schedule["end_value"] == pytest.approx(float(fields["mnlr"]), rel=0.15)  # 3.33e-4 for "3e-4"
        assert cfg.num_outer_steps == int(fields["it"]) == cfg.schedule["decay_steps"] + 100
        assert cfg.meta_grad_clip == 1.0


def test_the_identity_of_a_run_written_by_the_flat_config_trainer_is_unchanged(tmp_path):
    """identity.json is built from the built objects (LO, estimator, truncation) and the run-level settings, yet its
    bytes are those today's runs have: the kept general μLO run (written before the config sections) resumes."""
    from mulo.io import atomic_write_json
    from mulo.app.sections import build
    from mulo.meta.settings import TrainSettings, identity

    run = next((REPO / "runs" / "cpu_mulo_general").glob("meta-train_*"))
    cfg = load_config(run / "config.py")
    estimator, truncation = build(cfg, "estimator"), build(cfg, "truncation", cfg.num_inner_steps)
    assert estimator.hparams.num_pairs == cfg.num_tasks == 4 and truncation.max_length == cfg.num_inner_steps
    written = atomic_write_json(tmp_path / "identity.json", identity(TrainSettings.from_config(cfg), build(cfg, "lo"),
                                                                     estimator, truncation))
    assert written.read_bytes() == (run / "checkpoints" / "identity.json").read_bytes()


def test_warm_start_begins_at_init_theta_and_a_resume_continues_its_checkpoint(tmp_path):
    from mulo.errors import ConfigError
    from mulo.meta.settings import theta_digest
    from mulo.meta.trainer import MetaTrainer

    theta0 = {"log_lr": jnp.asarray(np.log(0.05), jnp.float32), "bias": jnp.asarray([0.1, -0.2], jnp.float32)}
    cfg = _cfg(num_outer_steps=4)
    trainer = meta_trainer(cfg, _tasks(), ToyLO())
    cold = trainer.identity()
    warm = MetaTrainer(trainer.settings, _tasks(), ToyLO(), trainer.estimator, trainer.truncation, init_theta=theta0)
    for a, b in zip(_leaves(warm.init_state().theta), _leaves(theta0)):  # starts exactly at θ0
        np.testing.assert_array_equal(a, b)
    assert "init_theta_sha256" not in cold  # a cold run's identity is as before (old runs resume)
    assert warm.identity() == {**cold, "init_theta_sha256": theta_digest(theta0)}
    assert theta_digest(theta0) != theta_digest({**theta0, "bias": jnp.asarray([0.1, -0.25], jnp.float32)})
    with pytest.raises(ConfigError, match="does not fit learned optimizer"):
        MetaTrainer(trainer.settings, _tasks(), ToyLO(), trainer.estimator, trainer.truncation,
                    init_theta={"log_lr": 0.0, "bias": jnp.zeros((3,))})

    full = train_flat(cfg, _tasks(), ToyLO(), tmp_path / "full", handle_signals=False, init_theta=theta0)
    cold_run = train_flat(cfg, _tasks(), ToyLO(), tmp_path / "cold", handle_signals=False)
    assert not np.array_equal(_leaves(full["state"].theta)[1], _leaves(cold_run["state"].theta)[1])
    train_flat(cfg, _tasks(), ToyLO(), tmp_path / "part", stop_after=2, handle_signals=False, init_theta=theta0)
    resume = cfg.replace(auto_resume=True)
    other = {**theta0, "log_lr": jnp.asarray(np.log(0.2), jnp.float32)}
    with pytest.raises(CheckpointError, match="init_theta_sha256"):  # not continued from another start
        train_flat(resume, _tasks(), ToyLO(), tmp_path / "part", handle_signals=False, init_theta=other)
    rest = train_flat(resume, _tasks(), ToyLO(), tmp_path / "part", handle_signals=False, init_theta=theta0)
    for a, b in zip(_leaves(full["state"]), _leaves(rest["state"])):
        np.testing.assert_array_equal(a, b)
