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
