"""The install and data entry points: make picks the CUDA build of the pinned JAX on request (or on an NVIDIA
machine), TF=0 leaves TensorFlow out, and `make data` fetches what runs need or says in one line how to get it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ensure_data.sh"


def _make_n(*args: str) -> str:
    proc = subprocess.run(["make", "-n", "-B", "install", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_chooses_the_jax_build_and_tensorflow():
    pinned = re.search(r"^jax\[cpu\]==([\d.]+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    cuda = _make_n("ACCEL=cuda")
    assert 'if [ "cuda" = cuda ]; then bash scripts/cuda_extra.sh >/dev/null; fi' in cuda  # before the venv
    assert (f'if [ "cuda" = cuda ]; then .venv/bin/python -m pip install -q "jax[$(bash scripts/cuda_extra.sh)]'
            f'=={pinned}"; fi') in cuda
    assert 'if [ "cpu" = cuda ]' in _make_n("ACCEL=cpu")
    light = _make_n("ACCEL=cpu", "TF=0")
    assert 'if [ "0" = 0 ]; then grep -v -E' in light and "requirements-notf.txt" in light
    kept = [line for line in (REPO / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")
            and not re.match(r"^(tensorflow|tensorflow-datasets|seqio|tensorflow-text)==", line)]
    assert not any(line.startswith(("tensorflow", "seqio")) for line in kept) and any("jax" in k for k in kept)


def _fake_nvidia_smi(folder: Path, cuda: str | None, caps: tuple[str, ...] = ("9.0",)) -> dict:
    """PATH with an nvidia-smi that prints a driver header for CUDA ``cuda`` (None: it fails) and answers the
    compute-capability query with ``caps``."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    header = f"| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: {cuda}     |"
    body = ('case "$*" in *compute_cap*) printf "%s\\n" ' + " ".join(caps) + ' ;; *) echo "' + header + '" ;; esac'
            if cuda else "exit 9")
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_the_cuda_build_follows_the_driver(tmp_path):
    def extra(name, cuda, caps=("9.0",), force=None):
        env = _fake_nvidia_smi(tmp_path / name, cuda, caps)
        env.pop("CUDA", None)
        if force is not None:
            env["CUDA"] = force
        return subprocess.run(["bash", str(REPO / "scripts" / "cuda_extra.sh")], capture_output=True, text=True,
                              env=env, timeout=30)

    for name, cuda, caps, want in (("h200", "13.0", ("9.0",), "cuda13"), ("a100", "12.4", ("8.0", "8.0"), "cuda12"),
                                   ("v100", "13.0", ("7.0",), "cuda12"), ("mixed", "13.1", ("9.0", "6.1"), "cuda12")):
        proc = extra(name, cuda, caps)
        assert (proc.returncode, proc.stdout.strip()) == (0, want), (name, proc.stderr)
    assert extra("forced", "12.2", force="13").stdout.strip() == "cuda13"
    for name, cuda, force, words in (("old", "11.8", None, "update the driver"), ("none", None, None, "nvidia-smi"),
                                     ("bad", "13.0", "14", "expected 12 or 13")):
        proc = extra(name, cuda, force=force)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and not proc.stdout and len(lines) == 1 and lines[0].startswith("error: ")
        assert words in lines[0], lines


def _data(tmp_path, *what, env_extra=None):
    env = {**os.environ, "HOME": str(tmp_path), "MULO_T5_VOCAB": str(tmp_path / "t5" / "vocab.model"),
           **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), sys.executable, *what], capture_output=True, text=True, env=env,
                          timeout=120)


def test_lm1b_vocabulary_is_fetched_or_one_line_says_how(tmp_path):
    proc = _data(tmp_path, "lm1b")
    target = tmp_path / "t5" / "vocab.model"
    if proc.returncode == 0:  # a machine with network: a real SentencePiece model
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.Load(str(target))
        assert sp.GetPieceSize() == 32_000
    else:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1
        assert lines[0].startswith("error: cannot download the T5 SentencePiece model") and "--vocab_path" in lines[0]
        assert not target.exists() and not list((tmp_path / "t5").glob("*"))  # nothing half-written


def test_an_existing_vocabulary_needs_no_network_and_bad_names_are_one_line(tmp_path):
    target = tmp_path / "t5" / "vocab.model"
    target.parent.mkdir()
    target.write_bytes(b"model")
    proc = _data(tmp_path, "lm1b")
    assert proc.returncode == 0 and f"--vocab_path {target}" in proc.stdout
    bad = _data(tmp_path, "imagenet")
    assert bad.returncode == 2 and bad.stderr.strip() == ("error: unknown dataset 'imagenet' for make data: "
                                                          "expected fashion_mnist or lm1b")
