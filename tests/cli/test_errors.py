"""End to end: a user's bad input or missing data gives one line on stderr and exit code 2, with no traceback or
library warnings, whichever subcommand meets it."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "--config", "config/sweeps/sweep_muadam.py", "--task", "mumlp-w8-d2_cifar10-32x32x3"],
     "TFDS dataset cifar10"),
    (["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py", "--optimizer", "adam", "--task",
      "mumlp-w8-d2_imagenet-32x32x3"], "TFDS dataset imagenet_resized/32x32"),
    (["meta-train", "--config", "config/meta_train/quickstart.py", "--task", "mumlpx-w8-d3_fashionmnist-28x28x1"],
     "bad model 'mumlpx'"),
    (["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py", "--optimizer", "mup_small_fc_mlp",
      "--checkpoint", "README.md"], "is corrupt or truncated"),
    (["meta-train", "--config", "config/meta_train/quickstart.py", "--init_theta", "pretrained:cpu_mulo_m_fmnist"],
     "lo.step_mult=0.03 (config: 0.01)"),
])
def test_missing_data_and_bad_input_are_one_line(tmp_path, argv, needle):
    empty = tmp_path / "tfds"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "src/main.py", *argv, "--output_dir", str(tmp_path / "out"),
                           "--data_dir", str(empty), "--wandb_mode", "disabled", "--progress", "false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_one_line_joins_whitespace_and_cuts_long_messages():
    from mulo.errors import one_line

    assert one_line(ValueError("first line\n  second\tline\r\n")) == "first line second line"
    assert one_line(OSError("x" * 301)) == "x" * 300 + "..."
    assert one_line("y" * 300) == "y" * 300  # the limit itself is not cut
    assert one_line("a b " * 5, limit=5) == "a b a..."
    assert one_line("z " * 400, limit=None) == ("z " * 400).strip()
