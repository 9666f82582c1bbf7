"""``python src/main.py meta-train`` end to end: a shortened quickstart through the CLI with the real muMLP task,
Fashion-MNIST and the real learned optimizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mulo.io import read_jsonl
from mulo.optimizers import load_theta

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd):
    env = {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "meta-train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_shortened_quickstart_through_the_cli(tmp_path):
    args = ["--config", str(ROOT / "config/meta_train/quickstart.py"), "--output_dir", str(tmp_path),
            "--task", "mumlp-w16-d3_fashionmnist-28x28x1",
            "--num_outer_steps", "3", "--num_tasks", "2", "--trunc_length", "2", "--steps_per_jit", "2",
            "--local_batch_size", "8", "--save_iter", "2", "--progress", "false",
            "--hidden_size", "4"]  # a small LO MLP: the fused LO's compile time grows with hidden_size²
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert 0 < recs[-1]["meta_loss/mumlp-w16-d3_fashionmnist-28x28x1"] < 1.5 * 2.31  # normalised cross-entropy
    lo, theta, extra = load_theta(run / "theta_final.msgpack")
    assert lo.name == "mup_small_fc_mlp" and lo.hparams.step_mult == 0.01 and lo.hparams.hidden_size == 4
    assert extra["step"] == 3
    assert (run / "theta" / "theta_step2.msgpack").is_file() and (run / "checkpoints" / "latest").is_file()

    # a run directory with checkpoints is never restarted silently; a bad option is one line, exit 2
    again = _run(args, tmp_path)
    assert again.returncode == 2 and "auto_resume" in again.stderr and "Traceback" not in again.stderr
    bad = _run(args + ["--gradient_estimator", "sgd"], tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
