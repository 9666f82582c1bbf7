"""Meta-test: train fresh tasks with a learned (from a checkpoint) or hand-designed optimizer.

    python src/main.py meta-test --config config/meta_test/...py --optimizer mup_small_fc_mlp \
        --checkpoint checkpoints/<meta-train run> --task mumlp-w128-d3_...,mumlp-w1024-d3_... --num_runs 5

Where the results go (``report`` reads them)::

    <output_dir>/<run_name>/
        config.py                      resolved config
        meta_test.json                 optimizer (label, checkpoint, LO hyper-parameters) and one entry per run
        <task>/seed<k>/metrics.jsonl   one line per step: step, train_loss, step_time (+ test_loss, test_accuracy
                                       every test_interval steps and at the last step)
        <task>/seed<k>/summary.json    the run's outcome: finished/diverged, final and tail-mean train loss, ...

Run ``r`` of ``num_runs`` uses seed ``cfg.seed + r`` for both the initialisation and the data order, so seeds differ
across runs and repeat across invocations (and across tasks, which makes widths paired comparisons).

The learned optimizer comes from ``--checkpoint`` (a meta-train run directory, its ``checkpoints/latest``, or a theta
file: see ``resolve_checkpoint``) or ``--wandb_checkpoint_id entity/project/run_id`` (the run's theta file is
downloaded to ``<output_dir>/wandb_checkpoints/<entity>_<project>_<run_id>/``; all wandb access goes through
``wandb_api``). Its hyper-parameters come from the checkpoint (``load_theta``), never from the command line; the run
directory's name and config.py record them.

A run whose loss becomes NaN/inf stops, is recorded as diverged, and the other runs go on. A finished run with the
same settings is not repeated when the command is run again (its summary is reused); an unfinished or different one
is moved aside (``seed<k>.old-<time>``), never appended to or deleted.

``--use_bf16 true``: the forward/backward pass runs in bf16 (params and float inputs cast down inside the loss), the
params and optimizer state stay float32, integer labels and token ids are never cast.

The training loop (``TrainLoop``) runs ``test_steps_per_jit`` steps per jitted ``lax.scan`` call; sweeps reuse it.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mulo.config import Config
from mulo.errors import CheckpointError, ConfigError, MuloError
from mulo.evaluate.accumulate import value_and_grad_accumulated
from mulo.io import atomic_write_json, read_jsonl
from mulo.registry import HAND_DESIGNED

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
MANIFEST = "meta_test.json"

# ---------------------------------------------------------------------------------------------------------------------
# locating a learned optimizer's theta file

# Meta-training writes (mulo.meta.train): <run>/theta/theta_step<N>.<ext> at every save, <run>/theta_final.<ext> at the
# end, and <run>/checkpoints/latest (text: the newest step N of the full orbax state in <run>/checkpoints/<N>/).


def _step_of(path: Path) -> int:
    """The largest integer in a file name (``theta_step500.msgpack`` -> 500); -1 when there is none."""
    digits = "".join(c if c.isdigit() else " " for c in Path(path).name).split()
    return max((int(d) for d in digits), default=-1)


def _is_theta_name(name: str) -> bool:
    low = name.lower()
    return (("theta" in low or "global_step" in low) and not low.startswith(".")
            and not low.endswith((".tmp", ".json", ".lock", ".partial")))


def _theta_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for sub in (folder, folder / "theta"):
        if sub.is_dir():
            found += [p for p in sub.iterdir() if p.is_file() and _is_theta_name(p.name)]
    return found


def _theta_of_step(run: Path, step: int, pointer: Path) -> Path:
    hits = [p for p in _theta_files(run) if p.name.startswith(f"theta_step{step}.") or p.stem == f"theta_step{step}"]
    if not hits:
        raise CheckpointError(f"{pointer} points at step {step}, but {run / 'theta'} has no theta_step{step} file")
    return hits[0]


def _run_dir_of(path: Path) -> Path:
    """The meta-train run directory that holds ``path`` (a pointer or step folder inside ``checkpoints/``)."""
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _follow_pointer(pointer: Path) -> Path:
    """A ``latest`` pointer: a step number (meta-train's checkpoints/latest), a path, or a symlink."""
    if pointer.is_symlink():
        try:
            return pointer.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link, or one that points to itself (a loop)
            raise CheckpointError(f"checkpoint pointer {pointer} is a broken symbolic link (missing target or a "
                                  f"loop): point it at a theta file or pass the run directory") from None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint pointer {pointer}: {exc}") from None
    if not text:
        raise CheckpointError(f"checkpoint pointer {pointer} is empty")
    first = text.splitlines()[0].strip()
    if first.isdigit():
        return _theta_of_step(_run_dir_of(pointer), int(first), pointer)
    target = Path(first)
    return target if target.is_absolute() else pointer.parent / target


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The theta file meant by ``path``. Accepted:

    * a theta file (``save_theta``'s output, e.g. ``<run>/theta_final.*`` or ``<run>/theta/theta_step500.*``);
    * a meta-train run directory: its newest theta file (``theta_final`` or the latest ``theta_step<N>``);
    * a ``latest`` pointer (``<run>/checkpoints/latest`` holding a step number, or a file/symlink naming a path);
    * a ``<run>/checkpoints/`` folder or one of its ``<N>/`` step folders (the theta file of that step).

    Raises ``CheckpointError`` (one line) when nothing usable is found."""
    p = Path(path).expanduser()
    for _ in range(5):
        if not p.exists() and not p.is_symlink():
            raise CheckpointError(f"checkpoint not found: {p}")
        if p.name == "latest" and not p.is_dir():
            p = _follow_pointer(p)
            continue
        if p.is_file():
            return p
        if p.is_dir():
            if p.parent.name == "checkpoints" and p.name.isdigit():  # an orbax step folder
                return _theta_of_step(_run_dir_of(p), int(p.name), p)
            if p.name == "checkpoints" and (p / "latest").exists():
                p = p / "latest"
                continue
            files = _theta_files(p)
            if files:  # newest first by modification time; at equal times the final file, then the larger step
                return max(files, key=lambda f: (f.stat().st_mtime, f.stem == "theta_final", _step_of(f)))
            for pointer in (p / "latest", p / "checkpoints" / "latest"):
                if pointer.exists():
                    p = pointer
                    break
            else:
                raise CheckpointError(f"no theta file in {p}: expected a meta-train run directory (theta_final.* or "
                                      f"theta/theta_step<N>.*), its checkpoints/latest, or a theta file")
            continue
        break
    raise CheckpointError(f"cannot resolve checkpoint {path}: expected a theta file, a 'latest' pointer or a "
                          f"meta-train run directory")


# ---------------------------------------------------------------------------------------------------------------------
# wandb: the one place that talks to the wandb public API


def wandb_api() -> Any:
    """The wandb public API object (``wandb.Api``); tests pass a fake with ``run(path).files()`` instead."""
    import wandb

    return wandb.Api(timeout=30)


def fetch_wandb_checkpoint(run_path: str, dest: str | os.PathLike,
                           api_factory: Callable[[], Any] = wandb_api) -> Path:
    """Download the theta file of the wandb run ``entity/project/run_id`` into ``dest``; return its path.

    The run's files whose names look like theta files (``theta`` or ``global_step`` in the name) are candidates;
    ``theta_final.*`` wins, else the one with the largest step number. Any failure (offline, no API key, unknown
    run, no theta file) raises ``CheckpointError`` with one line."""
    parts = run_path.strip().strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"bad value {run_path!r} for config key 'wandb_checkpoint_id': expected "
                          f"entity/project/run_id")
    run_path = "/".join(parts)
    try:
        api = api_factory()
        run = api.run(run_path)
        files = list(run.files())
    except MuloError:
        raise
    except Exception as exc:  # network errors, auth errors, wandb.errors.CommError for unknown runs, ...
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"cannot fetch wandb run {run_path} ({type(exc).__name__}: {msg}); wandb may be "
                              f"offline or the run unknown: download its theta file and pass --checkpoint PATH"
                              ) from None
    candidates = [f for f in files if _is_theta_name(Path(f.name).name)]
    if not candidates:
        names = ", ".join(sorted(f.name for f in files)[:10]) or "none"
        raise CheckpointError(f"wandb run {run_path} has no theta file (its files: {names})")
    best = max(candidates, key=lambda f: (Path(f.name).stem == "theta_final", _step_of(Path(f.name))))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        best.download(root=str(dest), replace=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"cannot download {best.name} from wandb run {run_path} ({type(exc).__name__}: "
                              f"{msg})") from None
    path = dest / best.name
    if not path.is_file():
        raise CheckpointError(f"downloading {best.name} from wandb run {run_path} produced no file at {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# which optimizer


@dataclass(frozen=True)
class OptimizerSource:
    """How to build the optimizer for a task, and what to record about it."""

    name: str  # cfg.optimizer, or the learned optimizer's name from its checkpoint
    make: Callable[[Any], Any]  # task -> Optimizer
    info: dict = field(default_factory=dict)  # checkpoint path, hyper-parameters (JSON-able)
    learned: tuple | None = None  # (lo, theta) for a learned optimizer


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


HAND_KEYS = ("learning_rate", "beta1", "beta2", "weight_decay", "sgd_momentum", "warmup_steps", "cosine_decay",
             "end_lr_ratio", "mup_input_mult", "mup_output_mult", "mup_hidden_lr_mult")


def optimizer_source(cfg: Config, download_dir: str | os.PathLike | None = None,
                     api_factory: Callable[[], Any] = wandb_api) -> OptimizerSource:
    """The optimizer of ``cfg``: hand-designed from the config, learned from ``checkpoint`` / ``wandb_checkpoint_id``
    (its hyper-parameters come from the checkpoint)."""
    if cfg.optimizer in HAND_DESIGNED:
        if cfg.checkpoint or cfg.wandb_checkpoint_id:
            raise ConfigError(f"optimizer {cfg.optimizer!r} is hand-designed and takes no checkpoint: drop "
                              f"--checkpoint/--wandb_checkpoint_id or choose a learned optimizer")
        from mulo.optimizers import build_optimizer

        info = {"hparams": {k: cfg[k] for k in HAND_KEYS}}
        return OptimizerSource(name=cfg.optimizer, make=lambda task: build_optimizer(cfg, task), info=info)

    if cfg.checkpoint and cfg.wandb_checkpoint_id:
        raise ConfigError("give either --checkpoint or --wandb_checkpoint_id, not both")
    if cfg.wandb_checkpoint_id:
        dest = Path(download_dir) if download_dir is not None else Path(cfg.output_dir) / "wandb_checkpoints"
        path = fetch_wandb_checkpoint(cfg.wandb_checkpoint_id, dest, api_factory)
    elif cfg.checkpoint:
        from mulo.optimizers.sources import is_named

        # hf:OWNER/NAME, pretrained:NAME or a hub-layout folder: mulo.optimizers.sources loads it below
        path = None if is_named(cfg.checkpoint) else resolve_checkpoint(cfg.checkpoint)
    else:
        raise ConfigError(f"optimizer {cfg.optimizer!r} is a learned optimizer: pass --checkpoint (a meta-train run "
                          f"directory, its 'latest' or a theta file) or --wandb_checkpoint_id entity/project/run_id")
    from mulo.optimizers import load_theta

    if path is None:
        from mulo.optimizers.sources import load_source

        lo, theta, extra = load_source(cfg.checkpoint, impl=cfg.lo_impl)
        path = extra["path"]  # the θ or weights file read
    else:
        lo, theta, extra = load_theta(path, impl=cfg.lo_impl)  # θ brings the hyper-parameters, the config the impl
    if getattr(lo, "name", cfg.optimizer) != cfg.optimizer:
        raise CheckpointError(f"checkpoint {path} holds a {lo.name!r} learned optimizer, but --optimizer is "
                              f"{cfg.optimizer!r}")
    info = {"checkpoint": str(Path(path).resolve()), "hparams": _jsonable(getattr(lo, "hparams", {})),
            "checkpoint_extra": _jsonable(extra or {})}
    if cfg.wandb_checkpoint_id:
        info["wandb_checkpoint_id"] = cfg.wandb_checkpoint_id
    return OptimizerSource(name=lo.name, make=lambda task: lo.opt_fn(theta, task.update_scales), info=info,
                           learned=(lo, theta))


# ---------------------------------------------------------------------------------------------------------------------
# bf16


# one definition for meta-train and meta-test (mulo.tasks.precision); the names stay importable from here
from mulo.tasks.precision import bf16_loss, cast_floats  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------------------------------
# the training loop


@dataclass(frozen=True)
class LoopSettings:
    num_steps: int
    batch_size: int
    steps_per_jit: int = 10
    test_interval: int = 50
    skip_test: bool = False
    eval_batch_size: int = 2048
    max_eval_examples: int | None = 10000
    use_bf16: bool = False
    log_every: int = 1
    progress: bool = True
    grad_accumulation: int = 1  # micro-batches per step (mulo.evaluate.accumulate); divides batch_size

    @classmethod
    def from_config(cls, cfg: Config) -> "LoopSettings":
        return cls(num_steps=cfg.num_inner_steps, batch_size=cfg.local_batch_size,
                   steps_per_jit=cfg.test_steps_per_jit, test_interval=cfg.test_interval, skip_test=cfg.skip_test,
                   eval_batch_size=cfg.eval_batch_size, max_eval_examples=cfg.max_eval_examples,
                   use_bf16=cfg.use_bf16, log_every=cfg.log_every, progress=cfg.progress,
                   grad_accumulation=cfg.gradient_accumulation_steps)


@dataclass
class RunResult:
    """The outcome of one training run."""

    task: str
    seed: int
    num_steps: int
    steps_completed: int
    diverged: bool
    diverged_step: int | None
    train_losses: list[float]
    final_train_loss: float | None  # last finite train loss
    test_loss: float | None = None  # at the last evaluation
    test_accuracy: float | None = None
    mean_step_time: float | None = None  # seconds per step, first (compiling) chunk excluded when possible
    wall_time: float = 0.0

    def tail_mean(self, frac: float) -> float:
        """Mean train loss over the last ``frac`` of the steps (inf for a diverged run)."""
        if self.diverged:
            return math.inf
        return tail_mean(self.train_losses, frac)

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "train_losses"}
        return out


def tail_mean(losses: Sequence[float], frac: float) -> float:
    """Mean of the last ``max(1, ceil(frac * n))`` values (inf if empty or non-finite)."""
    if not len(losses):
        return math.inf
    n = max(1, math.ceil(frac * len(losses)))
    value = float(np.mean(np.asarray(losses[-n:], dtype=np.float64)))
    return value if math.isfinite(value) else math.inf


def final_loss_text(frac: float) -> str:
    return f"mean train loss over the last {frac:g} of the steps"


def run_summary(result: "RunResult", frac: float) -> dict:
    """What a run's ``summary.json`` holds (meta-test and sweep trials alike). ``final_train_loss`` has one
    definition everywhere (the printed line, the sweep objective, the report): the mean train loss over the last
    ``frac`` (``sweep_objective_frac``) of the steps, None for a diverged run; ``last_train_loss`` is the last
    minibatch's."""
    out = result.summary()
    out["last_train_loss"] = out.pop("final_train_loss")
    out["final_train_loss"] = None if result.diverged else result.tail_mean(frac)
    out["tail_train_loss"] = result.tail_mean(frac)  # the same, inf for a diverged run (the sweep's objective)
    out["final_train_loss_def"] = final_loss_text(frac)
    return out


def _chunks(num_steps: int, steps_per_jit: int, eval_steps: set[int]) -> Iterator[tuple[int, int]]:
    """(start, length) segments covering [0, num_steps), at most ``steps_per_jit`` long, that end at every
    evaluation step."""
    start = 0
    while start < num_steps:
        end = min(start + steps_per_jit, num_steps)
        for s in sorted(eval_steps):
            if start < s < end:
                end = s
                break
        yield start, end - start
        start = end


class TrainLoop:
    """Train one task with one optimizer, any number of seeds; the jitted functions are compiled once per loop.

    ``run(seed, log)`` calls ``log(step, metrics)`` for every ``log_every``-th step (step = updates done) with
    ``train_loss`` (the loss of that step's batch before its update) and ``step_time``, plus ``test_loss`` /
    ``test_accuracy`` at evaluation steps (0, every ``test_interval``, the last step).
    """

    def __init__(self, task: Any, optimizer: Any, settings: LoopSettings):
        self.task = task
        self.opt = optimizer
        self.s = settings
        loss_fn = bf16_loss(task.loss) if settings.use_bf16 else task.loss
        eval_fn = bf16_loss(task.loss_and_accuracy) if settings.use_bf16 else task.loss_and_accuracy
        opt = optimizer
        grad_fn = value_and_grad_accumulated(loss_fn, settings.grad_accumulation)

        def one_step(carry, inputs):
            state, key = carry
            batch, step = inputs
            step_key = jax.random.fold_in(key, step)
            loss, grads = grad_fn(opt.params(state), batch, step_key)
            state = opt.update(state, grads, loss, step_key)
            return (state, key), loss

        def chunk(state, key, batches, start):
            steps = start + jnp.arange(jax.tree.leaves(batches)[0].shape[0])
            (state, _), losses = jax.lax.scan(one_step, (state, key), (batches, steps))
            return state, losses

        def evaluate(params, batch):
            loss, acc = eval_fn(params, batch)
            return loss.astype(jnp.float32), acc.astype(jnp.float32)

        self._chunk = jax.jit(chunk, donate_argnums=0)  # the state is replaced by the output: reuse its memory
        self._eval = jax.jit(evaluate)
        # eager: compiling the initialisers costs more than running them once per seed
        self._init_params = task.init
        self._opt_init = lambda p: opt.init(p, settings.num_steps)
        self._eval_set: list[tuple[dict, int]] | None = None

    def eval_steps(self) -> set[int]:
        if self.s.skip_test:
            return set()
        n = self.s.num_steps
        return set(range(0, n + 1, self.s.test_interval)) | {n}

    def _eval_batches(self) -> list[tuple[dict, int]]:
        if self._eval_set is None:
            items = []
            for batch in self.task.dataset.eval_batches("test", self.s.eval_batch_size, self.s.max_eval_examples):
                n = int(np.shape(batch["y"])[0])
                items.append((jax.tree.map(jnp.asarray, dict(batch)), n))
            if not items:
                raise MuloError(f"task {self.task.name}: the test split gave no evaluation batch")
            self._eval_set = items
        return self._eval_set

    def evaluate(self, params: Any) -> tuple[float, float]:
        """Test loss and accuracy, averaged over the evaluation chunks weighted by their size."""
        total = loss_sum = acc_sum = 0.0
        outs = [(self._eval(params, b), n) for b, n in self._eval_batches()]
        for (loss, acc), n in outs:
            loss_sum += float(loss) * n
            acc_sum += float(acc) * n
            total += n
        return loss_sum / total, acc_sum / total

    def run(self, seed: int, log: Callable[[int, dict], None] | None = None, desc: str | None = None) -> RunResult:
        s = self.s
        log = log or (lambda step, metrics: None)
        key = jax.random.PRNGKey(seed)
        init_key, train_key = jax.random.split(key)
        t_start = time.perf_counter()
        state = self._opt_init(self._init_params(init_key))
        eval_steps = self.eval_steps()
        max_chunk = min(s.steps_per_jit, s.num_steps)
        data = self.task.dataset.batches("train", (max_chunk, s.batch_size), seed)
        result = RunResult(task=self.task.name, seed=seed, num_steps=s.num_steps, steps_completed=0,
                           diverged=False, diverged_step=None, train_losses=[], final_train_loss=None)
        pending_test: dict = {}
        if 0 in eval_steps:
            loss, acc = self.evaluate(self.opt.params(state))
            result.test_loss, result.test_accuracy = loss, acc
            log(0, {"test_loss": loss, "test_accuracy": acc})
        bar = _progress(s.num_steps, desc or f"{self.task.name} seed {seed}", s.progress)
        times: list[tuple[float, int]] = []
        try:
            for start, length in _chunks(s.num_steps, max_chunk, eval_steps):
                batch = next(data)
                if length < max_chunk:
                    batch = jax.tree.map(lambda x: x[:length], batch)
                t0 = time.perf_counter()
                state, losses = self._chunk(state, train_key, batch, jnp.asarray(start, jnp.int32))
                losses = np.asarray(jax.device_get(losses), dtype=np.float64)
                dt = (time.perf_counter() - t0) / length
                times.append((dt, length))
                bad = np.flatnonzero(~np.isfinite(losses))
                upto = int(bad[0]) + 1 if bad.size else length
                end = start + length
                if not bad.size and end in eval_steps:
                    loss, acc = self.evaluate(self.opt.params(state))
                    result.test_loss, result.test_accuracy = loss, acc
                    pending_test = {"test_loss": loss, "test_accuracy": acc}
                for i in range(upto):
                    step = start + i + 1
                    loss_i = float(losses[i])
                    result.train_losses.append(loss_i)
                    metrics = {"train_loss": loss_i, "step_time": dt}
                    last = i == upto - 1
                    if last and pending_test:
                        metrics.update(pending_test)
                        pending_test = {}
                    if last or step % s.log_every == 0:
                        log(step, metrics)
                result.steps_completed = start + upto
                finite = [x for x in result.train_losses if math.isfinite(x)]
                result.final_train_loss = finite[-1] if finite else None
                bar.update(upto)
                bar.set_postfix(loss=f"{losses[upto - 1]:.4g}")
                if bad.size:
                    result.diverged = True
                    result.diverged_step = start + upto
                    result.test_loss = result.test_accuracy = None  # an earlier evaluation is not the outcome
                    log(result.diverged_step, {"diverged": True})
                    break
        finally:
            bar.close()
        result.wall_time = time.perf_counter() - t_start
        steady = times[1:] if len(times) > 1 else times
        result.mean_step_time = float(sum(t * n for t, n in steady) / max(1, sum(n for _, n in steady)))
        return result


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------------
# the meta-test command


def run_seeds(cfg: Config) -> list[int]:
    return [cfg.seed + r for r in range(cfg.num_runs)]


def seed_dir(run_dir: str | os.PathLike, task_name: str, seed: int) -> Path:
    return Path(run_dir) / task_name / f"seed{seed}"


def _settings_id(cfg: Config, source: OptimizerSource, task_name: str, seed: int) -> dict:
    """What must match for a finished run to be reused instead of repeated."""
    return {"task": task_name, "seed": seed, "optimizer": source.name, "num_steps": cfg.num_inner_steps,
            "batch_size": cfg.local_batch_size, "use_bf16": cfg.use_bf16, "optimizer_info": source.info,
            "mup": [cfg.mup_input_mult, cfg.mup_output_mult, cfg.mup_hidden_lr_mult]}


def _reusable(path: Path, ident: dict) -> dict | None:
    summary = path / SUMMARY
    if not summary.is_file():
        return None
    import json

    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("settings") == _jsonable(ident) else None


def _move_aside(path: Path) -> None:
    """An unfinished or different earlier run in ``path`` is kept, renamed, rather than deleted or appended to. Only
    called by the process that holds the run directory's lock, so the run moved aside has no live writer."""
    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.old-{stamp}")
        k = 1
        while target.exists():
            target = path.with_name(f"{path.name}.old-{stamp}-{k}")
            k += 1
        shutil.move(str(path), str(target))


def meta_test_runs(cfg: Config, tasks: Sequence[Any], source: OptimizerSource, run_dir: str | os.PathLike,
                   group: str | None = None, devices: Sequence[Any] | None = None) -> list[dict]:
    """Train every task for every seed; write metrics, summaries and the manifest; return the summaries (in task,
    seed order).

    The (task, seed) runs are independent, so with several local devices (``devices``, default
    ``mulo.parallel.local_device_pool()``) each device takes the next unfinished run: one worker thread per device
    under ``jax.default_device``, each with its own compiled loop per task. A run computes exactly what it computes
    alone on one device; only the order in which runs finish changes."""
    import threading

    from mulo.parallel import barrier, local_device_pool

    run_dir = Path(run_dir)
    settings = LoopSettings.from_config(cfg)
    group = group or run_dir.name
    manifest = {"optimizer": source.name, "optimizer_info": source.info, "tasks": [t.name for t in tasks],
                "seeds": run_seeds(cfg), "num_steps": cfg.num_inner_steps, "runs": []}
    jobs = [(task, seed) for task in tasks for seed in run_seeds(cfg)]
    done: dict[int, tuple[dict, dict]] = {}  # job index -> (summary, manifest entry)
    lock = threading.Lock()

    def entry(task, seed, diverged):
        return {"task": task.name, "seed": seed, "dir": str(seed_dir(run_dir, task.name, seed).relative_to(run_dir)),
                "diverged": diverged}

    def write_manifest():
        manifest["runs"] = [done[i][1] for i in sorted(done)]
        atomic_write_json(run_dir / MANIFEST, _jsonable(manifest))

    pending = []
    for i, (task, seed) in enumerate(jobs):
        old = _reusable(seed_dir(run_dir, task.name, seed), _settings_id(cfg, source, task.name, seed))
        if old is None:
            pending.append(i)
            continue
        print(f"[meta-test] {task.name} seed {seed}: already finished in {seed_dir(run_dir, task.name, seed)}, "
              f"reusing it")
        done[i] = (old, entry(task, seed, old["diverged"]))

    loops: dict[tuple, TrainLoop] = {}

    def run_job(i: int, device: Any) -> None:
        from mulo.runlog import RunLogger
        from mulo.startup import compiling_line

        task, seed = jobs[i]
        out = seed_dir(run_dir, task.name, seed)
        ident = _settings_id(cfg, source, task.name, seed)
        _move_aside(out)
        key = (task.name, getattr(device, "id", None))
        with lock:
            first = key not in loops
            if first:
                loops[key] = TrainLoop(task, source.make(task), settings)
        if first:
            where = f" on {device}" if device is not None else ""
            print(compiling_line("meta-test", task.name + where), flush=True)
        logger = RunLogger(out, cfg, group=group, name=f"{task.name}-seed{seed}",
                           job_type="meta-test", extra_config={"task_name": task.name, "run_seed": seed,
                                                               "optimizer_info": source.info})
        try:
            result = loops[key].run(seed, logger.log, desc=f"{task.name} seed {seed}")
        finally:
            logger.close()
        summary = {**run_summary(result, cfg.sweep_objective_frac), "optimizer": source.name,
                   "settings": _jsonable(ident)}
        atomic_write_json(out / SUMMARY, _jsonable(summary))
        state = "DIVERGED at step %d" % result.diverged_step if result.diverged else \
            f"final train loss {summary['final_train_loss']:.4f}"
        print(f"[meta-test] {task.name} seed {seed}: {state} ({result.wall_time:.1f}s)")
        with lock:
            done[i] = (summary, entry(task, seed, result.diverged))
            if jax.process_index() == 0:
                write_manifest()

    procs, me = jax.process_count(), jax.process_index()
    mine = pending[me::procs]  # several processes: each takes every procs-th unfinished run
    devices = list(local_device_pool() if devices is None else devices)
    if len(devices) <= 1 or len(mine) <= 1:
        for i in mine:
            run_job(i, None)
    else:
        _run_on_devices(mine, devices, run_job)
    if procs > 1:
        barrier("mulo-meta-test-runs")
        if me != 0:
            return [done[i][0] for i in sorted(done)]
        for i in set(pending) - set(mine):  # the other processes' runs, from their summaries
            task, seed = jobs[i]
            summary = _reusable(seed_dir(run_dir, task.name, seed), _settings_id(cfg, source, task.name, seed))
            if summary is None:
                raise MuloError(f"meta-test: {task.name} seed {seed} left no summary in "
                                f"{seed_dir(run_dir, task.name, seed)}")
            done[i] = (summary, entry(task, seed, summary["diverged"]))
    write_manifest()
    return [done[i][0] for i in sorted(done)]


def _run_on_devices(jobs: Sequence[int], devices: Sequence[Any], run_job: Callable[[int, Any], None]) -> None:
    """Run ``run_job(job, device)`` for every job, each device's worker taking the next job (``on_each_device``)."""
    import queue

    from mulo.parallel import on_each_device

    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)

    def work(device, failed):
        while not failed():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            run_job(job, device)

    on_each_device(list(devices)[:len(jobs)], work)


def build_tasks(cfg: Config, names: Sequence[str] | None = None) -> list[Any]:
    """The tasks of ``cfg.task`` (validated names; tasks on one dataset share it, so its data is loaded once)."""
    from mulo.tasks import TaskSettings, get_tasks

    return get_tasks(list(names if names is not None else cfg.task), TaskSettings.from_config(cfg))


def lo_keys(name: str) -> dict[str, str]:
    """Config key -> hyper-parameter of the learned optimizer ``name`` (its registration, ``mulo.registry``): the
    keys its θ file overrides; {} for a hand-designed optimizer."""
    from mulo.registry import LEARNED_OPTIMIZERS

    spec = LEARNED_OPTIMIZERS.get(name)
    return dict(spec.config_keys) if spec is not None else {}


def checkpoint_config(cfg: Config, source: OptimizerSource) -> Config:
    """``cfg`` with the LO's config keys (the Adafactor-MLP LOs: hidden_size, adafac_step_mult, adafac_exp_mult,
    lo_clip_grad, lo_eps_scaling) set from the checkpoint's hyper-parameters, so the run name and the saved config.py
    say what was actually used."""
    hp = source.info.get("hparams") or {}
    changes = {cfg_key: hp[hp_key] for cfg_key, hp_key in lo_keys(source.name).items() if hp_key in hp}
    try:
        return cfg.replace(**changes)
    except ConfigError:
        return cfg


def main(cfg: Config, args: Any = None, api_factory: Callable[[], Any] | None = None) -> int:
    """``meta-test`` command handler (``api_factory``: the wandb API, default ``wandb_api``).

    Everything is checked before the run directory is created: task names, the optimizer and its checkpoint, the
    run name and output_dir, the data, the memory a training step needs. The run directory is then locked for the
    whole run (``mulo.rundir.claim``), so a second meta-test aimed at it stops instead of interleaving."""
    from contextlib import nullcontext

    from mulo import preflight, startup
    from mulo.parallel import barrier, is_main_process
    from mulo.rundir import claim, run_dir_path, run_name, theta_label, write_config

    tasks = build_tasks(cfg)  # validate the task names before creating anything
    download = None
    if cfg.wandb_checkpoint_id:  # <output_dir>/wandb_checkpoints/<entity>_<project>_<run_id>/<theta file>
        download = Path(cfg.output_dir) / "wandb_checkpoints" / cfg.wandb_checkpoint_id.strip("/").replace("/", "_")
    source = optimizer_source(cfg, download, api_factory or wandb_api)
    if source.info.get("checkpoint"):
        fixed = checkpoint_config(cfg, source)
        for key in lo_keys(source.name):  # say so when the command line asked for something the checkpoint overrides
            if args is not None and hasattr(args, f"key__{key}") and cfg[key] != fixed[key]:
                print(f"[meta-test] ignoring --{key} {cfg[key]}: the checkpoint's learned optimizer has "
                      f"{key}={fixed[key]}")
        cfg = fixed
    theta = theta_label(source.info["checkpoint"]) if source.learned is not None else None  # in the run name
    run_dir = run_dir_path(cfg, "meta-test", theta)
    preflight.check_data(tasks, ["train"] + ([] if cfg.skip_test else ["test"]))
    preflight.check_loops(cfg, tasks, source.make, "meta-test")
    main_process = is_main_process()  # in a multi-process run, process 0 owns the run directory
    with claim(run_dir, "meta-test") if main_process else nullcontext():
        if main_process:
            write_config(run_dir, cfg)
            startup.announce("meta-test", cfg, run_dir, runs_under="<task>/seed<k>")
            print(f"[meta-test] {source.name} on {len(tasks)} task(s) x {cfg.num_runs} seed(s), "
                  f"{cfg.num_inner_steps} steps -> {run_dir}")
            if source.info.get("checkpoint"):
                print(f"[meta-test] learned optimizer from {source.info['checkpoint']} with hyper-parameters "
                      f"{source.info.get('hparams')}")
        barrier("mulo-meta-test-run-dir")
        summaries = meta_test_runs(cfg, tasks, source, run_dir, group=run_name(cfg, "meta-test", theta))
    if not main_process:
        return 0
    n_div = sum(bool(s["diverged"]) for s in summaries)
    print(f"[meta-test] done: {len(summaries)} runs ({n_div} diverged); results in {run_dir}; "
          f"figures: python src/main.py report {run_dir}")
    return 0


def read_run(seed_path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(summary, metrics records) of one meta-test run directory ``<task>/seed<k>``."""
    import json

    seed_path = Path(seed_path)
    summary = json.loads((seed_path / SUMMARY).read_text(encoding="utf-8"))
    metrics = read_jsonl(seed_path / METRICS) if (seed_path / METRICS).is_file() else []
    return summary, metrics
