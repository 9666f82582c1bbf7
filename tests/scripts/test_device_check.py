"""scripts/device_check.sh: the CPU dry run (tiny sizes) installs carried wheels offline the way the GPU machine does
(pip --no-index --find-links into a private folder on PYTHONPATH), runs every check and writes the markdown table
and the JSON, with the prefetch-wait fraction and the Pallas-vs-plain errors (numbers other than those are not
checked: CPU timings in CI mean nothing)."""

import base64
import hashlib
import json
import os
import subprocess
import zipfile

import pytest

from tests.conftest import REPO


def _wheel(folder, name="mulo_carried_probe", version="0.1"):
    """A minimal pure-Python wheel, written by hand (no build tools, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_check")
    wheels = tmp / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    (tmp / "list.txt").write_text("# carried\nmulo_carried_probe==0.1\n")
    out = tmp / "out"
    env = dict(os.environ, MULO_WHEELS=str(wheels), MULO_WHEEL_LIST=str(tmp / "list.txt"), PYTHON=os.sys.executable,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--platform", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


def test_dry_run_installs_the_carried_wheels_offline(dry_run):
    proc, report, _ = dry_run
    assert "installed 1 carried wheel(s)" in proc.stderr
    assert report["carried_wheels"] == {"mulo_carried_probe-0.1-py3-none-any.whl": "0.1"}


def test_dry_run_runs_every_check_and_writes_table_and_json(dry_run):
    _, report, md = dry_run
    checks = [r["check"] for r in report["rows"]]
    for name in ("tests", "pallas", "step", "prefetch", "meta-train", "meta-train prefetch", "w8192"):
        assert name in checks, checks
    assert not [r for r in report["rows"] if str(r["result"]).startswith(("error", "skipped"))], report["rows"]
    assert report["platform"] == "cpu" and report["jax"] and report["date"]
    tests = next(r for r in report["rows"] if r["check"] == "tests")
    assert tests["met"] and tests["counts"].get("passed", 0) >= 1
    steps = [r["setting"] for r in report["rows"] if r["check"] == "step"]
    assert any("μLO" in s for s in steps) and any("μVeLO fused" in s for s in steps), steps
    pallas = {r["precision"]: r["rel_err"] for r in report["rows"] if r["check"] == "pallas"}
    assert pallas["float32"] <= 1e-5 and 0 < pallas["bfloat16"] <= 1e-2
    prefetch = [r["setting"] for r in report["rows"] if r["check"] == "prefetch"]
    assert len(prefetch) == 2 and any("resident" in s for s in prefetch), prefetch  # uint8 and resident paths
    for r in report["rows"]:
        if "prefetch" in r["check"]:
            assert 0.0 <= r["wait_fraction"] <= 1.0
    assert "| check | setting | result | target | met |" in md
    assert md.count("\n| ") >= len(report["rows"]) + 1
    assert "bash scripts/device_check.sh --platform cpu" in md


def test_gpu_run_on_a_machine_without_gpu_is_one_error_line(tmp_path):
    env = dict(os.environ, PYTHON=os.sys.executable, JAX_PLATFORMS="cpu", MULO_WHEELS=str(tmp_path / "none"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("device_check: --platform gpu but JAX sees cpu")
