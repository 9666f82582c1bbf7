"""meta-test: checkpoint resolution, wandb at the boundary (a fake API object), the command on real tiny tasks
(muMLP widths 16/32 on Fashion-MNIST) with hand-designed optimizers, seeds, reuse of finished runs, divergence."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mulo.app.cli import main as cli_main
from mulo.app.config import load_config
from mulo.errors import CheckpointError, ConfigError
from mulo.app.commands.meta_test import build_tasks, meta_test_runs
from mulo.evaluate.lo_source import OptimizerSource, fetch_wandb_checkpoint, resolve_checkpoint
from mulo.io import read_jsonl
from mulo.optimizers import adam, sgd

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_CFG = str(REPO_ROOT / "config" / "meta_test" / "meta_test_base.py")

T16 = "mumlp-w16-d2_fashionmnist-28x28x1"
T32 = "mumlp-w32-d2_fashionmnist-28x28x1"
SMALL = ["--num_inner_steps", "30", "--local_batch_size", "32", "--test_interval", "10", "--test_steps_per_jit",
         "10", "--max_eval_examples", "100", "--eval_batch_size", "50", "--progress", "false", "--wandb_mode",
         "disabled"]


# ---------------------------------------------------------------------------------------------------------------------
# resolve_checkpoint on the layout meta-training writes


def _touch(path: Path, text: str = "x", age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_resolve_checkpoint_accepts_file_run_dir_latest_and_step_folders(tmp_path):
    run = tmp_path / "meta-train_run"
    s100 = _touch(run / "theta" / "theta_step100.msgpack", age=30)
    s200 = _touch(run / "theta" / "theta_step200.msgpack", age=20)
    _touch(run / "theta" / ".theta_step300.msgpack.abc.tmp")  # an unfinished atomic write is ignored
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "checkpoints" / "200").mkdir(parents=True)
    _touch(run / "checkpoints" / "latest", "200\n")
    assert resolve_checkpoint(s100) == s100  # a theta file is itself
    assert resolve_checkpoint(run) == s200  # a run directory: its newest theta file
    assert resolve_checkpoint(run / "checkpoints" / "latest") == s200  # the pointer (a step number)
    assert resolve_checkpoint(run / "checkpoints") == s200
    assert resolve_checkpoint(run / "checkpoints" / "100") == s100  # a step folder
    final = _touch(run / "theta_final.msgpack", age=10)
    assert resolve_checkpoint(run) == final  # the end of the run wins
    # a pointer holding a path, and a symlink pointer
    _touch(tmp_path / "other" / "latest", str(s100))
    assert resolve_checkpoint(tmp_path / "other" / "latest") == s100
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "latest").symlink_to(s200)
    assert resolve_checkpoint(tmp_path / "link" / "latest") == s200.resolve()


def test_resolve_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no theta file"):
        resolve_checkpoint(tmp_path / "empty")
    _touch(tmp_path / "r" / "checkpoints" / "latest", "300\n")
    with pytest.raises(CheckpointError, match="theta_step300"):
        resolve_checkpoint(tmp_path / "r" / "checkpoints" / "latest")


# ---------------------------------------------------------------------------------------------------------------------
# wandb through a fake API object


class FakeFile:
    def __init__(self, name, payload):
        self.name, self.payload = name, payload

    def download(self, root, replace=False):
        path = Path(root) / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.payload)
        return open(path)


class FakeRun:
    def __init__(self, files):
        self._files = files

    def files(self):
        return iter(self._files)


class FakeApi:
    def __init__(self, runs):
        self.runs, self.asked = runs, []

    def run(self, path):
        self.asked.append(path)
        if path not in self.runs:
            raise ValueError(f"Could not find run {path}")
        return self.runs[path]


def test_fetch_wandb_checkpoint_downloads_the_theta_file(tmp_path):
    api = FakeApi({"ent/proj/abc123": FakeRun([FakeFile("config.yaml", b"c"),
                                               FakeFile("theta/theta_step100.msgpack", b"old"),
                                               FakeFile("theta/theta_step900.msgpack", b"new"),
                                               FakeFile("output.log", b"l")])})
    path = fetch_wandb_checkpoint("ent/proj/abc123", tmp_path / "dl", lambda: api)
    assert path == tmp_path / "dl" / "theta" / "theta_step900.msgpack" and path.read_bytes() == b"new"
    assert api.asked == ["ent/proj/abc123"]
    api.runs["ent/proj/abc123"]._files.append(FakeFile("theta_final.msgpack", b"final"))
    assert fetch_wandb_checkpoint("ent/proj/abc123", tmp_path / "dl2", lambda: api).read_bytes() == b"final"


def test_fetch_wandb_checkpoint_errors(tmp_path):
    def offline():
        raise ConnectionError("Max retries exceeded with url: https://api.wandb.ai/graphql")

    with pytest.raises(CheckpointError) as e:
        fetch_wandb_checkpoint("ent/proj/abc", tmp_path, offline)
    msg = str(e.value)
    assert "\n" not in msg and "ent/proj/abc" in msg and "offline" in msg and "--checkpoint" in msg
    with pytest.raises(CheckpointError, match="cannot fetch wandb run ent/proj/zzz"):
        fetch_wandb_checkpoint("ent/proj/zzz", tmp_path, lambda: FakeApi({}))
    with pytest.raises(CheckpointError, match="no theta file"):
        fetch_wandb_checkpoint("a/b/c", tmp_path, lambda: FakeApi({"a/b/c": FakeRun([FakeFile("x.log", b"")])}))
    with pytest.raises(ConfigError, match="entity/project/run_id"):
        fetch_wandb_checkpoint("just-an-id", tmp_path, lambda: FakeApi({}))


def test_meta_test_cli_offline_wandb_is_one_line_error(tmp_path, capsys, monkeypatch):
    import mulo.app.commands.meta_test as mt

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(mt, "wandb_api", offline)
    code = cli_main(["meta-test", "--config", BASE_CFG, "--task", T16,
                     "--wandb_checkpoint_id", "ent/proj/run1", "--output_dir", str(tmp_path), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot fetch wandb run ent/proj/run1") and "\n" not in err


# ---------------------------------------------------------------------------------------------------------------------
# the command with hand-designed optimizers on real tasks


def test_learned_optimizer_needs_a_checkpoint_and_hand_designed_takes_none(tmp_path, capsys):
    base = ["meta-test", "--config", BASE_CFG, "--task", T16, "--output_dir",
            str(tmp_path), *SMALL]
    assert cli_main(base + ["--optimizer", "mup_small_fc_mlp"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert cli_main(base + ["--optimizer", "mup_small_fc_mlp", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli_main(base + ["--optimizer", "adam", "--checkpoint", str(tmp_path)]) == 2
    assert "hand-designed" in capsys.readouterr().err
    assert cli_main(base + ["--optimizer", "adam", "--task", "mumlp-wX-d2_fashionmnist-28x28x1"]) == 2
    assert "width" in capsys.readouterr().err


def _losses(seed_dir: Path) -> list[float]:
    return [r["train_loss"] for r in read_jsonl(seed_dir / "metrics.jsonl") if "train_loss" in r]


def test_meta_test_command_several_tasks_and_seeds(tmp_path, capsys):
    args = ["meta-test", "--config", BASE_CFG, "--optimizer", "muadam",
            "--learning_rate", "0.03", "--task", f"{T16},{T32}", "--num_runs", "2", "--seed", "3", "--output_dir",
            str(tmp_path), *SMALL]
    assert cli_main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    manifest = json.loads((run_dir / "meta_test.json").read_text())
    assert manifest["optimizer"] == "muadam" and manifest["seeds"] == [3, 4]
    assert {(r["task"], r["seed"]) for r in manifest["runs"]} == {(t, s) for t in (T16, T32) for s in (3, 4)}
    for task in (T16, T32):
        for seed in (3, 4):
            d = run_dir / task / f"seed{seed}"
            records = read_jsonl(d / "metrics.jsonl")
            assert [r["step"] for r in records if "train_loss" in r] == list(range(1, 31))
            assert [r["step"] for r in records if "test_loss" in r] == [0, 10, 20, 30]
            assert all(r["step_time"] > 0 for r in records if "train_loss" in r)
            summary = json.loads((d / "summary.json").read_text())
            assert summary["steps_completed"] == 30 and not summary["diverged"] and summary["seed"] == seed
            # one definition of the final train loss (summary, printed line, sweep objective, report): the mean of
            # the last 5% of the steps (here the last 2 of 30); the last minibatch's loss is kept apart
            assert summary["final_train_loss"] == pytest.approx(np.mean(_losses(d)[-2:]), rel=1e-12)
            assert summary["last_train_loss"] == _losses(d)[-1]
            assert 0.0 <= summary["test_accuracy"] <= 1.0
    # seeds differ (init and data order) ...
    assert _losses(run_dir / T16 / "seed3") != _losses(run_dir / T16 / "seed4")
    first = _losses(run_dir / T16 / "seed4")
    # ... and repeat in another invocation (a fresh run directory: other output_dir)
    assert cli_main(args[:-len(SMALL)] + SMALL + ["--output_dir", str(tmp_path / "again"), "--num_runs", "1",
                                                   "--seed", "4", "--task", T16]) == 0
    (again,) = (tmp_path / "again").iterdir()
    assert _losses(again / T16 / "seed4") == first
    # running the same command again reuses the finished runs instead of appending to them
    capsys.readouterr()
    assert cli_main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(_losses(run_dir / T16 / "seed3")) == 30


def test_divergence_is_recorded_and_other_runs_finish(tmp_path):
    cfg = load_config(BASE_CFG, cli={
        "task": [T16, T32], "num_runs": 2, "num_inner_steps": 30, "local_batch_size": 32, "test_interval": 10,
        "test_steps_per_jit": 10, "max_eval_examples": 100, "eval_batch_size": 50, "progress": False,
        "wandb_mode": "disabled", "optimizer": "sgd"})
    tasks = build_tasks(cfg)
    # a huge lr on the width-16 task, a sane one on width 32
    source = OptimizerSource("sgd", lambda task: sgd(1e38) if task.name == T16 else adam(0.01))
    summaries = meta_test_runs(cfg, tasks, source, tmp_path)
    by = {(s["task"], s["seed"]): s for s in summaries}
    for seed in (0, 1):
        bad = by[(T16, seed)]
        assert bad["diverged"] and bad["diverged_step"] == bad["steps_completed"] < 30
        assert bad["tail_train_loss"] == float("inf") or bad["tail_train_loss"] == "inf"
        assert bad["final_train_loss"] is None
        good = by[(T32, seed)]
        assert not good["diverged"] and good["steps_completed"] == 30
        records = read_jsonl(tmp_path / T16 / f"seed{seed}" / "metrics.jsonl")
        assert any(r.get("diverged") for r in records)
    manifest = json.loads((tmp_path / "meta_test.json").read_text())
    assert sum(r["diverged"] for r in manifest["runs"]) == 2


def test_bf16_command_runs_with_float32_state(tmp_path):
    assert cli_main(["meta-test", "--config", BASE_CFG, "--optimizer", "adam",
                     "--learning_rate", "0.01", "--task", T16, "--num_runs", "1", "--use_bf16", "true",
                     "--output_dir", str(tmp_path), *SMALL]) == 0
    (run_dir,) = tmp_path.iterdir()
    losses = _losses(run_dir / T16 / "seed0")
    assert len(losses) == 30 and losses[-1] < losses[0]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).resolve().parents[3] / "config" /
                                                           "meta_test").glob("*.py")))
def test_meta_test_recipes_load_and_name_valid_tasks(recipe):
    from mulo.tasks import parse_task_name

    cfg = load_config(REPO_ROOT / "config" / "meta_test" / recipe)
    for name in cfg.task:
        parse_task_name(name, d_head=cfg.d_head)
    assert cfg.num_runs >= 1 and cfg.checkpoint is None


def _recipe(name):
    return REPO_ROOT / "config" / "meta_test" / name


def test_paper_suite_recipes_mirror_the_paper():
    widths = lambda cfg: [int(t.split("-w")[1].split("-")[0]) for t in cfg.task]  # noqa: E731
    assert widths(load_config(_recipe("paper_mlp_imagenet32.py"))) == [128, 256, 512, 1024, 2048, 4096, 8192]
    assert widths(load_config(_recipe("paper_transformer_lm1b.py"))) == [192, 384, 768, 1024, 2048, 3072]
    assert all("-d16_" in t for t in load_config(_recipe("paper_depth16.py")).task)
    assert load_config(_recipe("paper_horizon25k.py")).num_inner_steps == 25000
    cpu = load_config(_recipe("cpu_fashionmnist.py"))
    assert widths(cpu) == [64, 128, 256, 512, 1024, 2048] and cpu.num_inner_steps == 1000
