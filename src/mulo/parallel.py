"""Where arrays live: the one module that decides the placement of arrays on devices and processes.

    placement = Placement.create(data_parallel=cfg.data_parallel)   # a Mesh over every device of every process

Mesh axes ``("pairs", "batch")`` of shape (P, D) with P·D = ``jax.device_count()`` (all processes), devices in
(process, id) order, so each process owns whole rows when D divides its local device count:

* meta-training inner states, leaves (2, N, ...) (the ± branches of N antithetic pairs): axis 1 split over
  ``pairs``; so are the per-pair leaves (N, ...) (perturbations ε, the PES accumulators) on axis 0. Both branches of
  a pair live on the same device, and nothing crosses devices inside the inner loop except the batch mean when
  D > 1;
* data chunks (S, N, B, ...): N over ``pairs``, the batch B over ``batch`` (``data_parallel`` = D; default 1);
* θ, the outer optimizer state, counters, keys and metrics: replicated; the mean of the meta-gradient over pairs is
  an all-reduce that XLA inserts (jit with these shardings; GSPMD does the partitioning, no pmap).

N must be divisible by P and B by D (one ConfigError line otherwise; no padding). Every process computes the same
host-side index stream from the seed and builds only the block of each chunk that its own devices hold
(``local_block``), which ``global_array`` assembles into one global array.

Multi-process runs start with ``initialize_distributed`` (called by the CLI before JAX is used): automatic under
``mpirun``/``srun`` or with a coordinator address, explicit through the config keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mulo.errors import ConfigError, one_line
from mulo.registry import DISTRIBUTED_MODES

AXES = ("pairs", "batch")


# ---------------------------------------------------------------------------------------------------------------------
# processes


def is_main_process() -> bool:
    """Process 0 writes the run directory, metrics, wandb and θ files; the others only compute (and checkpoint)."""
    return jax.process_index() == 0


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launch_kind(env: Mapping[str, str] | None = None) -> str | None:
    """What launched this process as one of several: "mpi" (Open MPI / PMI), "slurm" (srun with several tasks),
    "explicit" (a coordinator address in the environment) or None (a single process)."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if (_env_int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE") or 1) > 1:
        return "mpi"
    if (_env_int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1) > 1 and env.get("SLURM_STEP_ID") is not None:
        return "slurm"
    return None


def distributed_kwargs(cfg: Any, env: Mapping[str, str] | None = None) -> dict | None:
    """The arguments of ``jax.distributed.initialize`` for this config and environment, or None for one process.

    ``distributed``: ``off`` never initialises; ``on`` always does (JAX's own cluster detection fills what the config
    leaves out); ``auto`` does when the config names a coordinator or the environment shows a multi-process launch.
    Under Open MPI without a ``cluster_detection_method`` we use ``mpi4py`` (JAX's own Open MPI detection reads
    variables that Open MPI 5 no longer sets)."""
    mode = cfg.distributed
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"bad value {mode!r} for config key 'distributed': expected one of "
                          f"{', '.join(DISTRIBUTED_MODES)}")
    if mode == "off":
        return None
    kind = launch_kind(env)
    explicit = {k: cfg[k] for k in ("coordinator_address", "num_processes", "process_id") if cfg[k] is not None}
    if mode == "auto" and not explicit and kind is None:
        return None
    method = cfg.cluster_detection_method
    if method is None and kind == "mpi" and not explicit:
        method = "mpi4py"
    kwargs = dict(explicit)
    if method is not None:
        kwargs["cluster_detection_method"] = method
    return kwargs


def initialize_distributed(cfg: Any) -> bool:
    """Start JAX's distributed runtime when the config or the launcher asks for it (see ``distributed_kwargs``).
    Must run before anything touches a JAX backend. Returns whether it initialised."""
    _check_detection_name(cfg.cluster_detection_method)
    kwargs = distributed_kwargs(cfg)
    if kwargs is None or jax.distributed.is_initialized():
        return False
    _check_detection_method(kwargs)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as exc:
        text = one_line(exc)
        raise ConfigError(f"cannot start jax.distributed with {kwargs}: {text}") from None
    return True


def _detections() -> dict[str, Any]:
    from jax._src.clusters import ClusterEnv  # the registry of JAX's cluster detections (no public API lists them)

    return {env.name: env for env in ClusterEnv._cluster_types if env.name}


def _check_detection_name(method: str | None) -> None:
    """A cluster_detection_method JAX does not have is one ConfigError line naming those it has (checked whether or
    not this run starts jax.distributed)."""
    if method is not None and method not in _detections():
        raise ConfigError(f"bad value {method[:80]!r} for config key 'cluster_detection_method': expected one of "
                          f"{', '.join(sorted(_detections()))} (JAX's cluster detections) or None")


def _check_detection_method(kwargs: Mapping[str, Any]) -> None:
    """JAX logs an absent cluster detection method as an error line and then fails on a missing coordinator
    address: say it in one ConfigError line instead."""
    method = kwargs.get("cluster_detection_method")
    if method is None:
        return
    if not _detections()[method].is_env_present() and "coordinator_address" not in kwargs:
        raise ConfigError(f"cluster_detection_method {method!r} finds no {method} launch here: start the processes "
                          f"under it, or give coordinator_address, num_processes and process_id")


def agree(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (a stop request that reached one process stops all)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------------------------------------
# the mesh


def _ordered(devices: Sequence[jax.Device]) -> list[jax.Device]:
    return sorted(devices, key=lambda d: (d.process_index, d.id))


@dataclass(frozen=True)
class Placement:
    """The mesh and every sharding of meta-training (see the module docstring)."""

    mesh: Mesh

    @classmethod
    def create(cls, data_parallel: int = 1, devices: Sequence[jax.Device] | None = None) -> "Placement":
        devices = _ordered(jax.devices() if devices is None else devices)
        n = len(devices)
        if data_parallel < 1 or n % data_parallel:
            raise ConfigError(f"data_parallel={data_parallel} must divide the number of devices ({n})")
        local = [d for d in devices if d.process_index == jax.process_index()]
        if len(local) % data_parallel:
            raise ConfigError(f"data_parallel={data_parallel} must divide the devices of each process "
                              f"({len(local)} here)")
        grid = np.asarray(devices, dtype=object).reshape(n // data_parallel, data_parallel)
        return cls(Mesh(grid, AXES))

    @classmethod
    def from_config(cls, cfg: Any) -> "Placement":
        return cls.create(data_parallel=cfg.data_parallel)

    @property
    def pair_shards(self) -> int:
        return int(self.mesh.shape["pairs"])

    @property
    def batch_shards(self) -> int:
        return int(self.mesh.shape["batch"])

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def describe(self) -> str:
        kind = self.mesh.devices.flat[0].platform
        procs = jax.process_count()
        return (f"{self.num_devices} {kind} device(s) in {procs} process(es), mesh pairs={self.pair_shards} x "
                f"batch={self.batch_shards}")

    def check(self, num_tasks: int, batch_size: int) -> None:
        """One line for shapes the mesh cannot split evenly (before anything is compiled or written)."""
        if num_tasks % self.pair_shards:
            raise ConfigError(f"num_tasks={num_tasks} perturbation pairs cannot be split over {self.pair_shards} "
                              f"device(s): use a multiple of {self.pair_shards}, or data_parallel to put devices on "
                              f"the batch instead")
        if batch_size % self.batch_shards:
            raise ConfigError(f"local_batch_size={batch_size} cannot be split over data_parallel="
                              f"{self.batch_shards} device(s): use a multiple of {self.batch_shards}")

    # ---- shardings ----------------------------------------------------------------------------------------------

    def spec(self, *axes: str | None) -> NamedSharding:
        return NamedSharding(self.mesh, P(*axes))

    @property
    def replicated(self) -> NamedSharding:
        return self.spec()

    @property
    def branches(self) -> NamedSharding:
        """Leaves with leading axes (2, N, ...): the pairs axis split."""
        return self.spec(None, "pairs")

    @property
    def per_pair(self) -> NamedSharding:
        """Leaves with leading axis (N, ...)."""
        return self.spec("pairs")

    @property
    def chunk(self) -> NamedSharding:
        """Data chunks (S, N, B, ...)."""
        return self.spec(None, "pairs", "batch")

    # ---- moving values ------------------------------------------------------------------------------------------

    def put(self, tree: Any, shardings: Any) -> Any:
        """``tree`` (a value every process holds whole, or global arrays) placed with ``shardings`` (a full tree of
        NamedShardings, or one for every leaf). Works across processes: each builds its own shards."""
        flat, treedef = jax.tree.flatten(tree)
        shards = (treedef.flatten_up_to(shardings) if not isinstance(shardings, jax.sharding.Sharding)
                  else [shardings] * len(flat))

        def one(x, sharding):
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return x
            if jax.process_count() == 1:
                return jax.device_put(x, sharding)
            host = np.asarray(jax.device_get(x))  # fully addressable here (a local or a replicated value)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return treedef.unflatten([one(x, s) for x, s in zip(flat, shards)])

    def local_block(self, global_shape: Sequence[int], sharding: NamedSharding | None = None) -> tuple[slice, ...]:
        """The box of ``global_shape`` that this process's devices hold under ``sharding`` (default: ``chunk``
        over the leading dims it covers). The whole array in a single-process run."""
        sharding = sharding or self.chunk
        shape = tuple(int(s) for s in global_shape)
        index_map = sharding.addressable_devices_indices_map(shape)
        lo, hi = list(shape), [0] * len(shape)
        for index in index_map.values():
            for d, sl in enumerate(index):
                start, stop, _ = sl.indices(shape[d])
                lo[d], hi[d] = min(lo[d], start), max(hi[d], stop)
        return tuple(slice(a, b) for a, b in zip(lo, hi))

    def global_chunk(self, local: Any, global_lead: Sequence[int]) -> Any:
        """Assemble this process's block of a data chunk (leaves (S, n, b, ...) of the global (S, N, B, ...),
        ``global_lead`` = (S, N, B)) into global arrays sharded as ``chunk``."""
        lead = tuple(int(s) for s in global_lead)

        def one(x):
            x = np.asarray(x)
            shape = lead + x.shape[len(lead):]
            if jax.process_count() == 1:
                return jax.device_put(x, self.chunk)
            return jax.make_array_from_process_local_data(self.chunk, x, shape)

        return jax.tree.map(one, local)

    def chunk_putter(self, global_lead: Sequence[int]) -> Callable[[Any], Any]:
        return lambda local: self.global_chunk(local, global_lead)


# ---------------------------------------------------------------------------------------------------------------------
# plain local splitting (the prefetcher's default when no placement is given)


def batch_sharding(ndim: int, batch_axis: int, devices: Sequence[jax.Device]) -> NamedSharding:
    """Split axis ``batch_axis`` of an ``ndim``-dimensional array over ``devices``; replicate the other axes."""
    mesh = Mesh(np.asarray(list(devices), dtype=object), ("batch",))
    spec = [None] * ndim
    spec[batch_axis] = "batch"
    return NamedSharding(mesh, P(*spec))


def put_on_devices(batch: Any, batch_axis: int, devices: Sequence[jax.Device]) -> Any:
    """``jax.device_put`` every array of ``batch``: one device gets it whole; several split ``batch_axis``."""
    devices = list(devices)
    if len(devices) == 1:
        return jax.device_put(batch, devices[0])

    def put(x):
        x = np.asarray(x)
        if x.ndim <= batch_axis or x.shape[batch_axis] % len(devices):
            raise ValueError(f"cannot shard an array of shape {x.shape} over {len(devices)} devices on axis "
                             f"{batch_axis}: the batch must be divisible by the number of local devices")
        return jax.device_put(x, batch_sharding(x.ndim, batch_axis, devices))

    return jax.tree.map(put, batch)


def local_device_pool() -> list[jax.Device]:
    """The devices this process runs independent jobs on (meta-test seeds, sweep trials): its own."""
    return _ordered(jax.local_devices())


def current_device() -> jax.Device:
    """The device this thread's new arrays go to: the one of ``jax.default_device`` (``on_each_device``'s
    workers), else the first local device."""
    device = jax.config.jax_default_device
    return device if isinstance(device, jax.Device) else jax.local_devices()[0]


def on_each_device(devices: Sequence[jax.Device], work: Callable[[jax.Device, Callable[[], bool]], None]) -> None:
    """Run ``work(device, failed)`` in one thread per device, each under ``jax.default_device(device)`` (so what it
    creates and runs lands there); ``failed()`` tells a worker that another one raised, so it stops taking work. The
    first exception is re-raised here once every thread has finished."""
    import threading

    errors: list[BaseException] = []

    def run(device):
        with jax.default_device(device):
            try:
                work(device, lambda: bool(errors))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,), name=f"mulo-device-{d.id}", daemon=True) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# a user's sharded parameters (FSDP-style): an optimizer's state placed like them


def _follow(shape: tuple[int, ...], param_shape: tuple[int, ...], sharding: NamedSharding) -> NamedSharding:
    """The sharding of a state array belonging to a parameter: the parameter's when the shapes are equal, else
    replicated (e.g. Adafactor's row / column factors, O(n) of an O(n²) matrix)."""
    return sharding if tuple(shape) == tuple(param_shape) else NamedSharding(sharding.mesh, P())


def place_like_params(state: Any, params: Any) -> Any:
    """``state`` (a NamedTuple of fields, e.g. a learned optimizer's) with every per-parameter array placed like its
    parameter (``_follow``) and everything else replicated over the params' mesh. Unchanged unless every param is a
    concrete array with a ``NamedSharding`` (nothing to follow otherwise, e.g. under jit)."""
    leaves, treedef = jax.tree.flatten(params)
    shardings = [getattr(p, "sharding", None) if isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer)
                 else None for p in leaves]
    if not leaves or not all(isinstance(s, NamedSharding) for s in shardings):
        return state
    replicated = NamedSharding(shardings[0].mesh, P())

    def place(field):
        try:
            per_param = treedef.flatten_up_to(field)
        except (ValueError, TypeError):
            return jax.tree.map(lambda x: jax.device_put(x, replicated), field)
        return treedef.unflatten([jax.tree.map(lambda a: jax.device_put(a, _follow(a.shape, p.shape, s)), sub)
                                  for sub, p, s in zip(per_param, leaves, shardings)])

    return type(state)(*[place(f) for f in state])
