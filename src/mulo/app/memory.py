"""Will a step fit in memory? A lower-bound estimate made before anything is compiled, and the machine's capacity.

The estimate counts only buffers that must exist at once, so it never exceeds what the step really needs:

    device bytes = copies x (parameters + optimizer state) + meta-parameters x meta copies + batch buffers on device
    host bytes   = batch buffers x (prefetched + being built)

Parameter and state sizes are exact (``jax.eval_shape`` of the initialisers: abstract, nothing allocated or
compiled). Activations, XLA temporaries and the dataset itself are not counted, so a run the estimate lets through
may still run out of memory: the CLI then reports XLA's RESOURCE_EXHAUSTED as one line (``is_out_of_memory``).

Capacity: the sum of the local accelerators' ``memory_stats()["bytes_limit"]`` (times the processes of a
multi-process run); on a CPU backend (no memory stats) device and host are the same RAM, ``MemTotal`` of
/proc/meminfo (else ``os.sysconf``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from mulo.errors import MuloError, one_line


class OutOfMemory(MuloError):
    """The run cannot fit in this machine's memory."""


@dataclass(frozen=True)
class Footprint:
    """Bytes a run needs at least, split by where they live, with the biggest parts named for the message."""

    device: int
    host: int
    parts: tuple[tuple[str, int], ...] = ()


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or ShapeDtypeStructs) of a pytree."""
    import jax

    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def example_bytes(spec: Mapping[str, tuple[tuple[int, ...], Any]]) -> int:
    """Bytes of one example of a dataset's ``example_spec()`` ({name: (shape, dtype)})."""
    return int(sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in spec.values()))


def footprint(model: int, copies: int, batch: int, prefetch: int, theta: int = 0, theta_copies: int = 0,
              host_batches: int | None = None) -> Footprint:
    """The pure estimate: ``copies`` x ``model`` (one model's parameters and optimizer state) + ``theta`` x
    ``theta_copies`` + ``batch`` x ``prefetch`` on the device, and ``batch`` x ``host_batches`` (default
    ``prefetch``) on the host. All sizes in bytes."""
    models = int(copies) * int(model)
    metas = int(theta) * int(theta_copies)
    dev_batches = int(batch) * int(prefetch)
    host = int(batch) * int(prefetch if host_batches is None else host_batches)
    parts = (("model parameters and optimizer states", models), ("meta-parameters", metas),
             ("batches on the device", dev_batches), ("batches on the host", host))
    return Footprint(device=models + metas + dev_batches, host=host, parts=parts)


def add(a: Footprint, b: Footprint) -> Footprint:
    """Two footprints that exist at the same time (e.g. the tasks of a multi-task meta-training)."""
    names = [n for n, _ in a.parts] + [n for n, _ in b.parts if n not in dict(a.parts)]
    pa, pb = dict(a.parts), dict(b.parts)
    return Footprint(a.device + b.device, a.host + b.host, tuple((n, pa.get(n, 0) + pb.get(n, 0)) for n in names))


def _host_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def capacity(devices: Iterable[Any] | None = None,
             processes: int | None = None) -> tuple[int | None, int | None, bool]:
    """(device bytes, host bytes, shared) of the whole job: the accelerators' memory limits summed over the local
    devices, and the host RAM, each times the number of processes (a multi-process run spreads its arrays over
    every process's devices; the estimates are of the whole job); ``shared`` when the devices have no memory stats
    (CPU) and use the host RAM."""
    if devices is None or processes is None:
        import jax

        devices = jax.local_devices() if devices is None else devices
        processes = jax.process_count() if processes is None else processes
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without the API
            stats = None
        if not stats or "bytes_limit" not in stats:
            limits = None
            break
        limits.append(int(stats["bytes_limit"]))
    host = _host_ram()
    host = None if host is None else host * processes
    if not limits:
        return host, host, True
    return sum(limits) * processes, host, False


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_fits(need: Footprint, what: str, cap: tuple[int | None, int | None, bool] | None = None) -> None:
    """OutOfMemory (one line, with the amount needed) when ``need`` cannot fit ``cap`` (default: this machine)."""
    device_cap, host_cap, shared = cap if cap is not None else capacity()
    checks = [("memory", need.device + need.host, host_cap)] if shared else \
        [("accelerator memory", need.device, device_cap), ("host memory", need.host, host_cap)]
    for where, n, limit in checks:
        if limit is not None and n > limit:
            big = ", ".join(f"{name} {_gib(b)}" for name, b in sorted(need.parts, key=lambda p: -p[1])[:2] if b)
            raise OutOfMemory(f"{what} needs at least {_gib(n)} of {where} ({big}), more than this machine's "
                              f"{_gib(limit)}: use a smaller width, batch, num_tasks or hidden_size")


def is_out_of_memory(exc: BaseException) -> bool:
    """XLA's out-of-memory error (``RESOURCE_EXHAUSTED``) or a host allocation failure."""
    return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)[:2000]


def out_of_memory_line(exc: BaseException) -> str:
    text = one_line(exc, None)
    if "RESOURCE_EXHAUSTED" in text:
        text = text[text.index("RESOURCE_EXHAUSTED"):]
    return (f"out of memory ({one_line(text, 200) or type(exc).__name__}): use a smaller width, batch (local_batch_size, "
            f"eval_batch_size), num_tasks or hidden_size")
