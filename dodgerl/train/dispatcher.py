"""The update dispatcher: every device call on the agent and the replay mirror, and the updates.

The loop's device calls that read or donate the agent or the mirror's frames (mirror uploads,
act, copies of the agent, the batch indices' upload, the update) go through ``submit``: with the
plan's dispatch thread they are made, in submission order, by one background thread, so that
the loop's thread steps the envs while an update's kernels are being launched (on a GPU the
launch holds the calling thread about as long as the device runs the call); otherwise they are
made at once. Only that thread touches the agent and the mirror's frames while calls are
pending; ``drain()`` waits until they have been made. Same calls in the same order: same run.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.train.plan import ExecutionPlan

MAX_QUEUED_CALLS = 8
"""Device calls the loop may have queued on the dispatch thread before it waits for the oldest."""


def resolved(value: Any) -> Future:
    """A Future already holding ``value`` (a call made here, at once)."""
    future: Future = Future()
    future.set_result(value)
    return future


@jax.jit
def copy_tree(tree: Any) -> Any:
    """A copy of every array of ``tree`` in new buffers on the same device, in one compiled call
    (a per-leaf ``x.copy()`` compiles a program per leaf shape at the first call)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


class Dispatcher:
    """Owns the agent while training: acts, copies and updates it in program order.

    ``timings`` is the loop's table of seconds per phase; ``update`` accumulates the launches
    and the waits for the device, ``compile`` the first update call, ``sample`` the batch draws.
    """

    def __init__(self, agent: Any, replay: Any, plan: ExecutionPlan, batch_size: int,
                 steps_per_call: int, update_every: int, timings: dict[str, float],
                 cleanup: contextlib.ExitStack) -> None:
        self.agent = agent
        self.replay = replay
        self.batch_size = batch_size
        self.steps_per_call = steps_per_call
        self.update_every = update_every
        self.timings = timings
        self.metrics: dict[str, Any] = {}
        """Of the latest update call waited for (logging never waits)."""
        self._thread = (ThreadPoolExecutor(1, thread_name_prefix="dispatch")
                        if plan.overlap and plan.dispatch_thread else None)
        if self._thread is not None:
            cleanup.callback(functools.partial(self._thread.shutdown, wait=True, cancel_futures=True))
        # Two updates in flight only with the dispatch thread: without it the loop's thread
        # would launch the next update itself.
        self._two_in_flight = self._thread is not None and plan.updates_in_flight == 2
        self._jobs: collections.deque[Future] = collections.deque()  # submitted, not yet observed
        self._in_flight: list[Future] = []  # (the metrics of) dispatched updates not yet waited for
        self._pending_calls = 0  # vector steps collected since the last update call
        self._sampler = None
        self._prefetch, self._sample_workers = plan.prefetch, plan.sample_workers
        self.mirror = self._make_mirror() if plan.device_mirror else None
        if self.mirror is not None:
            cleanup.callback(self.mirror.close)
        # The sampler starts with the first update (if there is no mirror).
        cleanup.callback(self._close_samplers)

    def _make_mirror(self) -> Any:
        from dodgerl.replay.mirror import DeviceMirror

        return DeviceMirror(self.replay)  # uploads what a resumed buffer already holds

    def _close_samplers(self) -> None:
        if self._sampler is not None:
            self._sampler.close()

    # -- device calls, in order

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Make device call ``fn`` in order with the others; its result as a Future."""
        if self._thread is None:
            return resolved(fn())
        while len(self._jobs) >= MAX_QUEUED_CALLS:  # the host never runs far ahead of the thread
            self._jobs.popleft().result()
        future = self._thread.submit(fn)
        self._jobs.append(future)
        return future

    def drain(self) -> None:
        """Wait until every submitted device call has been made (not for the device); timed as
        ``update`` (what is queued is mostly the update's launch)."""
        t0 = time.perf_counter()
        while self._jobs:
            self._jobs.popleft().result()  # a failed call raises here
        self.timings["update"] += time.perf_counter() - t0

    def act(self, observations: np.ndarray, key: jax.Array) -> Future:
        """The policy's sampled actions (a device array, not waited for)."""
        return self.submit(lambda: self.agent.act(observations, key))

    def copy_agent(self) -> Future:
        """A copy of the agent as it is after the calls submitted so far, on its device: what a
        checkpoint or a background evaluation takes while the next update donates the agent."""
        return self.submit(lambda: copy_tree(self.agent))

    def seed_view(self, seed: int) -> Any:
        """What a seed's evaluation sees of the dispatcher (``submit``, ``drain``, ``agent``,
        ``copy_agent``): here, with one agent, the dispatcher itself."""
        assert seed == 0, "a dispatcher of one agent has one seed"
        return self

    def metrics_of(self, seed: int) -> dict[str, Any]:
        """The latest waited-for update's metrics of ``seed``."""
        return self.metrics

    def stored(self) -> None:
        """The loop has added one vector step to the replay: the mirror uploads it, and a
        device call that failed surfaces now."""
        if self.mirror is not None:
            chunks = self.mirror.take()  # host; the upload is a device call
            self.submit(functools.partial(self.mirror.upload, chunks))
        while self._jobs and self._jobs[0].done():
            self._jobs.popleft().result()

    # -- updates

    def collected(self) -> None:
        """One vector step collected after the warm-up."""
        self._pending_calls += 1

    def update_due(self) -> bool:
        """Whether ``update_every`` vector steps are waiting and the replay can fill a batch."""
        return self._pending_calls >= self.update_every and len(self.replay) >= self.batch_size

    def update(self, key: jax.Array, block: bool) -> int:
        """Dispatch ``steps_per_call`` gradient steps (``block``: and wait for them); returns
        that number."""
        self._pending_calls = 0
        first = self.timings["compile"] == 0.0
        t0 = time.perf_counter()
        # Draw (or take) the batch before waiting for the update in flight: host work that
        # overlaps the device instead of following it.
        call = self._update_call(key)
        self.timings["sample"] += time.perf_counter() - t0
        if not self._two_in_flight:
            self.wait()  # at most one update in flight: the host never runs ahead of the device
        t1 = time.perf_counter()
        future = self.submit(call)
        if first:  # compile time is reported apart from the update rate
            self.metrics = jax.block_until_ready(future.result())
            self.timings["compile"] += time.perf_counter() - t1
            return self.steps_per_call
        self.timings["update"] += time.perf_counter() - t1
        self._in_flight.append(future)
        if block:
            self.wait()
        elif self._two_in_flight:
            # This update is queued behind the previous one, which is waited for now: the
            # device goes from one to the next without waiting for the loop's thread.
            self.wait(keep=1)
        return self.steps_per_call

    def _update_call(self, key: jax.Array) -> Callable[[], Any]:
        """The device call of one update, its batch drawn now."""
        from dodgerl.agents.sac import Batch

        if self.mirror is not None:
            from dodgerl.replay.mirror import gather_batch

            mirror = self.mirror
            host_indices = mirror.draw_indices(self.batch_size, self.steps_per_call)
            indices = self.submit(lambda: jax.device_put(host_indices, mirror.device))

            def from_mirror() -> Any:  # the indices' upload ran before this, in order
                self.agent, metrics = self.agent.update_from(mirror.frames, indices.result(), key,
                                                             gather_batch)
                return metrics

            return from_mirror
        if self._sampler is None:
            from dodgerl.replay import DeviceSampler

            self._sampler = DeviceSampler(self.replay, batch_size=self.batch_size,
                                          steps_per_call=self.steps_per_call,
                                          prefetch=self._prefetch, workers=self._sample_workers)
        batch = Batch(**next(self._sampler))

        def from_batch() -> Any:
            self.agent, metrics = self.agent.update(batch, key)
            return metrics

        return from_batch

    def wait(self, keep: int = 0) -> None:
        """Wait for the updates in flight, oldest first, until at most ``keep`` remain."""
        while len(self._in_flight) > keep:
            t0 = time.perf_counter()
            self.metrics = jax.block_until_ready(self._in_flight.pop(0).result())
            self.timings["update"] += time.perf_counter() - t0

    def finish(self) -> None:
        """Every call made and every update waited for: the agent is final."""
        self.drain()
        self.wait()
