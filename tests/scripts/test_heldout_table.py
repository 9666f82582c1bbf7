"""scripts/heldout_table.py: the held-out suite's rows in one table, each learned optimizer's final loss against
tuned MuAdam's (hand-computed ratios and verdicts); an empty folder is one error line, exit 2."""

import importlib.util
import json

from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("heldout_table", REPO / "scripts" / "heldout_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(run, manifest, finals, diverged=()):
    """A meta-test run directory: per task, one seed per final loss, 20 logged steps, the last one at that loss (the
    tail-mean of 5% of 20 steps is the last step's loss); ``diverged``: (task, seed) pairs."""
    for task, losses in finals.items():
        for seed, final in enumerate(losses):
            d = run / task / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 9.0 if s < 19 else final})
                                                     + "\n" for s in range(20)))
            (d / "summary.json").write_text(json.dumps({"task": task, "seed": seed,
                                                        "diverged": (task, seed) in diverged}))
    (run / "meta_test.json").write_text(json.dumps(manifest))


def test_table_ratios_and_verdicts(tmp_path, capsys):
    mod = _script()
    adam = {"optimizer": "muadam", "optimizer_info": {"hparams": {"learning_rate": 0.03}}}
    lo_a = {"optimizer": "mup_small_fc_mlp", "optimizer_info": {"checkpoint_extra": {"source": "pretrained:gen"}}}
    lo_b = {"optimizer": "mup_small_fc_mlp", "optimizer_info": {"checkpoint_extra": {"source": "pretrained:fm"}}}
    t128, t256 = (f"mumlp-w{w}-d8_fashionmnist-28x28x1" for w in (128, 256))
    _run(tmp_path / "mlp" / "meta-test_muadam", adam, {t128: [1.0, 1.2], t256: [2.0, 2.0]})
    _run(tmp_path / "mlp" / "meta-test_gen", lo_a, {t128: [0.9, 0.9], t256: [2.2, 2.2]})
    _run(tmp_path / "mlp" / "meta-test_fm", lo_b, {t128: [1.1, 1.1], t256: [2.06, 2.04]}, diverged={(t256, 1)})
    (tmp_path / "empty_row").mkdir()
    (tmp_path / "unfinished_row" / "meta-test_muadam" / "task" / "seed0").mkdir(parents=True)  # no summary yet
    assert mod.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| row | task | MuAdam (tuned lr) |")
    assert "gen / MuAdam" in lines[0] and "fm / MuAdam" in lines[0]
    assert len(lines) == 4
    w128, w256 = lines[2], lines[3]
    assert "1.100 ± 0.100 (lr 0.03)" in w128  # MuAdam mean 1.1, se = std(ddof=1)/sqrt(2) = 0.1
    assert "0.818 ✓" in w128  # 0.9 / 1.1
    assert "1.000 ≈" in w128  # 1.1 / 1.1
    assert "1.100 ✗" in w256  # 2.2 / 2.0
    assert "1.030 ≈" in w256 and "(1/2 diverged)" in w256  # the one finished seed, 2.06 / 2.0


def test_empty_folder_is_one_error_line(tmp_path, capsys):
    assert _script().main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no meta-test runs")


def test_one_optimizer_split_over_two_run_dirs_is_one_column_and_a_clash_is_not(tmp_path, capsys):
    """A row's widths meta-tested by the same θ in two commands (disjoint tasks) are one column
    (mulo.evaluate.report_runs); two directories holding the same (task, seed) are told apart by their names."""
    from mulo.evaluate.report_runs import load_runs

    mod = _script()
    adam = {"optimizer": "muadam", "optimizer_info": {"hparams": {"learning_rate": 0.1}}}
    gen = {"optimizer": "mup_small_fc_mlp", "optimizer_info": {"checkpoint_extra": {"source": "pretrained:gen"}}}
    t128, t1024 = (f"mumlp-w{w}-d8_fashionmnist-28x28x1" for w in (128, 1024))
    row = tmp_path / "mlp_depth8"
    _run(row / "meta-test_muadam", adam, {t128: [1.0], t1024: [2.0]})
    _run(row / "meta-test_gen_w128+1024", gen, {t128: [0.5]})
    _run(row / "meta-test_gen_w1024", gen, {t1024: [3.0]})
    assert mod.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].count("/ MuAdam") == 1 and "gen / MuAdam" in lines[0]
    assert "0.500 ✓" in lines[2] and "1.500 ✗" in lines[3]  # 0.5 / 1.0 at w128, 3.0 / 2.0 at w1024
    _run(row / "meta-test_gen_again", gen, {t1024: [2.5]})  # the same (task, seed) a second time
    labels = {r.label for r in load_runs(sorted(row.glob("meta-test_gen*")), 0.05)}
    assert labels == {"meta-test_gen_w128+1024", "meta-test_gen_w1024", "meta-test_gen_again"}
