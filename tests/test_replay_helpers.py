"""Shared pieces of the replay tests: a scripted writer whose frames encode (env, absolute frame),
and a reference model that says exactly what every sampled transition must contain."""

from __future__ import annotations

import numpy as np

from dodgerl.replay import ReplayBuffer


def encode_frame(env: int, frame: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A frame whose every element depends on (env, frame), with both readable back exactly."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if dtype == np.uint8:
        out = np.full(size, (frame * 31 + env * 7 + 3) % 256, np.uint8)
        out[:4] = np.frombuffer(np.uint32(frame).tobytes(), np.uint8)
        out[4] = env
    else:
        out = np.full(size, frame * 0.5 + env, dtype)
        out[0], out[1] = frame, env
    return out.reshape(shape)


def decode_frame(frame: np.ndarray) -> tuple[int, int]:
    flat = frame.reshape(-1)
    if frame.dtype == np.uint8:
        return int(np.frombuffer(flat[:4].tobytes(), np.uint32)[0]), int(flat[4])
    return int(flat[0]), int(flat[1])


def split_stack(stacked: np.ndarray, k: int, channels: int) -> list[np.ndarray]:
    """(*shape, k*C) -> k frames of (*shape, C), oldest first."""
    return [stacked[..., i * channels:(i + 1) * channels] for i in range(k)]


class ScriptedWriter:
    """Drives a ReplayBuffer with episodes of scripted lengths and records what was written.

    Per env it mirrors the buffer's absolute frame counter: frame ``f`` of env ``e`` is
    ``encode_frame(e, f)``; the action of the transition starting at ``f`` is ``[f, e]`` and its
    reward ``f / 4``. Episode ``j`` of env ``e`` lasts ``lengths(e, j)`` steps and ends terminated
    when ``j`` is even, truncated when odd.
    """

    def __init__(self, buf: ReplayBuffer, lengths=lambda e, j: 1 + (3 * e + 5 * j) % 9) -> None:
        self.buf = buf
        self.lengths = lengths
        n = buf.n_envs
        self.frames = [0] * n            # frames written per env (the buffer's counter)
        self.episode = [0] * n           # current episode number per env
        self.t = [0] * n                 # steps taken in the current episode
        self.open = [False] * n
        self.episode_start: list[dict[int, int]] = [{} for _ in range(n)]  # frame -> ep start
        self.final: list[set[int]] = [set() for _ in range(n)]  # frames that end an episode
        self.terminated_at: list[dict[int, bool]] = [{} for _ in range(n)]  # frame -> terminated
        self.valid_from = [0] * n  # frames below this were cut by a reopen (model of oldest)

    @classmethod
    def resume(cls, buf: ReplayBuffer, **kw) -> ScriptedWriter:
        """A writer continuing a reopened buffer: counters from the buffer, every episode new."""
        writer = cls(buf, **kw)
        writer.frames = [int(f) for f in buf.frames_written]
        return writer

    def _frame(self, e: int, f: int) -> np.ndarray:
        return encode_frame(e, f, self.buf.observation_shape, self.buf.observation_dtype)

    def step(self) -> None:
        n = self.buf.n_envs
        obs, nxt = [], []
        actions = np.zeros((n, self.buf.action_dim), np.float32)
        rewards = np.zeros(n, np.float32)
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        for e in range(n):
            if not self.open[e]:
                start = self.frames[e]
                self.episode_start[e][start] = start
                self.frames[e] += 1
                self.open[e] = True
                self.t[e] = 0
            a = self.frames[e] - 1
            start = self.episode_start[e][a]
            obs.append(self._frame(e, a))
            nxt.append(self._frame(e, a + 1))
            actions[e, :2] = (a, e)
            if self.buf.action_dim >= 3:
                actions[e, 2] = start  # lets a verifier that lacks this model check stacks
            rewards[e] = a / 4
            self.t[e] += 1
            done = self.t[e] >= self.lengths(e, self.episode[e])
            if done:
                term[e] = self.episode[e] % 2 == 0
                trunc[e] = not term[e]
            self.terminated_at[e][a] = bool(term[e])
            self.episode_start[e][a + 1] = start
            self.frames[e] += 1
            if done:
                self.final[e].add(a + 1)
                self.open[e] = False
                self.episode[e] += 1
        self.buf.add(np.stack(obs), actions, rewards, np.stack(nxt), term, trunc)

    def reopened(self) -> None:
        """The buffer was reopened: every open episode is cut, its last frame starts nothing."""
        for e in range(self.buf.n_envs):
            if self.open[e]:
                self.final[e].add(self.frames[e] - 1)
                self.open[e] = False
                self.episode[e] += 1

    def expected_transitions(self) -> set[tuple[int, int]]:
        """(env, frame) of every transition the buffer must be able to sample now."""
        S = self.buf.slots_per_env
        out = set()
        for e in range(self.buf.n_envs):
            w = self.frames[e]
            for a in range(max(0, w - S, self.valid_from[e]), w - 1):
                if a not in self.final[e]:
                    out.add((e, a))
        return out

    def check_sample(self, batch: dict[str, np.ndarray], k: int) -> set[tuple[int, int]]:
        """Assert every row of ``batch`` is exactly a stored transition; return those seen.

        n-step spans are computed from the writer's cursor now: call it on samples drawn with no
        add since (a span cut by the cursor at draw time would look too short afterwards)."""
        S = self.buf.slots_per_env
        C = self.buf.observation_shape[-1]
        valid = self.expected_transitions()
        seen = set()
        for i in range(batch["rewards"].shape[0]):
            obs = split_stack(batch["observations"][i], k, C) if k > 1 else [batch["observations"][i]]
            nxt = (split_stack(batch["next_observations"][i], k, C) if k > 1
                   else [batch["next_observations"][i]])
            a, e = decode_frame(obs[-1])
            assert (e, a) in valid, f"sampled transition env {e} frame {a} is not sampleable"
            lo = max(self.episode_start[e][a], self.frames[e] - S, self.valid_from[e])
            # n-step (buffer.n_step > 1): m steps, cut at the episode's end or the write cursor.
            ends = [f for f in self.final[e] if f > a]
            m = min(self.buf.n_step, (min(ends) if ends else self.frames[e] - 1) - a)
            want_obs = [max(a - j, lo) for j in range(k - 1, -1, -1)]
            want_next = [max(a + m - j, lo) for j in range(k - 1, -1, -1)]
            for got, f in zip(obs, want_obs):
                np.testing.assert_array_equal(got, self._frame(e, f))
            for got, f in zip(nxt, want_next):
                np.testing.assert_array_equal(got, self._frame(e, f))
            np.testing.assert_array_equal(batch["actions"][i][:2], [a, e])
            if self.buf.n_step == 1:
                assert batch["rewards"][i] == np.float32(a / 4)
                assert "discounts" not in batch
            else:
                g = self.buf.gamma
                np.testing.assert_allclose(batch["rewards"][i],
                                           sum(g**j * (a + j) / 4 for j in range(m)), rtol=1e-6)
                np.testing.assert_allclose(batch["discounts"][i], g**m, rtol=1e-6)
            assert batch["terminated"][i] == float(self.terminated_at[e][a + m - 1])
            seen.add((e, a))
        return seen
