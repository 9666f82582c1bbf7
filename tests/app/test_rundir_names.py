"""Run names say what distinguishes runs: the learning rate of a hand-designed optimizer, the θ of a learned one, or
the user's name_suffix."""

from __future__ import annotations

import pytest

from mulo.app.config import load_config
from mulo.app.rundir import run_name, theta_label

TASK = "mumlp-w64-d3_fashionmnist-28x28x1"


@pytest.fixture
def cfg():
    return load_config(None).replace(task=[TASK])


def test_two_learning_rates_give_two_run_names(cfg):
    a = run_name(cfg.replace(optimizer="muadam", learning_rate=0.1), "meta-test")
    b = run_name(cfg.replace(optimizer="muadam", learning_rate=0.01), "meta-test")
    assert a == f"meta-test_muadam_lr0.1_{TASK}" and b == f"meta-test_muadam_lr0.01_{TASK}"
    assert run_name(cfg.replace(optimizer="adamw", learning_rate=3e-4), "meta-test") == f"meta-test_adamw_lr0.0003_{TASK}"
    # a sweep varies the learning rate itself: its name has none
    assert run_name(cfg.replace(optimizer="muadam", learning_rate=0.1), "sweep") == f"sweep_muadam_{TASK}"
    # the user's suffix comes on top
    assert run_name(cfg.replace(optimizer="sgd", learning_rate=0.5, name_suffix="_x"), "meta-test") == \
        f"meta-test_sgd_lr0.5_{TASK}_x"


def test_learned_optimizers_are_named_by_their_theta(cfg, tmp_path):
    one, same, other = tmp_path / "a.msgpack", tmp_path / "copy" / "theta_final.msgpack", tmp_path / "b.msgpack"
    same.parent.mkdir()
    one.write_bytes(b"theta one")
    same.write_bytes(b"theta one")
    other.write_bytes(b"theta two")
    import hashlib

    assert theta_label(one) == "theta-" + hashlib.sha256(b"theta one").hexdigest()[:8]
    assert theta_label(one) == theta_label(same) != theta_label(other)  # by content, not by path
    lo = cfg.replace(optimizer="mup_small_fc_mlp")
    names = {run_name(lo, "meta-test", theta_label(p)) for p in (one, other)}
    assert names == {f"meta-test_mup_small_fc_mlp32_{theta_label(p)}_{TASK}" for p in (one, other)}
    # the user's own suffix replaces the θ label (it is what the user chose to tell runs apart by)
    assert run_name(lo.replace(name_suffix="_quickstart"), "meta-test", theta_label(one)) == \
        f"meta-test_mup_small_fc_mlp32_{TASK}_quickstart"
    # meta-training names are unchanged: the θ is what they make
    assert run_name(lo, "meta-train") == f"meta-train_mup_small_fc_mlp32_{TASK}"
