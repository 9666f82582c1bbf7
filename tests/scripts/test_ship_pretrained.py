"""scripts/ship_pretrained.py: a run's θ, config and meta-loss curves (per task and, of a mixed-family run, per
family) copied into pretrained/ byte for byte; a missing θ is one error line."""

import csv
import importlib.util
import json

import jax

from tests.conftest import REPO
from mulo.optimizers import learned_from_hparams, load_theta, save_theta


def _script(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("ship_pretrained", REPO / "scripts" / "ship_pretrained.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "PRETRAINED_DIR", tmp_path / "pretrained")
    return mod


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lo = learned_from_hparams("mup_small_fc_mlp", {"hidden_size": 4})
    save_theta(run / "theta_final.msgpack", lo, lo.init_theta(jax.random.PRNGKey(0)))
    (run / "config.py").write_text("optimizer = 'mup_small_fc_mlp'\n")
    rows = []
    for step in range(40):
        r = {"step": step, "meta_loss": 2.0 - step / 40, "meta_loss/mumlp-w8-d2_x": 1.0 + step,
             "meta_loss_family/mlp": 0.5 * step}
        if step % 2:  # a family logged only on the steps where one of its tasks was sampled
            r["meta_loss_family/vit"] = 3.0
        rows.append(r)
    rows.append({"step": 40, "test_loss": 1.0})  # a record without a meta-loss is not a curve row
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_ship_writes_theta_config_and_family_curves(monkeypatch, tmp_path):
    mod = _script(monkeypatch, tmp_path)
    run = _run_dir(tmp_path)
    assert mod.main([str(run), "toy"]) == 0
    out = tmp_path / "pretrained"
    assert (out / "toy.msgpack").read_bytes() == (run / "theta_final.msgpack").read_bytes()
    assert load_theta(out / "toy.msgpack")[0].name == "mup_small_fc_mlp"
    assert (out / "toy.config.py").read_text() == (run / "config.py").read_text()
    with open(out / "toy.meta_loss.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["step", "meta_loss", "meta_loss/mumlp-w8-d2_x", "meta_loss_family/mlp",
                        "meta_loss_family/vit"]
    assert len(table) == 41  # 40 meta-loss rows, the test record left out
    assert [float(x) for x in table[3][:4]] == [2.0, 2.0 - 2 / 40, 3.0, 1.0]
    assert table[1][4] == "nan" and float(table[2][4]) == 3.0
    assert (out / "toy.meta_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ship_step_cuts_the_curve_and_missing_theta_is_one_line(monkeypatch, tmp_path, capsys):
    mod = _script(monkeypatch, tmp_path)
    run = _run_dir(tmp_path)
    (run / "theta").mkdir()
    (run / "theta" / "theta_step9.msgpack").write_bytes((run / "theta_final.msgpack").read_bytes())
    assert mod.main([str(run), "cut", "--step", "9"]) == 0
    with open(tmp_path / "pretrained" / "cut.meta_loss.csv") as f:
        assert len(list(csv.reader(f))) == 11
    assert mod.main([str(run), "gone", "--step", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no theta file") and "theta_step7" in err[0]
    assert not (tmp_path / "pretrained" / "gone.msgpack").exists()
