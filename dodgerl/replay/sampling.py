"""Sampling from a replay buffer: which slots start a sampleable transition, uniform draws from
the seeded Generator, frame stacks and n-step returns, and copying the frames out.

``Sampling`` is the part of :class:`~dodgerl.replay.buffer.ReplayBuffer` that reads; it uses the
buffer's state (``_arrays``, ``_frames_written``, ``_oldest``, ``_ok``, ``_lock``, ``rng``, ...),
which ``ReplayBuffer`` sets up and ``add`` keeps current.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from dodgerl.replay.layout import VALID


class Sampling:
    """Sampling methods of ReplayBuffer (see the module docstring)."""

    _arrays: dict[str, np.memmap]
    _lock: threading.Lock
    _closed: bool
    _version: int
    _cache: tuple[int, np.ndarray] | None
    _n_ok: int
    _written: list[np.ndarray] | None
    _frames_written: np.ndarray
    _oldest: np.ndarray
    _ok: np.ndarray
    rng: np.random.Generator
    slots_per_env: int
    frame_stack: int
    n_step: int
    gamma: float
    observation_shape: tuple[int, ...]

    def _scan_sampleable(self) -> np.ndarray:
        """Which slots start a sampleable transition, from the flags alone: (n_envs, S) bools.

        Frame ``a`` (slot ``a % S``) starts a sampleable transition iff its VALID flag is set, it is
        still present (``a >= oldest`` and ``a >= w - S``) and its next frame is written
        (``a + 1 <= w - 1``). Used on reopen; ``add`` keeps the same mask up to date as it writes
        (a slot's bit is cleared when its frame is overwritten and set with its VALID flag).
        """
        S = self.slots_per_env
        w = self._frames_written[:, None]
        a = self._slot_frames(np.arange(S, dtype=np.int64)[None, :], w)
        ok = (self._arrays["flags"] & VALID).astype(bool)
        ok &= a >= np.maximum(self._oldest, 0)[:, None]
        ok &= a + 1 <= w - 1
        return ok

    def _slot_frames(self, slots: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The most recent absolute frame a slot holds, given its env's frames_written ``w``
        (negative if never written)."""
        return (w - 1) - np.mod(w - 1 - slots, self.slots_per_env)

    def _sampleable_flat(self) -> np.ndarray:
        """Flat (env * S + slot) indices of the sampleable slots, row-major, cached until the
        next add. Caller holds the lock."""
        if self._cache is None or self._cache[0] != self._version:
            self._cache = (self._version, np.flatnonzero(self._ok))
        return self._cache[1]

    def _sampleable(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, absolute frame) of every transition that can be sampled now. Caller holds the lock."""
        return self._env_frames(self._sampleable_flat())

    def _env_frames(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        env, slot = np.divmod(flat, self.slots_per_env)
        return env, self._slot_frames(slot, self._frames_written[env])

    def __len__(self) -> int:
        with self._lock:
            if self._closed:
                return 0
            return self._n_ok

    @property
    def rng_state(self) -> dict[str, Any]:
        """State of the sampling Generator (saved in the header at commit, restored on reopen)."""
        with self._lock:
            return self.rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.rng.bit_generator.state = state

    def _draw(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """Choose transitions uniformly among the sampleable ones. Caller holds the lock.

        By rejection: every sampleable transition of env e starts at a frame of the window
        [max(oldest, written - S, 0), written - 2], so frames are drawn uniformly from the
        windows of all envs and those that start no transition (an episode's final frame) are
        drawn again. Uniform over the sampleable set, at a cost of O(batch) rather than a scan
        of all S slots per draw (1M slots for a MuJoCo-sized buffer). Windows in which few
        frames are sampleable (after many rejections) fall back to the scan.
        """
        w = self._frames_written
        lo = np.maximum(np.maximum(self._oldest, w - self.slots_per_env), 0)
        sizes = np.maximum(w - 1 - lo, 0)  # frames lo .. w - 2
        bounds = np.cumsum(sizes)
        total = int(bounds[-1]) if bounds.size else 0
        if total == 0:
            raise ValueError("cannot sample: the replay buffer holds no complete transition yet")
        env = np.empty(batch_size, np.int64)
        frame = np.empty(batch_size, np.int64)
        todo = np.arange(batch_size)
        for _ in range(8):
            u = self.rng.integers(0, total, size=todo.size)
            e = np.searchsorted(bounds, u, side="right")
            f = lo[e] + u - (bounds[e] - sizes[e])
            keep = self._ok[e, f % self.slots_per_env]
            env[todo[keep]], frame[todo[keep]] = e[keep], f[keep]
            todo = todo[~keep]
            if todo.size == 0:
                return self._locate(env, frame)
        flat = self._sampleable_flat()
        if flat.size == 0:
            raise ValueError("cannot sample: the replay buffer holds no complete transition yet")
        e, f = self._env_frames(flat[self.rng.integers(0, flat.size, size=todo.size)])
        env[todo], frame[todo] = e, f
        return self._locate(env, frame)

    def _horizon(self, env: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Steps m (B,) in [1, n_step] of the n-step transitions starting at (env, a): transitions
        a, a+1, ... while they belong to a's episode and are complete. Caller holds the lock.

        Transition a+j continues the run iff frame a+j starts a transition (VALID: not an
        episode's final frame) and its next frame is written; a+j > a, so if a is still stored
        so is a+j.
        """
        m = np.ones(a.shape, np.int64)
        if self.n_step == 1:
            return m
        S = self.slots_per_env
        flags = self._arrays["flags"]
        last_complete = self._frames_written[env] - 2  # newest frame whose next frame is written
        going = np.ones(a.shape, bool)
        for j in range(1, self.n_step):
            f = a + j
            going &= f <= last_complete
            going &= (flags[env, f % S] & VALID).astype(bool)
            m += going
        return m

    def _locate(self, env: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, ...]:
        """Where the transitions (env, a) are. Caller holds the lock.

        Returns env (B,), a (B,), the observation stack's frames (B, k) oldest first, the next
        observation's stack (B, k) (frames up to a + m), m (B,) the steps it spans, and the
        lowest frame read (B,).
        """
        k = self.frame_stack
        m = self._horizon(env, a)
        if k == 1:
            return env, a, a[:, None], (a + m)[:, None], m, a.copy()
        S = self.slots_per_env
        # Clamp at the episode's first frame, or at the oldest frame of it still present when the
        # ring has overwritten its start: never into another episode or the write cursor.
        ep_start = self._arrays["episode_start_index"][env, a % S]
        lo = np.maximum.reduce([ep_start, self._oldest[env], self._frames_written[env] - S])
        offsets = np.arange(-(k - 1), 1, dtype=np.int64)
        stack = np.maximum(a[:, None] + offsets[None, :], lo[:, None])
        next_stack = np.maximum((a + m)[:, None] + offsets[None, :], lo[:, None])
        return env, a, stack, next_stack, m, stack[:, 0].copy()

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, absolute frame) of every sampleable transition, e.g. to audit a buffer."""
        with self._lock:
            env, frames = self._sampleable()
            return env.copy(), frames.copy()

    def get(self, env: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
        """The transitions starting at absolute ``frames`` of ``env``, laid out like ``sample``.

        Only meaningful for pairs returned by ``transitions()`` (no concurrent adds).
        """
        env, frames = np.asarray(env, np.int64), np.asarray(frames, np.int64)
        with self._lock:
            env, a, stack, next_stack, m, _ = self._locate(env, frames)
            return self._gather(env, a, stack, next_stack, m)

    def _small_fields(self, env: np.ndarray, a: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
        """Action, (n-step) reward and terminated (as float32) of the transitions starting at
        (env, a) and spanning m steps; with n_step > 1 also their discounts gamma**m."""
        arr = self._arrays
        S = self.slots_per_env
        actions = arr["actions"][env, a % S]
        if self.n_step == 1:
            return {"actions": actions, "rewards": arr["rewards"][env, a % S],
                    "terminated": arr["terminated"][env, a % S].astype(np.float32)}
        j = np.arange(self.n_step, dtype=np.int64)
        inside = j[None, :] < m[:, None]
        rewards = np.where(inside, arr["rewards"][env[:, None], (a[:, None] + j[None, :]) % S], 0.0)
        return {
            "actions": actions,
            "rewards": (rewards @ (self.gamma ** j.astype(np.float64))).astype(np.float32),
            "terminated": arr["terminated"][env, (a + m - 1) % S].astype(np.float32),
            "discounts": (self.gamma ** m.astype(np.float64)).astype(np.float32),
        }

    def _gather(self, env: np.ndarray, a: np.ndarray, stack: np.ndarray, next_stack: np.ndarray,
                m: np.ndarray) -> dict[str, np.ndarray]:
        S = self.slots_per_env
        k = self.frame_stack
        obs_mm = self._arrays["observations"]
        if k == 1:
            observations = obs_mm[env, a % S]
            next_observations = obs_mm[env, next_stack[:, 0] % S]
        elif self.n_step == 1:
            # One gather of the k+1 distinct frames serves both stacks: next = obs shifted by one.
            both = np.concatenate([stack, next_stack[:, -1:]], axis=1)
            frames = obs_mm[env[:, None], both % S]  # (B, k+1, *obs_shape)
            observations = self._stack_channels(frames[:, :k])
            next_observations = self._stack_channels(frames[:, 1:])
        else:
            observations = self._stack_channels(obs_mm[env[:, None], stack % S])
            next_observations = self._stack_channels(obs_mm[env[:, None], next_stack % S])
        return {"observations": observations, "next_observations": next_observations,
                **self._small_fields(env, a, m)}

    def _stack_channels(self, frames: np.ndarray) -> np.ndarray:
        """(B, k, *shape, C) -> (B, *shape, k*C): channel-last, oldest frame first."""
        B, k = frames.shape[:2]
        C = self.observation_shape[-1]
        # Move whole pixels (C values viewed as one void item) rather than single channels: the
        # transposing copy then moves C*itemsize bytes per element, not one byte.
        pixels = frames.view(np.dtype((np.void, C * frames.dtype.itemsize)))[..., 0]
        moved = np.ascontiguousarray(np.moveaxis(pixels, 1, -1))  # (B, *shape[:-1], k)
        return moved.view(frames.dtype).reshape(B, *self.observation_shape[:-1], k * C)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """Uniformly sample ``batch_size`` transitions (with replacement) as numpy arrays.

        Safe while another thread adds: indices are chosen from a snapshot taken under the lock,
        frames are copied outside it, and any sample whose slots the writer reached meanwhile is
        drawn again (rare: it needs the writer to lap onto the oldest frames during one copy).
        """
        drawn = self.draw(batch_size)
        out = self.gather(drawn)
        self.repair(drawn, out)
        return out

    def draw(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """Choose ``batch_size`` transitions with the seeded Generator; the first half of
        ``sample``. Call it from the thread that adds, in program order, so that the draws do
        not depend on thread timing; :meth:`gather` may then run in any thread, and
        :meth:`repair` in the drawing thread once it returned."""
        with self._lock:
            if self._closed:
                raise ValueError("sample on a closed ReplayBuffer")
            return self._draw(int(batch_size))

    def gather(self, drawn: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """Copy the frames and fields of the transitions :meth:`draw` chose (``sample``'s batch
        layout); safe in any thread while another adds (rows it overwrote meanwhile are found
        and replaced by :meth:`repair`)."""
        env, a, stack, next_stack, m, _ = drawn
        return self._gather(env, a, stack, next_stack, m)

    def repair(self, drawn: tuple[np.ndarray, ...], out: dict[str, np.ndarray]) -> int:
        """Replace, in ``out`` (``gather(drawn)``) and ``drawn``, every transition whose slots the
        writer has reached since it was drawn, with transitions drawn again; returns how many.

        Whether a row is replaced depends only on the adds made before this call, not on when
        the gather ran: called from the thread that adds, the result is the same whatever the
        thread timing."""
        env, lowest = drawn[0], drawn[5]
        replaced = 0
        while True:
            with self._lock:
                torn = np.flatnonzero(lowest + self.slots_per_env < self._frames_written[env])
                if torn.size == 0:
                    return replaced
                env2, a2, stack2, next2, m2, lowest2 = self._draw(torn.size)
            redo = self._gather(env2, a2, stack2, next2, m2)
            for key in out:
                out[key][torn] = redo[key]
            env[torn], lowest[torn] = env2, lowest2
            replaced += int(torn.size)

    def sample_indices(self, batch_size: int) -> dict[str, np.ndarray]:
        """Like ``sample`` but without the frames: where they are, for a copy of the frames kept
        elsewhere (``DeviceMirror`` gathers them on the accelerator).

        Returns ``env`` (B,), ``obs_slots`` and ``next_slots`` (B, k) slot indices of the
        observation and next-observation stacks (oldest frame first), and the small fields
        ``actions``, ``rewards``, ``terminated`` (and ``discounts``) as ``sample`` gives them.
        Draws from the same seeded Generator as ``sample``. The frames at those slots are valid as long as no ``add``
        happens in between (the caller samples and reads in the thread that adds).
        """
        with self._lock:
            if self._closed:
                raise ValueError("sample on a closed ReplayBuffer")
            env, a, stack, next_stack, m, _ = self._draw(int(batch_size))
            S = self.slots_per_env
            return {
                "env": env.astype(np.int32),
                "obs_slots": (stack % S).astype(np.int32),
                "next_slots": (next_stack % S).astype(np.int32),
                **self._small_fields(env, a, m),
            }

    def track_writes(self, enabled: bool = True) -> None:
        """Start (or stop) logging the (env, slot) of every frame written, for ``take_writes``."""
        with self._lock:
            self._written = [] if enabled else None

    def take_writes(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, slot) of the frames written since the last call (in write order), and clear."""
        with self._lock:
            if self._written is None:
                raise ValueError("take_writes: call track_writes() first")
            pairs, self._written = self._written, []
        if not pairs:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        arr = np.concatenate(pairs).astype(np.int32)
        return arr[:, 0], arr[:, 1]

    def frames_at(self, env: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The stored frames at (env, slot) pairs, as one array (a copy)."""
        with self._lock:
            return self._arrays["observations"][np.asarray(env), np.asarray(slots)]
