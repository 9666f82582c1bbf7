"""Start-up: the lines printed before the first (compiling) step, and no library noise around them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mulo.app.config import load_config
from mulo.data import tf_env
from mulo.app.startup import COMPILING, banner, compiling_line, device_line

ROOT = Path(__file__).resolve().parents[2]


def test_device_line_names_the_backend_and_devices():
    import jax

    line = device_line()
    assert line.startswith(f"backend {jax.default_backend()}: {len(jax.devices())} device")
    assert line.endswith("1 process")


def test_banner_says_where_the_run_and_its_wandb_runs_go(tmp_path, monkeypatch):
    cfg = load_config(None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    lines = banner("meta-test", cfg, tmp_path / "run", runs_under="<task>/seed<k>")
    assert lines[0].startswith("[meta-test] backend ")
    assert lines[1] == f"[meta-test] run directory {tmp_path / 'run'}"
    assert lines[2].startswith(f"[meta-test] wandb offline: runs saved under {tmp_path / 'run' / '<task>/seed<k>'}")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert len(banner("meta-test", cfg, tmp_path / "run")) == 2  # no wandb line when wandb is off
    assert compiling_line("meta-train", "3 task(s)") == f"[meta-train] 3 task(s): {COMPILING}"


LOG_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796162881.029142   12087 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796162881.029864   12087 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will",
    "E0000 00:00:1796162881.1   12087 cuda_dnn.cc:8310] Unable to register cuDNN factory",
]


def test_tensorflow_log_lines_are_recognised_and_other_lines_kept(capfd):
    assert all(tf_env.is_noise(line) for line in LOG_LINES)
    assert not tf_env.is_noise("error: something the user must see")
    assert not tf_env.is_noise("I0000 is not a log line")
    with tf_env.quiet_stderr():
        os.write(2, ("\n".join(LOG_LINES) + "\nkeep me\n").encode())
    assert capfd.readouterr().err == "keep me\n"


class _FakeConfig:
    def __init__(self, gpus):
        self.visible = list(gpus)
        self.calls = []

    def get_visible_devices(self, kind):
        return list(self.visible) if kind == "GPU" else []

    def set_visible_devices(self, devices, kind):
        self.calls.append((list(devices), kind))
        self.visible = list(devices)


class _FakeTF:
    def __init__(self, gpus):
        self.config = _FakeConfig(gpus)


def test_gpus_are_hidden_from_tensorflow():
    tf = _FakeTF(["/physical_device:GPU:0"])
    tf_env.hide_gpus(tf)
    assert tf.config.calls == [([], "GPU")] and tf.config.get_visible_devices("GPU") == []
    tf_env.hide_gpus(tf)  # already hidden: nothing more to do
    assert len(tf.config.calls) == 1
    real = tf_env.import_tf()
    assert real.config.get_visible_devices("GPU") == []


def test_importing_tensorflow_seqio_and_tfds_prints_nothing():
    """In a fresh process with TF_CPP_MIN_LOG_LEVEL unset (a user's shell): no oneDNN / CUDA-stub / absl lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from mulo.data.tf_env import import_seqio, import_tfds\n"
            "seqio = import_seqio(); tfds = import_tfds(); import tensorflow as tf\n"
            "print(len(tf.config.get_visible_devices('GPU')), seqio.ByteVocabulary().vocab_size)") % str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout.split() == ["0", "259"]


def test_meta_test_prints_start_up_lines_before_compiling_and_nothing_else(tmp_path):
    """A fresh process (wandb offline): banner, then 'compiling', then the results on stdout; nothing on stderr (no
    TensorFlow/absl lines, no wandb lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WANDB_SILENT")}  # a user's shell
    env.update(WANDB_MODE="offline", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src/main.py"), "meta-test",
         "--config", str(ROOT / "config/meta_test/cpu_tinyshakespeare.py"),
         "--optimizer.name", "adam", "--task", "mutransformer-w16-d1_tinyshakespeare-s8-vbyte",
         "--task_options.d_head", "8",
         "--num_runs", "2", "--num_inner_steps", "3", "--local_batch_size", "4", "--test_interval", "3",
         "--max_eval_examples", "8", "--eval_batch_size", "8", "--output_dir", str(tmp_path), "--progress", "false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    out = proc.stdout.splitlines()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert out[0].startswith("[meta-test] backend cpu: ")
    assert out[1] == f"[meta-test] run directory {run_dir}"
    assert out[2].startswith("[meta-test] wandb offline: runs saved under ")
    compiling = [i for i, line in enumerate(out) if line.endswith(COMPILING)]
    first_result = next(i for i, line in enumerate(out) if "final train loss" in line)
    assert len(compiling) == 1 and 2 < compiling[0] < first_result  # once per task, before its first step
    assert not any(line.startswith("wandb:") for line in out)
    assert len(list(run_dir.glob("*/seed*/wandb/offline-run-*"))) == 2  # wandb still records both seeds


_NO_TF = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text"}:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, %r)
from mulo.data import get_dataset
text = next(get_dataset("tinyshakespeare-s8-vbyte").batches("train", (2,), 0))
images = next(get_dataset("fashionmnist-28x28x1").batches("train", (2,), 0))
print(text["x"].shape, images["x"].shape, "tensorflow" in sys.modules)
"""


def test_the_light_install_datasets_need_no_tensorflow():
    """`make install TF=0` leaves TensorFlow, TFDS and seqio out: Tiny Shakespeare and Fashion-MNIST (IDX files)
    still load (the import of any of them is refused here)."""
    proc = subprocess.run([sys.executable, "-c", _NO_TF % str(ROOT / "src")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(2, 8) (2, 28, 28, 1) False"
