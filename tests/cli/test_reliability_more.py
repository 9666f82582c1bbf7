"""Issue 28: the last inputs that crashed or were accepted, a sweep refused for its storage, a disk that fills during
meta-training, a checkpoint silently corrupted, noise around warnings, and a fuzz of bad values generated from the
config schema and the task-name grammar (all checked in this one process, without running anything).

The CLI cases run in-process through ``mulo.app.cli.main`` and stop in the checks before anything is created (the
helpers come from ``test_reliability``)."""

from __future__ import annotations

import errno
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from mulo.app.cli import main, parse
from mulo.app.config import SCHEMA
from mulo.errors import TaskError
from tests.cli.test_reliability import QUICKSTART, _library_dirs, mt, one_line, qs, run, sweep  # noqa: F401 (autouse fixture)


# ---------------------------------------------------------------------------------------------------------------------
# tracebacks that are now one line


@pytest.mark.parametrize("task, needle", [
    ("mumlp-w128\u00b2-d3_fashionmnist-28x28x1", "bad width '128\u00b2'"),  # str.isdigit() is true for '²'
    ("mumlp-w" + "9" * 400 + "-d3_fashionmnist-28x28x1", "bad width '999"),  # OverflowError in model init
    ("mumlp-w16-d\u0661_fashionmnist-28x28x1", "bad depth"),  # an Arabic-Indic 1: int() reads it, we do not
    ("mutransformer-w8-d1_tinyshakespeare-s" + "9" * 30 + "-vbyte", "bad sequence length"),
    ("muvit-w8-d1-p" + "9" * 30 + "_cifar10-32x32x3", "bad part '-p999"),
])
def test_task_sizes_that_crashed_are_one_line(tmp_path, capsys, task, needle):
    line = one_line(*run(qs(tmp_path / "O", "--task", task), capsys), needle)
    assert len(line) < 600
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("address, needle", [
    ("notahostport", "no ':port'"), ("127.0.0.1:99999", "port '99999'"), ("127.0.0.1:0", "port '0'"),
    ("[::1:1234", "bracketed IPv6"), ("::1:1234", "not a host name"), (":1234", "no host"),
    ("host:\u0661\u0662", "port"),
])
def test_a_bad_coordinator_address_is_one_line_before_anything_starts(tmp_path, capsys, address, needle):
    one_line(*run(qs(tmp_path / "O", "--coordinator_address", address, "--num_processes", "2", "--process_id", "0"),
                  capsys), "'coordinator_address'", "host:port", needle)
    assert not (tmp_path / "O").exists()


def test_good_coordinator_addresses_pass_validation(tmp_path):
    for address in ("127.0.0.1:1234", "[::1]:80", "node-1.cluster:65535"):
        assert parse(qs(tmp_path / "O", "--coordinator_address", address))[1].coordinator_address == address


@pytest.mark.parametrize("method, needle", [("bogus", "expected one of"), ("slurm", "finds no slurm launch")])
def test_a_bad_cluster_detection_method_is_one_line_without_jax_log_lines(tmp_path, capsys, monkeypatch, method,
                                                                         needle):
    from mulo import parallel

    monkeypatch.setattr(parallel.jax.distributed, "is_initialized", lambda: False)
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    one_line(*run(qs(tmp_path / "O", "--distributed", "on", "--cluster_detection_method", method), capsys),
             "cluster_detection_method", needle)
    assert not (tmp_path / "O").exists()


# ---- the Hugging Face hub: a bad HF_ENDPOINT, unsupported dtypes, bf16


def _safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file written by hand (8-byte little-endian header size, JSON header, the raw bytes), so that
    dtypes numpy has no type for can be stored."""
    header, body = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _hub_tensors(hidden: int = 4) -> dict[str, np.ndarray]:
    """The six MetaMLP tensors with values a bfloat16 holds exactly (multiples of 1/8 in [-2, 2])."""
    from mulo.optimizers import hub

    rng = np.random.default_rng(0)
    return {k: (rng.integers(-16, 17, size=s) / 8).astype(np.float32) for k, s in hub._expected_shapes(hidden).items()}


def _hub_folder(folder: Path, dtype: str, hidden: int = 4) -> Path:
    """A hub folder whose tensors are all BF16 or F32, or, for another dtype, whose network.input.weight has it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"input_size": 39, "hidden_size": hidden, "hidden_layers": 1}))
    tensors = {}
    for k, x in _hub_tensors(hidden).items():
        if dtype == "BF16":  # the top 16 bits of each float32 (exact: the low 16 bits are zero for these values)
            tensors[k] = ("BF16", x.shape, (x.view(np.uint32) >> 16).astype("<u2").tobytes())
        elif dtype == "F32" or k != "network.input.weight":
            tensors[k] = ("F32", x.shape, x.astype("<f4").tobytes())
        else:  # an 8-bit dtype numpy cannot hold
            tensors[k] = (dtype, x.shape, bytes(x.size))
    _safetensors(folder / "model.safetensors", tensors)
    return folder


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "I8"])
def test_a_hub_tensor_of_an_unsupported_dtype_is_one_line_naming_it(tmp_path, capsys, dtype):
    folder = _hub_folder(tmp_path / "hub", dtype)
    one_line(*run(mt(tmp_path / "O", "--optimizer", "mup_small_fc_mlp", "--checkpoint", str(folder)), capsys),
             f"network.input.weight as {dtype}", "supported dtypes are F32, F16, BF16, F64")
    assert not (tmp_path / "O").exists()


def test_a_bf16_hub_file_is_read_exactly_as_float32(tmp_path):
    from mulo.optimizers import hub

    _, theta16 = hub.read_hub_folder(_hub_folder(tmp_path / "bf16", "BF16"))
    _, theta32 = hub.read_hub_folder(_hub_folder(tmp_path / "f32", "F32"))
    want = _hub_tensors()
    np.testing.assert_array_equal(theta16["nn"]["w0"], want["network.input.weight"].T)
    for k in theta32["nn"]:
        assert theta16["nn"][k].dtype == np.float32
        np.testing.assert_array_equal(theta16["nn"][k], theta32["nn"][k])


@pytest.mark.parametrize("endpoint, needle", [
    ("http://localhost:99999", "Port out of range"), ("http://[::1", "Invalid IPv6 URL"),
    ("http://[zz]:80", "does not appear to be an IPv4 or IPv6"), ("ftp://example.org", "http(s) URL")])
def test_a_bad_hf_endpoint_is_one_line(tmp_path, capsys, monkeypatch, endpoint, needle):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    one_line(*run(mt(tmp_path / "O", "--optimizer", "mup_small_fc_mlp", "--checkpoint", "hf:btherien/mulo"), capsys),
             "bad HF_ENDPOINT", needle)
    assert not (tmp_path / "O").exists()


# ---- report on damaged metrics


def test_report_on_metrics_with_a_huge_number_and_a_lone_surrogate_key(tmp_path, capsys):
    train = tmp_path / "meta-train_run"
    train.mkdir()
    lines = [json.dumps({"step": s, "meta_loss": 2.0 - 0.1 * s, "meta_loss/mumlp-w8-d1_fashionmnist-28x28x1":
                         2.0 - 0.1 * s}) for s in range(1, 11)]
    lines.insert(3, '{"step": 4, "meta_loss": ' + "9" * 400 + "}")  # OverflowError in math.isfinite
    lines.insert(5, '{"step": 5, "meta_loss/\\udcff": 1.0}')  # a lone surrogate: matplotlib TypeError
    lines.insert(6, '{"step": ' + "9" * 400 + ', "meta_loss": 1.0}')
    (train / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    test = tmp_path / "meta-test_run" / "mumlp-w8-d1_fashionmnist-28x28x1" / "seed0"
    test.mkdir(parents=True)
    (test / "summary.json").write_text(json.dumps({"task": "mumlp-w8-d1_fashionmnist-28x28x1", "seed": 0,
                                                   "diverged": False, "diverged_step": None}))
    (test / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in range(1, 5))
                                        + '{"step": 5, "train_loss": ' + "9" * 400 + "}\n")
    out = tmp_path / "rep"
    rc = main(["report", str(train), str(tmp_path / "meta-test_run"), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    text = (out / "report.md").read_text()
    assert "\\udcff" in text and "| mean over tasks |" in text  # the damaged key is shown escaped
    assert (out / "meta_loss_meta-train_run.png").stat().st_size > 0


# ---- a sweep refused for its storage writes nothing; a password is never stored nor printed


def test_a_sweep_refused_for_its_storage_leaves_nothing_and_the_corrected_rerun_is_not_refused(tmp_path, capsys,
                                                                                               monkeypatch):
    import mulo.app.commands.sweep as sweep_module

    garbage = tmp_path / "not_a_db.sqlite"
    garbage.write_bytes(b"this is not a SQLite database\n" * 100)
    one_line(*run(sweep(tmp_path / "O", "--storage", f"sqlite:///{garbage}", "--study_name", "s"), capsys),
             "cannot open Optuna storage", "DatabaseError")
    assert not (tmp_path / "O").exists()  # no study.json, no lock, no run directory
    ran = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda cfg, run_dir, **kw: ran.append(kw["study_name"]))
    good = tmp_path / "good.db"
    rc, err = run(sweep(tmp_path / "O", "--storage", f"sqlite:///{good}", "--study_name", "s"), capsys)
    assert rc == 0 and ran == ["s"], err


def test_a_storage_password_is_masked_in_errors_and_in_the_study_record(tmp_path, capsys):
    from mulo.app.sweep_study import STUDY_RECORD, claim_study, masked

    url = "postgresql://alice:s3cr3t-pw@db.example.org:5432/studies"
    line = one_line(*run(sweep(tmp_path / "O", "--storage", url), capsys), "alice:***@db.example.org")
    assert "s3cr3t" not in line and not (tmp_path / "O").exists()
    assert masked("mysql+pymysql://bob:pa@ss@h/db") == "mysql+pymysql://bob:***@h/db"
    assert masked("sqlite:////x/study.db") == "sqlite:////x/study.db"
    folder = tmp_path / "S"
    folder.mkdir()
    claim_study(folder, url, "s")
    record = (folder / STUDY_RECORD).read_text()
    assert "s3cr3t" not in record and json.loads(record)["storage"] == masked(url)
    with pytest.raises(Exception) as refused:
        claim_study(folder, url.replace("studies", "other"), "s")
    assert "holds the sweep study" in str(refused.value) and "s3cr3t" not in str(refused.value)


# ---- checkpoints: silent corruption, old checkpoints, noise; metrics.jsonl on resume

IDENT = {"run": "x", "num_processes": 1}


def _saved(directory: Path, steps=(1, 2)) -> dict:
    """Checkpoints of a state with a 256 KiB array (its data file is large enough to damage 4 KiB inside)."""
    import jax.numpy as jnp

    from mulo.meta.checkpoint import Checkpointer

    rng = np.random.default_rng(0)
    state = {"a": jnp.asarray(rng.normal(size=(256, 256)), jnp.float32), "b": jnp.ones(4)}
    ckpt = Checkpointer(directory, 5, IDENT)
    for s in steps:
        ckpt.save(s, {"a": state["a"] + s, "b": state["b"] * s})
    ckpt.close()
    return state


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_an_array_file_damaged_in_place_is_found_and_the_run_falls_back_in_one_line(tmp_path, capfd):
    from mulo.meta.checkpoint import CHECKSUMS, Checkpointer

    state = _saved(tmp_path)
    assert (tmp_path / "2" / CHECKSUMS).is_file()
    data = _largest_file(tmp_path / "2")
    size = data.stat().st_size
    assert size > 3 * 4096 and "/d/" in str(data)  # an array data file of orbax's OCDBT store
    with open(data, "r+b") as f:  # 4 KiB overwritten inside, size unchanged: orbax itself reads it without error
        f.seek(size // 2)
        f.write(bytes(4096))
    assert data.stat().st_size == size
    capfd.readouterr()
    step, restored = Checkpointer(tmp_path, 5, IDENT).restore(state)
    err = capfd.readouterr().err.strip().splitlines()
    assert step == 1 and np.array_equal(np.asarray(restored["a"]), np.asarray(state["a"] + 1))
    assert len(err) == 1 and err[0].startswith("warning: checkpoint") and "does not match its sha256" in err[0], err
    assert "resuming from step 1" in err[0]
    assert [p.name.split("-")[:2] for p in tmp_path.iterdir() if p.name.startswith("corrupt")] == [["corrupt", "2"]]
    assert (tmp_path / "1" / CHECKSUMS).is_file()  # nothing older touched


def test_checkpoints_from_before_checksums_still_load(tmp_path, capfd):
    from mulo.meta.checkpoint import CHECKSUMS, Checkpointer

    state = _saved(tmp_path)
    for s in (1, 2):
        (tmp_path / str(s) / CHECKSUMS).unlink()
    step, restored = Checkpointer(tmp_path, 5, IDENT).restore(state)
    assert step == 2 and np.array_equal(np.asarray(restored["a"]), np.asarray(state["a"] + 2))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("damaged, with_checksums", [
    ("_CHECKPOINT_METADATA", True), ("_CHECKPOINT_METADATA", False), ("default/array_metadatas/process_0", True),
    ("default/array_metadatas/process_0", False), ("default/_METADATA", False)])
def test_damaged_checkpoint_metadata_is_one_warning_line_without_library_noise(tmp_path, capfd, damaged,
                                                                               with_checksums):
    from mulo.meta.checkpoint import CHECKSUMS, Checkpointer

    state = _saved(tmp_path)
    if not with_checksums:
        for s in (1, 2):
            (tmp_path / str(s) / CHECKSUMS).unlink()
    path = tmp_path / "2" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated JSON
    capfd.readouterr()
    step, _ = Checkpointer(tmp_path, 5, IDENT).restore(state)
    err = capfd.readouterr().err.strip().splitlines()
    assert not [e for e in err if "absl" in e or "Exception ignored" in e or "Traceback" in e], err
    if step == 1:
        assert len(err) == 1 and err[0].startswith("warning: checkpoint") and "is corrupt" in err[0], err
    else:  # orbax reads an old checkpoint whose _CHECKPOINT_METADATA is damaged without needing it
        assert (damaged, with_checksums) == ("_CHECKPOINT_METADATA", False) and err == [], err


def test_damaged_metrics_lines_on_resume_are_one_warning_and_the_run_continues(tmp_path, capsys):
    from mulo.io import trim_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "meta_loss": 1.0}\n{"step": "two", "meta_loss": 0.9}\n\x00\xff\xfe garbage\n'
                     b'{"step": 3, "meta_loss": 0.8}\n{"step": true}\n{"step": 4, "meta_loss": 0.7}\n')
    trim_metrics(path, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: dropped 3 damaged line(s) (line 2, 3, 5"), err
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line_and_removes_only_the_partial_one(
        tmp_path, capfd, monkeypatch):
    """ENOSPC injected where orbax writes the arrays (in its writer thread), so orbax's own logging, threads and
    event loops run as on a full disk (checked by hand on a 7 MiB tmpfs: 470 lines of stderr before, 1 after)."""
    import jax.numpy as jnp
    from orbax.checkpoint._src.serialization import jax_array_handlers

    from mulo.errors import CheckpointError
    from mulo.meta.checkpoint import CHECKSUMS, Checkpointer, damaged_file

    state = _saved(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "1").rglob("*")} | \
             {p: p.stat().st_mtime_ns for p in (tmp_path / "2").rglob("*")}

    async def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jax_array_handlers, "_async_serialize_replica_slices", full)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test whatever happens
    capfd.readouterr()
    ckpt = Checkpointer(tmp_path, 5, IDENT)
    with pytest.raises(CheckpointError) as err:
        ckpt.save(3, {"a": state["a"] + 3, "b": jnp.ones(4)})
    ckpt.close()
    line = str(err.value)
    assert "\n" not in line and "cannot save checkpoint 3" in line and "no space left on device" in line, line
    assert "partial checkpoint was removed" in line and "checkpoints up to step 2 are kept" in line, line
    assert capfd.readouterr().err == ""  # no writer-thread traceback, no asyncio or absl lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "identity.json", "latest"]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing older touched
    assert damaged_file(tmp_path / "2") is None and (tmp_path / "2" / CHECKSUMS).is_file()
    assert (tmp_path / "latest").read_text().strip() == "2"


# ---- misleading messages


def test_lo_impl_pallas_with_a_velo_theta_says_velo_has_no_pallas_implementation(tmp_path, capsys):
    import jax

    from mulo.app.config import load_config
    from mulo.optimizers import build_learned, save_theta

    lo = build_learned(load_config(None, cli={"optimizer": "mup_velo", "velo_param_inits": 2,
                                              "velo_lstm_hidden_size": 4}))
    shapes = jax.eval_shape(lo.init_theta, jax.random.PRNGKey(0))  # zeros of θ's shapes: nothing to compile
    save_theta(tmp_path / "theta_final.msgpack", lo, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes))
    line = one_line(*run(mt(tmp_path / "O", "--optimizer", "mup_velo", "--checkpoint",
                            str(tmp_path / "theta_final.msgpack"), "--lo_impl", "pallas"), capsys),
                    "'lo.impl'", "expected one of reference, fused", "mup_velo")  # the config knows VeLO's list
    assert "bad header" not in line and not (tmp_path / "O").exists()


# ---------------------------------------------------------------------------------------------------------------------
# fuzz: bad values generated from the config schema and bad names from the task-name grammar, in this one process


HUGE = "9" * 400
_NUMBER_BAD = ["\u0661\u0662", "\u00b2", "\uff11\uff12", "\u0663.\u0665", "\u0661e3", "\u00bd", HUGE, "-" + HUGE,
               "1e400", "-1e400", "NaN", "+inf", "", "   ", "0b102", "1e", "--1", "1.5e", "0x"]
_SCHEMA_BAD = {
    "int": _NUMBER_BAD + ["1.5", "2.0"],
    "float": _NUMBER_BAD,
    "bool": ["\u0661", "\u0660", "tru", "", "nan", "2", "\uff54rue", HUGE],
    "list[int]": ["1,\u0661\u0662", "1,,x", HUGE, "1,nan", "", "\u00b2", "8,-" + HUGE],
    "list[float]": ["1,\u0661", HUGE + "," + HUGE, "", "1,1e400", "nan"],
    "list[str]": ["", ",,,", " , "],
    "dict": ["{'a': 1e400}", "{", "", "{1: 2}", "[]", HUGE, "{'x': float('nan')}"],
}


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def schema_bad_values(key: str) -> list[str]:
    """Values no key of this type accepts: wrong type, out of range (the schema's bounds), NaN, empty, huge, digits
    that are not ASCII, strings with NUL or a lone surrogate; choices misspelled (upper case, full width, padded)."""
    from mulo.app.schema import NON_EMPTY

    spec = SCHEMA[key]
    values = list(_SCHEMA_BAD.get(spec.type, []))
    if spec.type in ("int", "float"):
        if spec.min is not None:
            values += [repr(spec.min - 1) if spec.type == "int" else f"{spec.min - 1:g}", "-" + HUGE]
        if spec.max is not None:
            values.append(str(spec.max + 1))
    if spec.type == "str":
        values = ["\x00", "a\x00b", "\udcff", "x" * 5000]
        if key in NON_EMPTY:
            values += ["", " \t"]
        if spec.choices:
            c = str(spec.choices[0])
            values += ["", " ", c.upper() + "\u0301", _fullwidth(c), c + "\x00", c + "x"]
    return values


SCHEMA_CASES = [(key, value) for key in SCHEMA for value in schema_bad_values(key)]


@pytest.fixture
def validate_only(monkeypatch):
    """main() with the parser built once (building it is most of the time of a refused command line) and the
    command's handler replaced by one that fails the test: a value that got past validation would start the run."""
    import mulo.app.cli as cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)

    def started(name):
        raise AssertionError(f"{name} was started: a bad value was accepted")

    monkeypatch.setattr(cli, "_handler", started)


def test_every_key_refuses_generated_bad_values_in_one_line(tmp_path, capsys, validate_only):
    assert len(SCHEMA_CASES) >= 600 and {k for k, _ in SCHEMA_CASES} == set(SCHEMA)
    out = tmp_path / "O"
    for key, value in SCHEMA_CASES:
        argv = ["meta-train", "--config", QUICKSTART, f"--{key}={value}"]
        if key != "output_dir":
            argv += ["--output_dir", str(out)]
        rc, err = run(argv, capsys)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and len(err[0]) < 600, (key, value, err)
        assert key in err[0], (key, value, err[0])
    assert not out.exists() and list(tmp_path.iterdir()) == []


_SIZE_BAD = ["", "0", "-1", "\u00b2", "128\u00b2", "\u0661\u0662", "\uff11\uff12", "1.5", HUGE, "2147483648", " 8",
             "0x10", "1e3", "+8", "8_0"]
_DATASET_BAD = ["fashionmnist", "cifar10-32x32x1", "lm1b-s0-v32k", "lm1b-s\u0661-v32k", "tinyshakespeare-s-vbyte",
                f"tinyshakespeare-s{HUGE}-vbyte", "lm1b-s2147483648-v32k", "", "x" * 5000, "FASHIONMNIST-28X28X1"]
_IMAGE, _TEXT = "fashionmnist-28x28x1", "tinyshakespeare-s64-vbyte"


def grammar_bad_names() -> list[str]:
    """Bad task names from the grammar {model}-w{width}-d{depth}[-options]_{dataset}: each part wrong in turn."""
    from mulo.tasks.names import MODELS

    names = []
    for model in MODELS:
        data = _TEXT if "transformer" in model else _IMAGE
        names += [f"{model}-w{bad}-d1_{data}" for bad in _SIZE_BAD]
        names += [f"{model}-w64-d{bad}_{data}" for bad in _SIZE_BAD]
        names.append(f"{model}-w64-d1_{_IMAGE if data == _TEXT else _TEXT}")  # the other dataset kind
    names += [f"{model}-w64-d1_{bad}" for model in ("mumlp", "mutransformer") for bad in _DATASET_BAD]
    names += ["", "_", "mumlp-w8-d1", f"mumlp-w8-d1__{_IMAGE}", "mumlp_w8_d1", f"MUMLP-w8-d1_{_IMAGE}",
              f"mumlpx-w8-d1_{_IMAGE}", "mumlp-w8_" + _IMAGE, f"mumlp-d1-w8_{_IMAGE}", f"mumlp-w8-d1-p4_{_IMAGE}",
              "\x00", f"mumlp-w8-d1_{_IMAGE}\udcff", f"mutransformer-w100-d1_{_TEXT}", "mumlp-w8-d1_" + _IMAGE * 2]
    names += [f"muvit-w8-d1{opt}_{_IMAGE}" for opt in ("-p0", "-p3", "-p4-p4", "-h0", "-x1", "-p", "-p\u0661",
                                                         "-h3", "-p" + "9" * 12, "-h" + HUGE)]
    return names


def test_every_generated_bad_task_name_is_one_task_error_line():
    from mulo.tasks.names import parse_task_name

    names = grammar_bad_names()
    assert len(names) >= 200
    for name in names:
        with pytest.raises(TaskError) as err:
            parse_task_name(name)
        line = str(err.value)
        assert "\n" not in line and len(line) < 600, (name[:40], line)


def test_bad_task_names_through_the_cli_are_one_line_and_write_nothing(tmp_path, capsys):
    """Every 8th generated name through meta-train's own handler (where task names are parsed)."""
    out = tmp_path / "O"
    for name in grammar_bad_names()[::8]:
        if "," in name or not name.strip():
            continue
        rc, err = run(qs(out, "--task", name), capsys)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and len(err[0]) < 600, (name[:40], err)
    assert not out.exists()
