"""Policies on fixed-seed evaluation episodes: ``Evaluator`` runs them in lockstep, one batched
``act`` per step, and ``write_gif`` keeps the recorded episode. Used by the training loop and by
``dodgerl.evaluate`` (a finished run) alike; it knows nothing of training."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import gymnasium
import jax
import numpy as np

from dodgerl.config import EnvConfig
from dodgerl.envs.make import make_env, make_worker_env


@dataclasses.dataclass
class EvalResult:
    """Per-episode returns and lengths of one evaluation, and the recorded frames of episode 0."""

    returns: np.ndarray
    lengths: np.ndarray
    frames: list[np.ndarray]

    def row(self, step: int, wall_time: float) -> dict[str, Any]:
        return {
            "step": step,
            "mean_return": float(self.returns.mean()),
            "std_return": float(self.returns.std()),
            "min_return": float(self.returns.min()),
            "max_return": float(self.returns.max()),
            "mean_length": float(self.lengths.mean()),
            "episodes": len(self.returns),
            "wall_time_s": round(wall_time, 3),
        }


class Evaluator:
    """Runs ``episodes`` evaluation episodes in lockstep (one batched ``act`` per step), each on
    its own env reset with seed ``seed + i``, so every evaluation sees the same episodes.

    With ``asynchronous``, episodes 1, 2, ... step in subprocesses (a GroupedAsyncVectorEnv of up
    to ``envs_per_worker`` episodes per subprocess) while episode 0, the one recorded for the
    video, steps in this process: an evaluation then costs about one episode's env steps instead
    of all of them. The episodes, the batches given
    to ``act`` and so the results are the same either way (a finished episode keeps its last
    observation in the batch; a worker env that finished and was reset is ignored until the end).
    """

    def __init__(self, env_config: EnvConfig, episodes: int, seed: int, record: bool,
                 asynchronous: bool = False, envs_per_worker: int = 1) -> None:
        self.first = make_env(env_config, render_mode="rgb_array" if record else None)
        self.vector = None
        self.others: list[gymnasium.Env] = []
        if asynchronous and episodes > 1:
            # As many subprocesses as episodes 1.. need with at most envs_per_worker each (the
            # largest divisor of episodes - 1 that fits): one pipe round trip per subprocess.
            from dodgerl.envs.grouped import GroupedAsyncVectorEnv

            k = max(d for d in range(1, min(envs_per_worker, episodes - 1) + 1) if (episodes - 1) % d == 0)
            self.vector = GroupedAsyncVectorEnv(functools.partial(make_worker_env, env_config), episodes - 1, k)
        else:
            self.others = [make_env(env_config) for _ in range(episodes - 1)]
        self.episodes = episodes
        self.seeds = [seed + i for i in range(episodes)]
        # Only an env that renders rgb_array frames is recorded; others evaluate without a GIF.
        self.record = record and self.first.render_mode == "rgb_array"

    def run(self, act: Callable[[np.ndarray, jax.Array], np.ndarray], key: jax.Array) -> EvalResult:
        n = self.episodes
        first_obs = self.first.reset(seed=self.seeds[0])[0]
        obs = np.empty((n, *first_obs.shape), dtype=first_obs.dtype)
        obs[0] = first_obs
        if self.vector is not None:
            obs[1:] = self.vector.reset(seed=self.seeds[1:])[0]
        for i, env in enumerate(self.others, start=1):
            obs[i] = env.reset(seed=self.seeds[i])[0]
        local = [self.first, *self.others]  # env i of this process is episode i
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        active = np.ones(n, dtype=bool)
        frames: list[np.ndarray] = []
        recording = self.record and self._render(frames)
        while active.any():
            key, act_key = jax.random.split(key)
            # Finished episodes keep their last observation in the batch: one shape, one compile.
            actions = np.asarray(act(obs, act_key))
            if self.vector is not None:
                self.vector.step_async(actions[1:])  # the workers step while this process does
            for i in np.flatnonzero(active[: len(local)]):
                o, r, terminated, truncated, _ = local[i].step(actions[i])
                obs[i] = o
                returns[i] += r
                lengths[i] += 1
                if i == 0 and recording:
                    recording = self._render(frames)
                if terminated or truncated:
                    active[i] = False
            if self.vector is not None:
                o, r, terminated, truncated, _ = self.vector.step_wait()
                live = active[1:].copy()
                obs[1:][live] = o[live]
                returns[1:][live] += r[live]
                lengths[1:][live] += 1
                active[1:] = live & ~(terminated | truncated)
        return EvalResult(returns, lengths, frames)

    def _render(self, frames: list[np.ndarray]) -> bool:
        """Append episode 0's frame; False (and no more recording by this evaluator) where the
        env cannot render one, e.g. MuJoCo without an OpenGL context: the GIF is skipped, the
        evaluation goes on."""
        try:
            frame = self.first.render()
        except Exception as e:  # noqa: BLE001  (a missing GIF must not stop an evaluation)
            frame, why = None, repr(e)
        else:
            why = f"it returned {type(frame).__name__}"
        if isinstance(frame, np.ndarray) and frame.ndim == 3:
            frames.append(frame)
            return True
        print(f"the env renders no rgb_array frame ({why}): evaluations go on without a GIF",
              file=sys.stderr, flush=True)
        frames.clear()
        self.record = False
        return False

    def close(self) -> None:
        self.first.close()
        for env in self.others:
            env.close()
        if self.vector is not None:
            self.vector.close()


def write_gif_or_warn(frames: list[np.ndarray], path: Path) -> None:
    """``write_gif``, reporting a failure on stderr instead of raising it."""
    try:
        write_gif(frames, path)
    except Exception as e:  # a missing GIF must not stop the evaluations, let alone training
        print(f"could not write the GIF {path}: {e!r}", file=sys.stderr, flush=True)


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 30, max_frames: int = 400) -> None:
    """Write an animated GIF (every n-th frame so that at most ``max_frames`` are kept)."""
    from PIL import Image  # Pillow: installed with matplotlib, a core dependency

    stride = max(1, math.ceil(len(frames) / max_frames))
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames[::stride]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 * stride / fps), loop=0)
    os.replace(tmp, path)
