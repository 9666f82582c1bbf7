"""The training loop of meta-test and sweeps: one task, one optimizer, any number of seeds (``TrainLoop``), and what a
run's outcome is (``RunResult``, ``run_summary``: one definition of the final train loss).

The loop runs ``steps_per_jit`` steps per jitted ``lax.scan`` call. ``use_bf16``: the forward/backward pass runs in
bf16 (params and float inputs cast down inside the loss), the params and optimizer state stay float32, integer labels
and token ids are never cast. A run whose loss becomes NaN/inf stops and is recorded as diverged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mulo.data.transfer import batch_decoder, host_kwargs, resident_images, wants_resident
from mulo.errors import MuloError
from mulo.evaluate.accumulate import value_and_grad_accumulated
from mulo.parallel import current_device
from mulo.tasks.precision import bf16_loss


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
    data_on_device: str = "auto"  # mulo.data.transfer.wants_resident

    @classmethod
    def from_config(cls, cfg: Any) -> "LoopSettings":
        return cls(num_steps=cfg.num_inner_steps, batch_size=cfg.local_batch_size,
                   steps_per_jit=cfg.test_steps_per_jit, test_interval=cfg.test_interval, skip_test=cfg.skip_test,
                   eval_batch_size=cfg.eval_batch_size, max_eval_examples=cfg.max_eval_examples,
                   use_bf16=cfg.use_bf16, log_every=cfg.log_every, progress=cfg.progress,
                   grad_accumulation=cfg.gradient_accumulation_steps, data_on_device=cfg.data_on_device)


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
        self._decode = batch_decoder(task.dataset)  # compiled once per loop, not once per seed
        self._resident: dict = {}  # device -> the train split's images there (data_on_device), placed once

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

    def _train_batches(self, shape: tuple[int, int], seed: int) -> Iterator[dict]:
        """Training chunks on this thread's default device: uint8 images (or, with the train split resident there,
        indices) decoded on the device into the task's batch."""
        dataset = self.task.dataset
        device = current_device()
        resident = wants_resident(self.s.data_on_device, dataset, [device])
        images = None
        if resident:
            if device not in self._resident:
                self._resident[device] = resident_images(dataset, ["train"], jax.device_put)["train"]
            images = self._resident[device]
        decode = self._decode
        return (decode(batch, images) for batch in dataset.batches("train", shape, seed,
                                                                  **host_kwargs(dataset, resident)))

    def run(self, seed: int, log: Callable[[int, dict], None] | None = None, desc: str | None = None) -> RunResult:
        s = self.s
        log = log or (lambda step, metrics: None)
        key = jax.random.PRNGKey(seed)
        init_key, train_key = jax.random.split(key)
        t_start = time.perf_counter()
        state = self._opt_init(self._init_params(init_key))
        eval_steps = self.eval_steps()
        max_chunk = min(s.steps_per_jit, s.num_steps)
        data = self._train_batches((max_chunk, s.batch_size), seed)
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
