"""The report: from real meta-test run directories (muMLP widths 16 and 32 on Fashion-MNIST, 2 seeds) to PNGs and a
markdown table whose numbers equal the means and standard errors computed here from metrics.jsonl."""

from __future__ import annotations

import json
import math
import re

import jax
import numpy as np
import pytest

from mulo.app.cli import main as cli_main
from mulo.evaluate.report import make_report
from mulo.evaluate.report_runs import family_and_width
from mulo.io import read_jsonl
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CFG = str(REPO_ROOT / "config" / "meta_test" / "meta_test_base.py")

TASKS = "mumlp-w16-d2_fashionmnist-28x28x1,mumlp-w32-d2_fashionmnist-28x28x1"
COMMON = ["--task", TASKS, "--num_runs", "2", "--num_inner_steps", "40", "--local_batch_size", "32",
          "--test_interval", "20", "--test_steps_per_jit", "20", "--max_eval_examples", "100", "--eval_batch_size",
          "100", "--progress", "false", "--wandb_mode", "disabled"]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt")
    dirs = []
    for opt, lr in (("muadam", "0.03"), ("sgd", "1e38")):
        code = cli_main(["meta-test", "--config", BASE_CFG, "--optimizer", opt,
                         "--learning_rate", lr, "--output_dir", str(out / opt), *COMMON])
        assert code == 0
        (d,) = (out / opt).iterdir()
        dirs.append(d)
    return dirs


def expected(run_dir, task, frac=0.05):
    finals = []
    diverged = 0
    for seed_dir in sorted((run_dir / task).glob("seed*")):
        summary = json.loads((seed_dir / "summary.json").read_text())
        if summary["diverged"]:
            diverged += 1
            continue
        losses = [r["train_loss"] for r in read_jsonl(seed_dir / "metrics.jsonl") if "train_loss" in r]
        n = max(1, math.ceil(frac * len(losses)))
        finals.append(float(np.mean(losses[-n:])))
    a = np.array(finals)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
    return (float(a.mean()) if len(a) else None), se, diverged


def test_report_writes_figures_and_a_table_of_the_means(run_dirs, tmp_path):
    out = make_report(run_dirs, tmp_path / "rep", frac=0.05)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves_mlp-wW-d2_fashionmnist-28x28x1.png", "loss_vs_width_mlp-wW-d2_fashionmnist-28x28x1.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    text = (out / "report.md").read_text()
    rows = {}
    for line in text.splitlines():
        if line.startswith("| muadam lr=0.03 |") or line.startswith("| sgd lr=1e+38 |"):  # labels carry the lr
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0].split()[0], cells[1:])  # first table per family: final train loss
    tasks = TASKS.split(",")
    for i, task in enumerate(tasks):
        mean, se, div = expected(run_dirs[0], task)
        m = re.fullmatch(r"([\d.]+) ± ([\d.]+)", rows["muadam"][i])
        assert m, rows["muadam"][i]
        assert float(m.group(1)) == pytest.approx(mean, abs=1e-4)
        assert float(m.group(2)) == pytest.approx(se, abs=1e-4)
        assert div == 0
        # every sgd(1e38) run diverged: the table says so instead of a number
        mean, se, div = expected(run_dirs[1], task)
        assert mean is None and div == 2
        assert rows["sgd"][i] == "diverged (2/2)"
    results = json.loads((out / "results.json").read_text())
    cell = next(r for r in results if r["optimizer"] == "muadam lr=0.03" and r["width"] == 16)
    assert cell["final_train_loss_mean"] == pytest.approx(expected(run_dirs[0], tasks[0])[0], rel=1e-9)
    assert cell["seeds"] == 2 and cell["diverged"] == 0


def test_report_cli_writes_into_its_own_directory(run_dirs, capsys, tmp_path):
    assert cli_main(["report", *map(str, run_dirs)]) == 0
    own = run_dirs[0].parent / f"report_{run_dirs[0].name}+1more"
    assert (own / "report.md").is_file() and not (run_dirs[0] / "report").exists()
    assert "final train loss" in capsys.readouterr().out
    # --output_dir given on the command line is the report directory
    assert cli_main(["report", *map(str, run_dirs), "--output_dir", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()


def test_report_of_a_directory_without_results_is_one_line_error(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no meta-test results") and "\n" not in err


def test_family_and_width():
    assert family_and_width("mumlp-w1024-d3_imagenet-32x32x3") == ("mlp-w*-d3_imagenet-32x32x3", 1024)
    assert family_and_width("mlp-w64-d3_imagenet-32x32x3") == ("mlp-w*-d3_imagenet-32x32x3", 64)
    assert family_and_width("mutransformer-w192-d3_lm1b-s64-v32k") == ("transformer-w*-d3_lm1b-s64-v32k", 192)
    assert family_and_width("weird") == ("weird", None)


def _fake_run(root, optimizer, tasks, losses_by_task, diverged=()):
    """A meta-test run directory written the way meta_test writes it (manifest, summary, metrics lines)."""
    from mulo.io import append_line, atomic_write_json, to_json_line

    run = root / f"meta-test_{optimizer}"
    atomic_write_json(run / "meta_test.json", {"optimizer": optimizer, "tasks": tasks})
    for task in tasks:
        for seed, losses in enumerate(losses_by_task[task]):
            d = run / task / f"seed{seed}"
            d.mkdir(parents=True)
            for step, loss in enumerate(losses, 1):
                append_line(d / "metrics.jsonl", to_json_line({"step": step, "train_loss": loss}))
            div = (task, seed) in diverged
            atomic_write_json(d / "summary.json", {"task": task, "seed": seed, "diverged": div,
                                                   "diverged_step": len(losses) if div else None})
    return run


def test_report_puts_mup_and_sp_runs_of_a_family_in_one_figure(tmp_path):
    mu = _fake_run(tmp_path, "mup_small_fc_mlp",
                   ["mumlp-w64-d3_fashionmnist-28x28x1", "mumlp-w128-d3_fashionmnist-28x28x1"],
                   {"mumlp-w64-d3_fashionmnist-28x28x1": [[3.0] * 19 + [1.0], [3.0] * 19 + [2.0]],
                    "mumlp-w128-d3_fashionmnist-28x28x1": [[3.0] * 19 + [0.5], [3.0] * 19 + [0.7]]})
    sp = _fake_run(tmp_path, "small_fc_mlp", ["mlp-w64-d3_fashionmnist-28x28x1", "mlp-w128-d3_fashionmnist-28x28x1"],
                   {"mlp-w64-d3_fashionmnist-28x28x1": [[2.0] * 20, [2.5] * 20],
                    "mlp-w128-d3_fashionmnist-28x28x1": [[2.0] * 5 + [float("nan")], [2.2] * 20]},
                   diverged={("mlp-w128-d3_fashionmnist-28x28x1", 0)})
    out = make_report([mu, sp], tmp_path / "rep", frac=0.05)  # 5% of 20 steps = the last step
    assert sorted(p.name for p in out.glob("*.png")) == ["curves_mlp-wW-d3_fashionmnist-28x28x1.png",
                                                         "loss_vs_width_mlp-wW-d3_fashionmnist-28x28x1.png"]
    text = (out / "report.md").read_text()
    assert "| mup_small_fc_mlp | 1.5000 ± 0.5000 | 0.6000 ± 0.1000 |" in text
    assert "| small_fc_mlp | 2.2500 ± 0.2500 | 2.2000 (1 seed; 1/2 diverged) |" in text


def test_y_axis_turns_log_when_losses_span_more_than_20x():
    from mulo.evaluate.report_plots import y_scale

    assert y_scale([0.3, 0.5, 0.9]) == "linear"
    assert y_scale([0.3, 0.5, 7981.9]) == "log"  # a blown-up SP run next to converged ones
    assert y_scale([0.3, None, float("nan"), 5.9]) == "linear"  # 19.7x: missing and non-finite values ignored
    assert y_scale([0.3, 6.1]) == "log"
    assert y_scale([-1.0, 100.0]) == "linear"  # not a positive quantity: no log axis
    assert y_scale([2.0]) == "linear"


@pytest.mark.parametrize("optimizer, sizes", [("velo", {"velo_lstm_hidden_size": 4, "velo_param_inits": 2}),
                                              ("mup_small_fc_mlp", {"hidden_size": 8})])
def test_learned_runs_are_labelled_by_their_meta_train_run_whatever_key_names_it(tmp_path, optimizer, sizes):
    """Issue #24: VeLO's run names carry its lstm_hidden_size (``velo4``), not a hidden_size: the label drops the
    ``meta-train_velo4_`` prefix as it drops ``meta-train_mup_small_fc_mlp8_`` (the θ read as meta-test reads it)."""
    from mulo.app.config import load_config
    from mulo.app.sections import optimizer_source
    from mulo.evaluate.report_runs import run_label
    from mulo.optimizers import build_learned, save_theta
    from mulo.app.rundir import run_name

    task = "mumlp-w16-d2_fashionmnist-28x28x1"
    cfg = load_config(None, cli={"optimizer": optimizer, "task": task, "name_suffix": "_quick", **sizes})
    run = tmp_path / run_name(cfg, "meta-train")
    lo = build_learned(cfg)
    theta_dir = run / "theta"
    theta_dir.mkdir(parents=True)
    save_theta(theta_dir / "theta_step50.msgpack", lo, lo.init_theta(jax.random.PRNGKey(0)))
    save_theta(run / "theta_final.msgpack", lo, lo.init_theta(jax.random.PRNGKey(0)))
    for theta, step in ((run / "theta_final.msgpack", ""), (theta_dir / "theta_step50.msgpack", " step50")):
        info = optimizer_source(cfg.replace(checkpoint=str(theta))).info
        assert run_label({"optimizer": optimizer, "optimizer_info": info}) == \
            f"{optimizer} (θ {task}_quick{step})"
