"""Run directories, atomic writes and metrics.jsonl."""

from pathlib import Path

import pytest

from mulo import io
from mulo.app.config import load_config
from mulo.io import read_jsonl
from mulo.app.rundir import make_run_dir, run_name, tasks_label
from mulo.app.runlog import RunLogger


@pytest.fixture
def cfg(tmp_path):
    return load_config(None).replace(output_dir=str(tmp_path / "out"), name_suffix="_demo")


def test_run_names_are_readable(cfg):
    multi = cfg.replace(task=[f"mumlp-w{w}-d3_fashionmnist-28x28x1" for w in (32, 64, 128)])
    assert run_name(multi, "meta-train") == "meta-train_mup_small_fc_mlp32_mumlp-w32+64+128-d3_fashionmnist-28x28x1_demo"
    assert run_name(cfg.replace(optimizer="muadam"), "sweep") == "sweep_muadam_mumlp-w128-d3_fashionmnist-28x28x1_demo"
    assert tasks_label(["mumlp-w8-d3_a", "mlp-w8-d3_b"]) == "mumlp-w8-d3_a+1more"
    assert "/" not in run_name(cfg.replace(name_suffix="/../x y"), "meta-test")


def test_run_dir_holds_the_resolved_config(cfg):
    path = make_run_dir(cfg, "meta-train")
    assert path == Path(cfg.output_dir) / run_name(cfg, "meta-train")
    assert load_config(path / "config.py").to_dict() == cfg.to_dict()
    assert [p.name for p in path.iterdir()] == ["config.py"]  # no temporary files left behind


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    io.atomic_write_json(target, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        io.atomic_write_json(target, {"a": 2})
    monkeypatch.undo()
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_metrics_jsonl_lines_are_whole_and_a_torn_last_line_is_skipped(cfg, tmp_path):
    with RunLogger(tmp_path, cfg) as log:
        log.log(0, {"loss": 1.5, "nan": float("nan")})
        log.log(1, {"loss": 1.25})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(0, 1.5), (1, 1.25)]
    assert rows[0]["nan"] == "nan"
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a crash in the middle of a write
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2
