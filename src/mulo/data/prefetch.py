"""Device prefetch: keep ``size`` batches already on the accelerator while a host thread prepares the next.

    with DevicePrefetcher(dataset.batches("train", (S, N, B), seed), size=cfg.prefetch_batches, batch_axis=2) as it:
        for step in range(num_steps):
            batch = next(it)          # a pytree of jax.Arrays, sharded over local devices on batch_axis

One producer thread reads the host iterator in order and places each batch on the devices into a bounded queue:
with ``put`` (meta-training passes ``mulo.parallel.Placement.chunk_putter``, which assembles this process's block of
a global chunk), else split over the local devices on ``batch_axis`` (a single device gets the whole batch). So
the order is the iterator's and no batch is returned twice. ``transform`` (e.g. ``mulo.data.transfer.
device_decoder``: uint8 images normalised on the device) is applied to each placed batch in the producer thread.
An exception in the producer is re-raised in the consumer at the position it happened; ``close()`` stops the thread
and drops what is queued.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import jax

from mulo.parallel import put_on_devices

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DevicePrefetcher:
    """Iterator over device batches, filled ahead by a background thread (see the module docstring)."""

    def __init__(self, host_iterator: Iterator[Any], size: int = 2, batch_axis: int = 0,
                 devices: Sequence[jax.Device] | None = None, put: Callable[[Any], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._source = iter(host_iterator)
        self._batch_axis = int(batch_axis)
        self._devices = list(devices) if devices is not None else jax.local_devices()
        self._put = put or (lambda batch: put_on_devices(batch, self._batch_axis, self._devices))
        self._transform = transform or (lambda batch: batch)
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="mulo-prefetch", daemon=True)
        self._thread.start()

    def _offer(self, item: Any) -> bool:
        """Put ``item`` in the queue unless closed; False once closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self._source:
                if self._stop.is_set():
                    return
                if not self._offer(self._transform(self._put(batch))):
                    return
            self._offer(_END)
        except BaseException as exc:  # re-raised in the consumer
            self._offer(_Failure(exc))

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            if self._stop.is_set():
                raise RuntimeError("DevicePrefetcher is closed")
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise StopIteration from None
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the producer thread and drop queued batches. Safe to call twice."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10.0)
        self._done = True

    def __enter__(self) -> "DevicePrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._stop.set()
        except Exception:
            pass
