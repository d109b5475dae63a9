"""Background prefetching of replay batches onto the accelerator: one device_put per batch."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import jax
import numpy as np

from dodgerl.replay.buffer import ReplayBuffer


class DeviceSampler:
    """Iterator of device-resident batches with a leading ``steps_per_call`` axis.

    ``workers`` daemon threads (1 by default) each call ``buffer.sample(steps_per_call * batch_size)``, reshapes every field to
    ``(K, B, ...)``, transfers the whole dict with one ``jax.device_put`` and keeps up to
    ``prefetch`` batches queued, so a jitted ``lax.scan`` over K updates never waits on the host.
    A worker waits (without error) until the buffer holds a transition. Sampling is safe while
    the main thread keeps calling ``buffer.add``; an exception in the thread is re-raised by
    ``next``.
    """

    def __init__(self, buffer: ReplayBuffer, batch_size: int = 64, steps_per_call: int = 1,
                 prefetch: int = 2, device: Any = None, workers: int = 1) -> None:
        if batch_size < 1 or steps_per_call < 1 or prefetch < 1 or workers < 1:
            raise ValueError(f"batch_size, steps_per_call, prefetch and workers must be >= 1, got "
                             f"{batch_size}, {steps_per_call}, {prefetch}, {workers}")
        self.buffer = buffer
        self.batch_size = int(batch_size)
        self.steps_per_call = int(steps_per_call)
        self.device = device if device is not None else jax.devices()[0]
        self._queue: queue.Queue = queue.Queue(maxsize=int(prefetch))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        # Several workers overlap their frame gathers (numpy copies outside the GIL): on a
        # many-core GPU host one thread cannot gather 256x256 batches as fast as the update eats.
        self._threads = [
            threading.Thread(target=self._run, name=f"DeviceSampler-{i}", daemon=True)
            for i in range(int(workers))
        ]
        for thread in self._threads:
            thread.start()

    def _make_batch(self) -> dict[str, jax.Array]:
        K, B = self.steps_per_call, self.batch_size
        host = self.buffer.sample(K * B)
        host = {key: np.reshape(value, (K, B, *value.shape[1:])) for key, value in host.items()}
        return jax.device_put(host, self.device)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if len(self.buffer) == 0:
                    time.sleep(0.01)
                    continue
                if not self._put(self._make_batch()):
                    return
        except BaseException as exc:  # surfaced to the consumer by __next__
            self._error = exc
            self._put(None)

    def __iter__(self) -> DeviceSampler:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        while True:
            if self._error is not None and self._queue.empty():
                raise RuntimeError("DeviceSampler thread failed") from self._error
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not any(t.is_alive() for t in self._threads) and self._error is None:
                    raise StopIteration
                continue
            if item is None:
                raise RuntimeError("DeviceSampler thread failed") from self._error
            return item

    def close(self) -> None:
        """Stop the thread and drop queued batches. Idempotent."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> DeviceSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
