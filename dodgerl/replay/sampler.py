"""Background prefetching of replay batches onto the accelerator: one device_put per batch.

The transitions of every batch are drawn by the caller, in program order, with the buffer's
seeded Generator; threads only copy their frames and transfer them. The batches are therefore
the same whatever the thread timing, given the same seed and the same adds between calls.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from typing import Any

import jax
import numpy as np

from dodgerl.replay.buffer import ReplayBuffer


class DeviceSampler:
    """Iterator of device-resident batches with a leading ``steps_per_call`` axis.

    Each ``next`` draws one batch of ``steps_per_call * batch_size`` transitions
    (``buffer.draw``, in the calling thread) and hands it to ``workers`` daemon threads (1 by
    default), which copy its frames (``buffer.gather``), reshape every field to ``(K, B, ...)``
    and transfer the dict with one ``jax.device_put``. ``prefetch + workers - 1`` batches are
    drawn ahead, so a jitted ``lax.scan`` over K updates never waits on the host. ``next``
    returns the oldest of them, after replacing its rows that the adds made since it was drawn
    overwrote (``buffer.repair``, in the calling thread; then it is transferred again).

    Call ``next`` from the thread that adds to the buffer (the training loop does): the batches
    then depend only on the seed and the adds made between calls. ``next`` raises ValueError
    while the buffer holds no transition; an exception in a thread is re-raised by ``next``.
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
        self._ahead = int(prefetch) + int(workers) - 1
        self._pending: collections.deque[tuple[tuple[np.ndarray, ...], Future]] = collections.deque()
        self._jobs: queue.Queue = queue.Queue()
        self._closed = False
        # Several workers overlap their frame gathers (numpy copies outside the GIL): on a
        # many-core GPU host one thread cannot gather 256x256 batches as fast as the update eats.
        self._threads = [
            threading.Thread(target=self._run, name=f"DeviceSampler-{i}", daemon=True)
            for i in range(int(workers))
        ]
        for thread in self._threads:
            thread.start()

    def _shaped(self, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        K, B = self.steps_per_call, self.batch_size
        shaped = {key: np.reshape(value, (K, B, *value.shape[1:])) for key, value in host.items()}
        return jax.device_put(shaped, self.device)

    def _make_batch(self, drawn: tuple[np.ndarray, ...]) -> tuple[dict[str, np.ndarray], dict[str, jax.Array]]:
        host = self.buffer.gather(drawn)
        return host, self._shaped(host)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            drawn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._make_batch(drawn))
            except BaseException as exc:  # surfaced to the consumer by __next__
                future.set_exception(exc)

    def _submit(self) -> None:
        drawn = self.buffer.draw(self.steps_per_call * self.batch_size)
        future: Future = Future()
        self._pending.append((drawn, future))
        self._jobs.put((drawn, future))

    def __iter__(self) -> DeviceSampler:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._closed:
            raise StopIteration
        while len(self._pending) < self._ahead:
            self._submit()
        drawn, future = self._pending.popleft()
        try:
            host, batch = future.result()
        except BaseException as exc:
            raise RuntimeError("DeviceSampler thread failed") from exc
        if self.buffer.repair(drawn, host):
            batch = self._shaped(host)
        self._submit()
        return batch

    def close(self) -> None:
        """Stop the threads and drop the batches drawn ahead. Idempotent."""
        self._closed = True
        while self._pending:
            self._pending.popleft()[1].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> DeviceSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
