"""scripts/gpu_e2e.sh, the one-call GPU run of issue 23, in its CPU dry run (tiny sizes, small fake Fashion-MNIST
IDX files): every stage runs through the CLI, the SIGTERM + --auto_resume run equals the uninterrupted reference
bit for bit, the result files are the ones (and as few as) the device tool returns, and the comparison itself
catches a one-ulp difference in θ or a changed metric. Timings on CPU mean nothing and are not checked."""

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_e2e  # noqa: E402
import gpu_e2e_summary as summary  # noqa: E402

STAGES = ["train_a1", "train_a2", "reference", "train_main", "test_lo", "test_muadam", "report"]
RETURNED = {"e2e.md", "e2e.json", "e2e.log", "report.md", "artifacts.tar.gz"}  # + device_check.md/.json


def fake_fashion_mnist(folder, n_train=320, n_test=80):
    """IDX .gz files in Fashion-MNIST's layout: random 28×28 uint8 images whose brightness follows the label."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(rng.integers(0, 60, (n, 28, 28)) + 20 * y[:, None, None], 0, 255).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    return folder


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_e2e")
    (tmp / "no-wheels").mkdir()
    fm = fake_fashion_mnist(tmp / "fm")
    out, work = tmp / "out", tmp / "work"
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", MULO_WHEELS=str(tmp / "no-wheels"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_e2e.sh"), "--platform", "cpu", "--out", str(out),
                           "--work", str(work), "--fashion_mnist_dir", str(fm), "--budget_s", "900"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, json.loads((out / "e2e.json").read_text())


def test_every_stage_runs_and_the_resume_is_bit_exact(dry_run):
    tmp, r = dry_run
    assert [s["stage"] for s in r["stages"]] == STAGES
    assert all(s["status"] == "ok" for s in r["stages"]), r["stages"]
    a1 = r["stages"][0]
    assert a1["sigterm_why"] == "planned" and a1["interrupted"]
    rc = r["resume_check"]
    assert rc["checked"] and rc["bitexact"] and rc["theta_bitexact"] and rc["metrics_identical"], rc
    assert rc["k1"] >= gpu_e2e.SIZES["cpu"]["sigterm_after"] and rc["M"] == rc["k1"] + 2
    log = (tmp / "out" / "e2e.log").read_text()
    assert "compiling (first step only)" in log and f"stopped by SIGTERM after step {rc['k1']}" in log
    t = r["timing"]
    assert t["outer_steps_done"] == 40  # the main training ran the (CPU-sized) recipe to its end
    assert t["compile_s"] > 0 and t["outer_step_s"] > 0 and t["inner_steps_per_s"] > 0
    assert 0.0 <= t["prefetch_wait_fraction"] <= 1.0


def test_meta_test_report_and_the_returned_files(dry_run):
    tmp, r = dry_run
    out = tmp / "out"
    files = {p.name for p in out.iterdir()}
    assert files == RETURNED  # the device tool returns at most 8 files, plainly named
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    rows = [x for x in r["meta_test"] if x.get("seed")]
    assert {(x["optimizer"].split("_")[0], x["task"].split("_")[0]) for x in rows} == {
        (o, f"mumlp-w{w}-d3") for o in ("mup", "muadam") for w in gpu_e2e.SIZES["cpu"]["widths"]}
    assert all(np.isfinite(x["final_train_loss"]) for x in rows)
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("report/") and n.endswith(".png") for n in names)
    assert sum(n.startswith("meta-test/") and n.endswith("summary.json") for n in names) == 2
    assert not [n for n in names if "/checkpoints/" in n]
    assert "bit-exact" in (out / "e2e.md").read_text() and "final train loss" in (out / "report.md").read_text()
    assert summary.lr_scan(tmp / "work" / "meta-test" / "muadam").keys() == {0.1}


def test_the_comparison_catches_one_ulp_and_a_changed_metric(dry_run, tmp_path):
    from mulo.layout import theta_step_path
    from mulo.optimizers import load_theta, save_theta

    tmp, r = dry_run
    k1, m = r["resume_check"]["k1"], r["resume_check"]["M"]
    resumed = next((tmp / "work" / "meta-train" / "A").glob("meta-train_*"))
    ref = shutil.copytree(next((tmp / "work" / "meta-train" / "R").glob("meta-train_*")), tmp_path / "R")
    assert summary.compare_runs(resumed, ref, k1, m)["bitexact"]
    lo, theta, extra = load_theta(theta_step_path(ref, m))
    leaf = np.asarray(theta["nn"]["w1"])
    theta["nn"]["w1"] = leaf.copy()
    theta["nn"]["w1"].flat[0] = np.nextafter(leaf.flat[0], np.float32(np.inf), dtype=np.float32)
    save_theta(theta_step_path(ref, m), lo, theta, extra=extra)
    got = summary.compare_runs(resumed, ref, k1, m)
    assert not got["theta_bitexact"] and not got["bitexact"] and 0 < got["theta_max_abs_diff"] < 1e-6
    lines = (ref / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[m - 1])
    rec["meta_loss"] = rec["meta_loss"] * (1 + 1e-7)
    lines[m - 1] = json.dumps(rec)
    (ref / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    first = summary.compare_runs(resumed, ref, k1, m)["first_difference"]
    assert first["step"] == m and first["key"] == "meta_loss" and first["where"] == "after the resume"


def test_a_budget_too_small_skips_every_stage_and_still_writes_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # main() sets defaults in os.environ for its stages: keep them here
    rc = gpu_e2e.main(["--platform", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                       "--budget_s", "3"])
    r = json.loads((tmp_path / "out" / "e2e.json").read_text())
    assert rc == 0 and r["stages"] and all(s["status"] == "skipped" for s in r["stages"])
    assert r["environment"]["platform"] == "cpu" and "Not checked" in (tmp_path / "out" / "e2e.md").read_text()


def test_gpu_mode_without_a_gpu_is_one_error_line_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    rc = gpu_e2e.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --platform gpu but JAX sees cpu"), err
    assert json.loads((tmp_path / "out" / "e2e.json").read_text())["stages"] == []
