"""The report's loose ends: a meta-train run's meta-loss figure, its own output directory, figure titles from the
actual family, the diverged note only when something diverged, legends naming lr / θ and kept off the data, one y
scale for all panels, and "1 seed" instead of "± 0.0000"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mulo.app.cli import main as cli_main
from mulo.evaluate import report_meta_train as rmt
from mulo.evaluate.report import fmt_cell
from mulo.evaluate.report_plots import plot_curves, plot_vs_width
from mulo.evaluate.report_runs import Run, aggregate, run_label
from mulo.io import append_line, atomic_write_json, to_json_line

TASKS = ["mumlp-w32-d3_fashionmnist-28x28x1", "mumlp-w64-d3_fashionmnist-28x28x1"]


def _meta_train_dir(root, steps=40):
    """A meta-train run directory as mulo.meta.train writes it: metrics.jsonl with meta_loss and meta_loss/<task>."""
    run = root / "meta-train_mup_small_fc_mlp32_mumlp-w32+64-d3_fashionmnist-28x28x1"
    run.mkdir(parents=True)
    for s in range(1, steps + 1):
        per = {f"meta_loss/{t}": 2.0 + i - 0.02 * s for i, t in enumerate(TASKS)}  # task i: 2 + i - 0.02 s
        append_line(run / "metrics.jsonl", to_json_line({"step": s, "meta_loss": float(np.mean(list(per.values()))),
                                                         **per, "lr": 1e-3}))
    return run


def test_report_on_a_meta_train_directory_writes_the_meta_loss_figure(tmp_path, capsys):
    run = _meta_train_dir(tmp_path)
    assert cli_main(["report", str(run)]) == 0
    out = tmp_path / f"report_{run.name}"  # its own directory, next to the run
    fig = out / f"meta_loss_{run.name}.png"
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 5000
    text = (out / "report.md").read_text()
    assert f"## Meta-training: {run.name}" in text and f"![{fig.name}]({fig.name})" in text
    # first / last 10% of 40 steps = steps 1-4 / 37-40: task 0 = 2 - 0.02 * mean(1..4) = 1.95, 2 - 0.02 * 38.5 = 1.23
    assert f"| {TASKS[0]} | 1–40 | 1.9500 | 1.2300 |" in text
    assert f"| {TASKS[1]} | 1–40 | 2.9500 | 2.2300 |" in text
    assert "| mean over tasks | 1–40 | 2.4500 | 1.7300 |" in text
    assert "Meta-training" in capsys.readouterr().out
    assert not (run / "report").exists()


def test_meta_loss_curves_per_task_and_smoothing(tmp_path):
    records = [{"step": 1, "meta_loss": 2.0, "meta_loss/a": 1.0, "meta_loss/b": 3.0},
               {"step": 2, "meta_loss": "nan", "meta_loss/a": float("nan"), "meta_loss/b": 5.0},
               {"step": 3, "meta_loss": 4.0, "meta_loss/a": 3.0, "meta_loss/b": 5.0}]
    curves = rmt.meta_loss_curves(records)
    assert set(curves) == {"a", "b", "mean"}
    np.testing.assert_array_equal(curves["a"][0], [1, 3])  # non-finite values dropped
    np.testing.assert_array_equal(curves["b"][1], [3.0, 5.0, 5.0])
    one = rmt.meta_loss_curves([{"step": 1, "meta_loss": 2.0, "meta_loss/a": 2.0}])
    assert set(one) == {"a"}  # one task: no separate mean line
    np.testing.assert_allclose(rmt.running_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    info = rmt.plot_meta_loss("x", curves, tmp_path / "m.png")
    assert info["labels"] == ["a", "b", "mean over tasks"] and info["legend_clear"]


def test_a_mixed_report_of_meta_train_and_meta_test_directories(tmp_path):
    run = _meta_train_dir(tmp_path)
    test = tmp_path / "meta-test_muadam_lr0.1_x"
    atomic_write_json(test / "meta_test.json", {"optimizer": "muadam", "optimizer_info": {"hparams": {
        "learning_rate": 0.1}}})
    d = test / TASKS[0] / "seed0"
    d.mkdir(parents=True)
    for s in range(1, 21):
        append_line(d / "metrics.jsonl", to_json_line({"step": s, "train_loss": 1.0}))
    atomic_write_json(d / "summary.json", {"task": TASKS[0], "seed": 0, "diverged": False})
    assert cli_main(["report", str(run), str(test), "--output_dir", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| muadam lr=0.1 | 1.0000 (1 seed) |" in text and f"## Meta-training: {run.name}" in text


def _run(label, task, seed, losses, diverged=False):
    losses = np.asarray(losses, dtype=float)
    return Run(label=label, task=task, seed=seed, diverged=diverged, diverged_step=len(losses) if diverged else None,
               steps=np.arange(1, len(losses) + 1), train_loss=losses, test_loss=None,
               final=None if diverged else float(losses[-1]))


def test_labels_name_the_learning_rate_or_the_theta():
    assert run_label({"optimizer": "muadam", "optimizer_info": {"hparams": {"learning_rate": 0.03}}}) == \
        "muadam lr=0.03"
    assert run_label({"optimizer": "mup_small_fc_mlp", "optimizer_info": {
        "checkpoint": "/c/meta-train_mup_small_fc_mlp32_mumlp-w32+64-d3_fashionmnist-28x28x1_quick/theta_final.msgpack",
        "hparams": {"hidden_size": 32}}}) == "mup_small_fc_mlp (θ mumlp-w32+64-d3_fashionmnist-28x28x1_quick)"
    assert run_label({"optimizer": "mup_small_fc_mlp", "optimizer_info": {
        "checkpoint": "/c/meta-train_mup_small_fc_mlp8_t/theta/theta_step50.msgpack", "hparams": {"hidden_size": 8}}}
    ) == "mup_small_fc_mlp (θ t step50)"
    assert run_label({"optimizer": "mup_small_fc_mlp", "optimizer_info": {
        "checkpoint": "/tmp/x/theta_final.msgpack", "wandb_checkpoint_id": "e/p/r"}}) == "mup_small_fc_mlp (θ e/p/r)"
    assert run_label({"optimizer": "mup_small_fc_mlp", "optimizer_info": {
        "checkpoint": "/cache/snapshots/abc/model.safetensors", "checkpoint_extra": {"source": "hf:btherien/mulo"}}}
    ) == "mup_small_fc_mlp (θ hf:btherien/mulo)"
    assert run_label({"optimizer": "sgd"}) == "sgd"


def test_one_seed_is_said_not_shown_as_zero_error():
    one = aggregate([_run("adam lr=0.1", TASKS[0], 0, [1.0, 0.5])])[0]
    assert fmt_cell(one) == "0.5000 (1 seed)"
    two = aggregate([_run("adam lr=0.1", TASKS[0], 0, [1.0, 0.5]), _run("adam lr=0.1", TASKS[0], 1, [1.0, 0.7])])[0]
    assert fmt_cell(two) == f"0.6000 ± {np.std([0.5, 0.7], ddof=1) / math.sqrt(2):.4f}"


def _cells(runs):
    return aggregate(runs)


def test_figure_titles_legends_and_shared_y_axis(tmp_path):
    steps = 60
    runs = [_run("muadam lr=0.1", TASKS[0], 0, np.linspace(2.0, 0.5, steps)),
            _run("muadam lr=0.1", TASKS[1], 0, np.linspace(2.0, 0.3, steps)),
            _run("sgd lr=0.5", TASKS[0], 0, np.linspace(2.3, 1.5, steps)),
            _run("sgd lr=0.5", TASKS[1], 0, np.linspace(2.3, 0.9, steps))]
    cells = _cells(runs)
    curves = plot_curves(cells[0].family, cells, tmp_path / "c.png")
    assert curves["title"] == "mumlp-w*-d3_fashionmnist-28x28x1"  # the tasks' own family, not "mlp-w*-..."
    assert "diverged" not in curves["title"] and not any("diverged" in lab for lab in curves["labels"])
    assert curves["labels"] == ["muadam lr=0.1", "sgd lr=0.5"]
    assert len(set(curves["ylims"])) == 1 and len(set(curves["yscales"])) == 1  # every panel the same y axis
    assert curves["legend_clear"]
    width = plot_vs_width(cells[0].family, cells, tmp_path / "w.png")
    assert width["title"] == "mumlp-w*-d3_fashionmnist-28x28x1" and width["legend_clear"]
    assert width["labels"] == ["muadam lr=0.1", "sgd lr=0.5"]

    # a diverged seed: now the note is there, and the panels still share one axis
    runs.append(_run("sgd lr=0.5", TASKS[1], 1, list(np.linspace(2.3, 50.0, 10)) + [float("nan")], diverged=True))
    curves = plot_curves(cells[0].family, _cells(runs), tmp_path / "c2.png")
    assert curves["title"].endswith("(dashed: diverged seeds)") and "sgd lr=0.5 (diverged)" in curves["labels"]
    assert len(set(curves["ylims"])) == 1


def test_mup_and_sp_in_one_figure_are_both_named(tmp_path):
    sp = TASKS[0].replace("mumlp", "mlp")
    cells = _cells([_run("mup_small_fc_mlp", TASKS[0], 0, [1.0, 0.5]), _run("small_fc_mlp", sp, 0, [1.0, 0.8])])
    assert plot_vs_width(cells[0].family, cells, tmp_path / "w.png")["title"] == \
        "mumlp / mlp-w*-d3_fashionmnist-28x28x1"


@pytest.mark.parametrize("n", [1, 2])
def test_report_dir_name(tmp_path, n):
    from mulo.evaluate.report import default_report_dir

    dirs = [tmp_path / f"run{i}" for i in range(n)]
    assert default_report_dir(dirs) == tmp_path / ("report_run0" + ("+1more" if n == 2 else ""))
