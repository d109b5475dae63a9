"""The training loop: collect from parallel envs, update, evaluate, log, checkpoint, resume.

This is the one module that knows the env, the replay buffer, the agent and the files of a run:

    results/<experiment>/<YYYYmmdd_HHMMSS>/
        config.yaml  progress.csv  eval.csv
        checkpoints/<step>/  best/<step>/  replay/  videos/

Each vector-env step adds ``n_envs`` transitions and, once ``learning_starts`` env steps are
collected, runs ``utd * n_envs`` gradient steps in one compiled ``agent.update`` call over a
stack of batches sampled in a background thread. Resume restores everything a checkpoint holds
(agent, RNG keys, counters) and reopens the replay buffer in place.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import functools
import math
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.checkpoint import (BEST_DIR, CheckpointError, RunCheckpoints, complete_checkpoints,
                                read_meta, resolve_resume, restore_first_good, set_aside_after)
from dodgerl.config import (ConfigError, EnvConfig, RunConfig, config_from_dict, read_yaml,
                            save_config)

PROGRESS_FIELDS = (
    "step", "episodes", "updates", "train_return", "train_length", "critic_loss", "actor_loss",
    "temperature", "entropy", "q_mean", "env_steps_per_s", "wall_time_s",
    "time_act_s", "time_env_s", "time_insert_s", "time_sample_s", "time_update_s", "time_eval_s",
    "time_checkpoint_s", "time_compile_s",
)
EVAL_FIELDS = (
    "step", "mean_return", "std_return", "min_return", "max_return", "mean_length",
    "episodes", "wall_time_s",
)
_METRIC_FIELDS = ("critic_loss", "actor_loss", "temperature", "entropy", "q_mean")
_MAX_QUEUED_JOBS = 8
"""Device calls the loop may have queued on its dispatch thread before it waits for the oldest."""


def _resolved(value: Any) -> Future:
    """A Future already holding ``value`` (a call made here, at once)."""
    future: Future = Future()
    future.set_result(value)
    return future


# ----------------------------------------------------------------------------------------------
# Environments


def make_env(env_config: EnvConfig, render_mode: str | None = None) -> gymnasium.Env:
    """One ``dodgerl/Dodge-v0`` env as the config describes it, frame-stacked if asked."""
    import dodgerl  # noqa: F401  (registers the env)
    from dodgerl.envs.wrappers import FrameStack

    env = gymnasium.make(
        "dodgerl/Dodge-v0",
        level=env_config.level,
        obs_mode=env_config.obs_mode,
        image_size=env_config.image_size,
        action_space_type=env_config.action_space_type,
        max_episode_steps=env_config.max_episode_steps,
        render_mode=render_mode,
    )
    if env_config.frame_stack > 1:
        env = FrameStack(env, env_config.frame_stack)
    return env


def _make_worker_env(env_config: EnvConfig) -> gymnasium.Env:
    """``make_env`` inside an env subprocess, which leaves SIGINT and SIGTERM to the training
    process: Ctrl-C in a terminal (and ``timeout``, ``kill -- -PGID``) signals the whole process
    group, and a worker that died on it would break the checkpoint-and-exit of the main process.
    The main process closes the workers itself; if it dies, they exit on the closed pipe.
    AsyncVectorEnv also calls this once in the main process (a probe env for the spaces), whose
    handlers must stay as they are."""
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return make_env(env_config)


def make_vector_env(env_config: EnvConfig, n_envs: int, asynchronous: bool,
                    envs_per_worker: int = 1) -> gymnasium.vector.VectorEnv:
    """Parallel training envs; the final observation of an episode comes in ``info['final_obs']``
    on the step that ends it (same-step autoreset), so no transition crosses an episode. With
    ``asynchronous``, subprocesses step them, ``envs_per_worker`` envs each."""
    if asynchronous and n_envs > 1 and envs_per_worker > 1:
        from dodgerl.envs.grouped import GroupedAsyncVectorEnv

        return GroupedAsyncVectorEnv(functools.partial(_make_worker_env, env_config), n_envs, envs_per_worker)
    mode = gymnasium.vector.AutoresetMode.SAME_STEP
    if asynchronous and n_envs > 1:
        # Spawned, not forked: forking a process whose JAX runtime has started can deadlock.
        fns = [functools.partial(_make_worker_env, env_config) for _ in range(n_envs)]
        return gymnasium.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    fns = [functools.partial(make_env, env_config) for _ in range(n_envs)]
    return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def single_frames(observations: np.ndarray, env_config: EnvConfig) -> np.ndarray:
    """The newest frame of each (possibly frame-stacked) observation: what the replay stores."""
    if env_config.obs_mode == "topdown" and env_config.frame_stack > 1:
        return observations[..., -3:]
    return observations


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class EvalResult:
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


class _PendingEval(NamedTuple):
    """An evaluation started in the background and not yet logged."""

    wait: Callable[[], tuple[EvalResult, float]]
    """Waits for it: (result, ``time.perf_counter()`` when it finished)."""
    finished: Callable[[], bool]
    """Whether ``wait`` would return at once."""
    step: int
    evaluated: Callable[[], Any]
    """Returns the agent it evaluates (best/ saves it); call after ``wait``."""
    meta: dict[str, Any]
    """The checkpoint meta of its step."""


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
            self.vector = GroupedAsyncVectorEnv(functools.partial(_make_worker_env, env_config), episodes - 1, k)
        else:
            self.others = [make_env(env_config) for _ in range(episodes - 1)]
        self.episodes = episodes
        self.seeds = [seed + i for i in range(episodes)]
        self.record = record

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
        frames = [self.first.render()] if self.record else []
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
                if i == 0 and self.record:
                    frames.append(self.first.render())
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

    def close(self) -> None:
        self.first.close()
        for env in self.others:
            env.close()
        if self.vector is not None:
            self.vector.close()


class EvalProcesses:
    """Evaluation episodes in ``workers`` spawned processes, each with its own CPU JAX runtime:
    acting and env stepping neither share the training process's GIL nor queue behind the
    accelerator's updates. Episodes are split into contiguous blocks (worker 0 has episode 0, the
    one recorded); each worker runs its block with an in-process ``Evaluator`` (same seeds, so
    the same episodes as evaluating here), on a copy of the policy sent with each request.

    ``submit`` sends a policy (an object with ``act(obs, key, deterministic=...)`` whose arrays
    the worker puts on its CPU, e.g. ``SACAgent.policy()``) and returns at once; ``collect``
    waits for the workers and returns the episodes in order. The recorded frames stay in worker
    0 (``collect`` returns none): ``write_video(path)`` has it write the last evaluation's GIF
    there, in a thread beside its next evaluation (encoding a GIF takes ~1 s, which the training
    process then does not spend); a GIF that cannot be written is reported on stderr, not raised.

    Deterministic evaluations act exactly as ``Evaluator.run`` with the same policy on the CPU;
    when training runs on an accelerator (other kernels, bf16), actions and so episodes can
    differ in the last bits from evaluating there. Stochastic evaluations draw their noise per
    worker (``fold_in(key, worker)``), so their actions differ from an in-process evaluation's.
    """

    def __init__(self, env_config: EnvConfig, episodes: int, seed: int, record: bool, workers: int) -> None:
        if not 1 <= workers <= episodes:
            raise ValueError(f"EvalProcesses: workers must be in [1, episodes={episodes}], got {workers}")
        ctx = multiprocessing.get_context("spawn")  # forking a process whose JAX runtime started can deadlock
        bounds = np.linspace(0, episodes, workers + 1).round().astype(int)
        self.connections = []
        self.processes = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            block = int(bounds[w + 1] - bounds[w])
            process = ctx.Process(
                target=_eval_worker, name=f"dodgerl-eval-{w}", daemon=True,
                args=(child, env_config, block, seed + int(bounds[w]), record and w == 0),
            )
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self.in_flight = False
        self.last_seconds = 0.0
        """How long the slowest worker took to run its episodes in the last evaluation collected."""
        self.last_finished = 0.0
        """``time.perf_counter()`` of this process at which the last evaluation's slowest worker
        finished (from the workers' wall clocks)."""

    def submit(self, policy: Any, key: jax.Array, deterministic: bool) -> None:
        if self.in_flight:
            raise RuntimeError("EvalProcesses.submit: collect the evaluation in flight first")
        policy = jax.device_get(policy)
        key = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
        # Pickled once for all workers (the policy's arrays are megabytes), not once per pipe.
        policy = pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)
        for w in range(len(self.connections)):
            self._send(w, ("evaluate", (policy, key, w, bool(deterministic))))
        self.in_flight = True

    def finished(self) -> bool:
        """Whether every worker has answered the evaluation in flight (``collect`` would not wait)."""
        return self.in_flight and all(conn.poll() for conn in self.connections)

    def collect(self) -> EvalResult:
        if not self.in_flight:
            raise RuntimeError("EvalProcesses.collect: no evaluation in flight")
        self.in_flight = False
        parts, seconds, finished = zip(*[self._receive(w) for w in range(len(self.connections))])
        self.last_seconds = max(seconds)
        self.last_finished = time.perf_counter() - max(0.0, time.time() - max(finished))
        return EvalResult(np.concatenate([p.returns for p in parts]),
                          np.concatenate([p.lengths for p in parts]), parts[0].frames)

    def write_video(self, path: Path) -> None:
        """Have worker 0 write the GIF of the last evaluation's episode 0 to ``path`` (needs
        ``record``; returns at once)."""
        self._send(0, ("video", Path(path)))

    def _send(self, w: int, message: tuple[str, Any]) -> None:
        try:
            self.connections[w].send(message)
        except (BrokenPipeError, OSError):
            self._dead(w)

    def _receive(self, w: int) -> tuple[EvalResult, float, float]:
        try:
            kind, payload = self.connections[w].recv()
        except (EOFError, OSError):
            self._dead(w)
        if kind == "error":
            raise RuntimeError(f"evaluation worker {w} failed:\n{payload}")
        return payload

    def _dead(self, w: int) -> None:
        """Raise for a worker whose pipe broke, with its traceback if it sent one before dying."""
        self.processes[w].join(timeout=1)
        error = self._pending_error(w)
        if error is not None:
            raise RuntimeError(f"evaluation worker {w} failed:\n{error}")
        raise RuntimeError(f"evaluation worker {w} died (exit code {self.processes[w].exitcode})")

    def _pending_error(self, w: int) -> str | None:
        """The traceback of an error worker ``w`` left unread in its pipe, if any."""
        try:
            while self.connections[w].poll():
                kind, payload = self.connections[w].recv()
                if kind == "error":
                    return payload
        except (EOFError, OSError):
            pass
        return None

    def close(self, wait: bool = True) -> None:
        """Stop the workers once they have done what they were sent (a GIF being written);
        ``wait=False``: stop them now (the training loop stopping on an exception)."""
        for conn in self.connections:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for w, process in enumerate(self.processes):
            process.join(timeout=60 if wait else 0)
            error = self._pending_error(w)
            if error is not None:
                print(f"evaluation worker {w} failed:\n{error}", file=sys.stderr, flush=True)
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self.connections:
            conn.close()


def _write_gif_or_warn(frames: list[np.ndarray], path: Path) -> None:
    try:
        write_gif(frames, path)
    except Exception as e:  # a missing GIF must not stop the evaluations, let alone training
        print(f"could not write the GIF {path}: {e!r}", file=sys.stderr, flush=True)


EVAL_WORKER_NICENESS = 15
"""How much lower the evaluation processes' scheduling priority is than the training process's."""


def _eval_worker(conn: Any, env_config: EnvConfig, episodes: int, seed: int, record: bool) -> None:
    """An ``EvalProcesses`` worker: CPU JAX only, signals left to the training process (which
    closes the workers; on a closed pipe they exit). Any error is sent back with its traceback
    (and printed here)."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jax.config.update("jax_platforms", "cpu")  # before any JAX backend starts in this process
    try:
        # Background work: the env workers and the training loop get the cores first (H100 host,
        # 16 cores, 128 envs: 4,888 -> 5,464 env steps/s; docs/perf_notes.md, v8). Where the
        # system refuses (a sandbox), the worker runs at the normal priority.
        os.nice(EVAL_WORKER_NICENESS)
    except (AttributeError, OSError):
        pass
    evaluator = writer = None
    try:
        evaluator = Evaluator(env_config, episodes, seed, record)
        frames: list[np.ndarray] = []
        # GIFs are encoded in a thread (~1 s each): this loop must keep reading requests, or
        # the training process would block sending the next policy into a full pipe.
        writer = ThreadPoolExecutor(1, thread_name_prefix="gif")
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break  # the training process has gone
            if kind == "close":
                break
            if kind == "video":
                if frames:
                    writer.submit(_write_gif_or_warn, frames, payload)
                continue
            policy, key, worker, deterministic = payload
            policy = jax.device_put(pickle.loads(policy))
            key = jax.random.fold_in(jax.numpy.asarray(key), worker)
            t0 = time.perf_counter()
            result = evaluator.run(lambda o, k: policy.act(o, k, deterministic=deterministic), key)
            frames, result.frames = result.frames, []  # kept here until a GIF is asked for
            try:
                conn.send(("result", (result, time.perf_counter() - t0, time.time())))
            except (BrokenPipeError, OSError):
                break
    except Exception:
        message = traceback.format_exc()
        print(f"evaluation worker failed:\n{message}", file=sys.stderr, flush=True)
        try:
            conn.send(("error", message))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if writer is not None:
            writer.shutdown(wait=True)  # a GIF asked for is finished before the worker exits
        if evaluator is not None:
            evaluator.close()
        conn.close()


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 30, max_frames: int = 400) -> None:
    """Write an animated GIF (every n-th frame so that at most ``max_frames`` are kept)."""
    from PIL import Image  # Pillow: installed with matplotlib, a core dependency

    stride = max(1, math.ceil(len(frames) / max_frames))
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames[::stride]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 * stride / fps), loop=0)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Logs


class CsvLog:
    """An append-only CSV that, on resume, drops rows written after the restored step."""

    def __init__(self, path: Path, fields: tuple[str, ...], resume_step: int | None) -> None:
        self.path = path
        self.fields = fields
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [  # a row cut short by a crash has missing fields: drop it
                    r for r in csv.DictReader(f)
                    if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= resume_step
                ]
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)
        elif not path.exists():
            with path.open("w", newline="") as f:
                csv.DictWriter(f, fields).writeheader()
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fields)

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: row.get(k, "") for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    episodes: int
    updates: int
    best_eval_return: float | None
    interrupted: bool
    timings: dict[str, float]


def new_run_dir(results_dir: str | Path, experiment: str) -> Path:
    base = Path(results_dir) / experiment
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    run_dir = base / stamp
    suffix = 1
    while run_dir.exists():  # two runs started in the same second
        run_dir = base / f"{stamp}_{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag the loop checks, so it can checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def load_run_config(run_dir: Path) -> RunConfig:
    return config_from_dict(read_yaml(run_dir / "config.yaml"))


def train(
    config: RunConfig,
    results_dir: str | Path = "results",
    resume: str | Path | None = None,
    total_timesteps: int | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train (or resume) a SAC agent as ``config`` says; returns where it went and how far.

    With ``resume``, the run directory's own ``config.yaml`` is used (``config`` is ignored
    except for ``total_timesteps``, which may extend the budget).
    """
    from dodgerl.agents import sac
    from dodgerl.replay import DeviceSampler, ReplayBuffer
    from dodgerl.replay.mirror import gather_batch

    if resume is not None:
        run_dir, candidates = resolve_resume(resume)
        config = load_run_config(run_dir)
    else:
        run_dir = new_run_dir(results_dir, config.experiment)
        save_config(config, run_dir / "config.yaml")
        candidates = []
    if total_timesteps is not None:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, total_timesteps=total_timesteps)
        )
    if on_start is not None:
        on_start(run_dir)
    tc, ec = config.train, config.env

    with contextlib.ExitStack() as cleanup:
        envs = make_vector_env(ec, tc.n_envs, tc.async_envs, tc.envs_per_worker)
        cleanup.callback(envs.close)
        key = jax.random.PRNGKey(config.seed)
        key, init_key = jax.random.split(key)
        agent = sac.create(init_key, envs.single_observation_space, envs.single_action_space, config.agent)

        step = episodes = updates = 0
        best_eval: float | None = None
        wall_offset = 0.0
        np_rng = np.random.default_rng(config.seed)
        resumes = 0
        if candidates:
            agent, meta, restored_from = restore_first_good(candidates, agent)
            step, episodes, updates = meta["step"], meta["episodes"], meta["updates"]
            best_eval = meta.get("best_eval")
            wall_offset = meta.get("wall_time_s", 0.0)
            key = jax.numpy.asarray(np.asarray(meta["key"], dtype=np.uint32))
            np_rng.bit_generator.state = meta["np_rng"]
            resumes = meta.get("resumes", 0) + 1
            print(f"resumed from {restored_from} at step {step}", flush=True)
            _abandon_after(run_dir, step, meta.get("replay_header"), restored_from)
            # best/ may hold a policy evaluated after this checkpoint (the evaluation of its step,
            # re-run below; a later one before a kill; one of an abandoned continuation): it
            # stays the run's best, and only a better evaluation replaces it.
            kept_best = complete_checkpoints(run_dir / BEST_DIR)
            if kept_best:
                try:
                    saved_best = read_meta(kept_best[-1]).get("best_eval")
                except CheckpointError:
                    saved_best = None
                if saved_best is not None and (best_eval is None or saved_best > best_eval):
                    best_eval = saved_best
        # After the restore: Orbax lists the steps on disk when it opens them.
        checkpoints = RunCheckpoints(run_dir, tc.keep_checkpoints)
        cleanup.callback(checkpoints.close)
        # Every Orbax call of the run is made by this thread, in order (the manager is not made
        # for calls from two threads): the periodic checkpoints and best/ are saved from copies
        # of the agent while the loop goes on (shut down before the manager is closed).
        saver = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        cleanup.callback(saver.shutdown)
        saves: collections.deque[Future] = collections.deque()  # submitted to ``saver``, not yet observed

        def on_saver(fn: Callable[[], Any]) -> Future:
            future = saver.submit(fn)
            saves.append(future)
            return future

        def check_saves(wait: bool = False) -> None:
            """Raise the error of a failed save, if any: of a finished job of ``saver`` (all of
            them, waited for, with ``wait``), or of Orbax's background writes while ``saver`` is
            idle."""
            while saves and (wait or saves[0].done()):
                saves.popleft().result()
            if not saves:  # (``saver`` is idle: no other Orbax call of ours is being made)
                checkpoints.check_for_errors()

        single_obs_space = envs.single_observation_space
        frame_shape = single_frames(np.zeros(single_obs_space.shape, single_obs_space.dtype)[None], ec).shape[1:]
        replay = ReplayBuffer(
            run_dir / "replay",
            capacity=config.replay.buffer_size,
            observation_shape=frame_shape,
            observation_dtype=single_obs_space.dtype,
            action_dim=envs.single_action_space.shape[0],
            n_envs=tc.n_envs,
            frame_stack=ec.frame_stack,
            seed=config.seed,
            n_step=config.replay.n_step,
            gamma=config.agent.gamma,
            writeback_s=config.replay.writeback_s or None,
        )
        # On an exception the buffer is released uncommitted, so that it declares what the last
        # checkpoint saw, as after a kill -9 (save_checkpoint commits it on every clean path).
        cleanup.push(lambda exc_type, *_: replay.close(commit=exc_type is None))
        # After the restore, so that a bad checkpoint fails before any evaluation process starts.
        if tc.eval_workers:
            evaluator: Evaluator | EvalProcesses = EvalProcesses(
                ec, tc.eval_episodes, tc.eval_seed, record=tc.video, workers=tc.eval_workers)
        else:
            evaluator = Evaluator(ec, tc.eval_episodes, tc.eval_seed, record=tc.video,
                                  asynchronous=tc.eval_async_envs, envs_per_worker=tc.envs_per_worker)
        if isinstance(evaluator, EvalProcesses):  # on an exception: stopped now, not waited for
            cleanup.push(lambda exc_type, *_: evaluator.close(wait=exc_type is None))
        else:
            cleanup.callback(evaluator.close)
        resume_step = step if candidates else None
        # Evaluation thresholds: the next is the first multiple of eval_freq above the step, or,
        # from a checkpoint that says so, one due at its own step and not yet run (checkpoints
        # made before the evaluation of their step; older ones made after it).
        next_eval = (step // tc.eval_freq + 1) * tc.eval_freq if tc.eval_freq else None
        eval_due_at_resume = False
        if candidates and tc.eval_freq and meta.get("next_eval") is not None:
            next_eval = meta["next_eval"]
            eval_due_at_resume = step >= next_eval
        progress_log = cleanup.enter_context(
            contextlib.closing(CsvLog(run_dir / "progress.csv", PROGRESS_FIELDS, resume_step)))
        # A row of the evaluation due at the resumed step (written after its checkpoint, before
        # the kill) is dropped: that evaluation runs again, on the same agent.
        eval_resume_step = None if resume_step is None else resume_step - int(eval_due_at_resume)
        eval_log = cleanup.enter_context(
            contextlib.closing(CsvLog(run_dir / "eval.csv", EVAL_FIELDS, eval_resume_step)))

        k_per_call = tc.utd * tc.n_envs * tc.update_every
        sampler = None
        mirror = None
        if on_accelerator(config.replay.device_mirror):
            from dodgerl.replay.mirror import DeviceMirror

            mirror = DeviceMirror(replay)  # uploads what a resumed buffer already holds
            cleanup.callback(mirror.close)
        # The sampler starts with the first update (if there is no mirror).
        cleanup.callback(lambda: sampler is not None and sampler.close())
        # Cumulative wall-clock seconds per phase of this thread. ``update`` is the update's dispatch
        # plus the time spent waiting for the device to finish it (with ``overlap``, only the part
        # the env step did not hide; with the dispatch thread below, submitting the call and
        # waiting for that thread to have made it, then for the device); ``compile`` is the first
        # update call (tracing, compilation, one run).
        timings = {"act": 0.0, "env": 0.0, "insert": 0.0, "sample": 0.0, "update": 0.0, "eval": 0.0,
                   "checkpoint": 0.0, "compile": 0.0}

        def meta_now() -> dict[str, Any]:
            return {
                "step": step, "episodes": episodes, "updates": updates, "best_eval": best_eval,
                "key": np.asarray(key).tolist(),
                "np_rng": np_rng.bit_generator.state, "wall_time_s": wall_offset + (time.perf_counter() - t_start),
                "replay_transitions": len(replay), "resumes": resumes,
                # The first evaluation not yet started: one due at this step (a checkpoint comes
                # before the evaluation of its step) is run first thing on resume.
                "next_eval": next_eval,
            }

        # The loop's device calls that read or donate the agent or the mirror's frames (mirror
        # uploads, act, the batch indices' upload, the update) go through ``on_device``: with the
        # dispatch thread they are made, in submission order, by one background thread, so that
        # this thread steps the envs while an update's kernels are being launched (on a GPU the
        # launch holds the calling thread about as long as the device runs the call); otherwise
        # they are made here, at once. Only that thread touches ``agent`` and ``mirror.frames``
        # while jobs are pending; this thread reads them after ``drain()``. (Key splits stay on
        # this thread: they share no buffer with those calls.)
        dispatcher = (ThreadPoolExecutor(1, thread_name_prefix="dispatch")
                      if tc.overlap and use_dispatch_thread(tc.dispatch_thread, ec) else None)
        if dispatcher is not None:
            cleanup.callback(functools.partial(dispatcher.shutdown, wait=True, cancel_futures=True))
        jobs: collections.deque[Future] = collections.deque()  # submitted, not yet observed
        # Two updates in flight only with the dispatch thread (without it, measured no gain at
        # 256x256 and a loss at 84x84: the loop's thread would launch the next update itself).
        two_in_flight = dispatcher is not None and tc.updates_in_flight == 2

        def on_device(fn: Callable[[], Any]) -> Future:
            if dispatcher is None:
                return _resolved(fn())
            while len(jobs) >= _MAX_QUEUED_JOBS:  # the host never runs far ahead of the thread
                jobs.popleft().result()
            future = dispatcher.submit(fn)
            jobs.append(future)
            return future

        def drain() -> None:
            """Wait until every submitted device call has been made (not for the device); timed
            as ``update`` (what is queued is mostly the update's launch)."""
            t0 = time.perf_counter()
            while jobs:
                jobs.popleft().result()  # a failed call raises here
            timings["update"] += time.perf_counter() - t0

        def save_checkpoint(wait: bool = True) -> None:
            """Commit the replay and save the latest checkpoint (``wait=False``: saved in the
            background from a copy of the agent, complete by the next save or the end of the
            run)."""
            finish_eval()  # a checkpoint's best_eval and eval.csv cover every evaluation up to it
            t0 = time.perf_counter()
            # The buffer is never behind the agent that learned from it; the checkpoint keeps the
            # header of this commit, so a resume from it can rewind the buffer to it.
            replay_header = replay.commit()
            meta = {**meta_now(), "replay_header": replay_header}
            # The agent of this step, copied on its device by the dispatch thread in order with
            # the updates (no drain); Orbax moves the copy to the host on ``saver``, not here.
            copied = on_device(lambda: _copy_tree(agent))
            on_saver(lambda: checkpoints.save(meta["step"], copied.result(), meta, wait=wait))
            if wait:
                check_saves(wait=True)
            timings["checkpoint"] += time.perf_counter() - t0

        pending_calls = 0  # vector steps collected since the last update call (after warm-up)
        in_flight: list[Future] = []  # (the metrics of) dispatched updates not yet waited for

        def wait_update(keep: int = 0) -> None:
            """Wait for the updates in flight, oldest first, until at most ``keep`` remain."""
            nonlocal metrics
            while len(in_flight) > keep:
                t0 = time.perf_counter()
                metrics = jax.block_until_ready(in_flight.pop(0).result())
                timings["update"] += time.perf_counter() - t0

        def choose_actions(observations: np.ndarray) -> Future:
            """Uniform random actions during warm-up, then the policy's (a device array, not waited
            for), as a Future."""
            nonlocal key
            if step < tc.learning_starts:
                return _resolved(np_rng.uniform(-1.0, 1.0, size=envs.action_space.shape).astype(np.float32))
            t0 = time.perf_counter()
            key, act_key = jax.random.split(key)
            # dispatch (and the observations' transfer)
            future = on_device(lambda: agent.act(observations, act_key))
            timings["act"] += time.perf_counter() - t0
            return future

        def maybe_update(block: bool) -> None:
            """Run the ``k_per_call`` gradient steps due, if any (``block``: wait for the result)."""
            nonlocal metrics, key, updates, sampler, pending_calls
            if pending_calls < tc.update_every or len(replay) < config.agent.batch_size:
                return
            pending_calls = 0
            first = timings["compile"] == 0.0
            t3 = time.perf_counter()
            # Draw (or take) the batch before waiting for the update in flight: host work that
            # overlaps the device instead of following it.
            if mirror is not None:
                host_indices = mirror.draw_indices(config.agent.batch_size, k_per_call)
                indices = on_device(lambda: jax.device_put(host_indices, mirror.device))
            else:
                if sampler is None:
                    sampler = DeviceSampler(
                        replay, batch_size=config.agent.batch_size, steps_per_call=k_per_call,
                        prefetch=config.replay.prefetch, workers=config.replay.sample_workers,
                    )
                batch = sac.Batch(**next(sampler))
            timings["sample"] += time.perf_counter() - t3
            if not two_in_flight:
                wait_update()  # at most one update in flight: the host never runs ahead of the device
            key, update_key = jax.random.split(key)
            t4 = time.perf_counter()

            def dispatch_update() -> Any:
                nonlocal agent
                if mirror is not None:  # the indices' upload ran before this, in order
                    agent, new_metrics = agent.update_from(mirror.frames, indices.result(), update_key,
                                                           gather_batch)
                else:
                    agent, new_metrics = agent.update(batch, update_key)
                return new_metrics

            future = on_device(dispatch_update)
            updates += k_per_call
            if first:  # compile time is reported apart from the update rate
                metrics = jax.block_until_ready(future.result())
                timings["compile"] += time.perf_counter() - t4
                return
            timings["update"] += time.perf_counter() - t4
            in_flight.append(future)
            if block:
                wait_update()
            elif two_in_flight:
                # This update is queued behind the previous one, which is waited for now: the
                # device goes from one to the next without waiting for this thread.
                wait_update(keep=1)

        gif_pool = ThreadPoolExecutor(1, thread_name_prefix="gif")
        cleanup.callback(gif_pool.shutdown)  # waits for the GIFs asked for
        eval_pool = (ThreadPoolExecutor(1, thread_name_prefix="eval")
                     if tc.eval_in_background and not tc.eval_workers else None)
        if eval_pool is not None:
            cleanup.callback(eval_pool.shutdown)
        # Background evaluations in processes: a thread moves the agent's copy to the CPU and
        # sends its policy to the workers (shut down before the workers are closed).
        send_pool = (ThreadPoolExecutor(1, thread_name_prefix="eval-send")
                     if tc.eval_in_background and tc.eval_workers else None)
        if send_pool is not None:
            cleanup.callback(send_pool.shutdown)
        # Where the background evaluation's copy goes; looked up only when used (a JAX started
        # with JAX_PLATFORMS=cuda has no CPU backend), and now, not at the first evaluation.
        eval_cpu = (_cpu_device() if tc.eval_in_background and not tc.eval_on_device
                    else None)
        pending_eval: list[_PendingEval] = []  # the evaluation in flight, if any

        def record_eval(eval_step: int, result: EvalResult, evaluated: Any, meta: dict[str, Any],
                        t_done: float) -> None:
            nonlocal best_eval
            row = result.row(eval_step, wall_offset + t_done - t_start)
            eval_log.write(row)
            last_eval[0] = row["mean_return"]
            if best_eval is None or row["mean_return"] > best_eval:
                best_eval = row["mean_return"]
                # Saved by ``saver`` from ``evaluated``: a copy of the agent when the evaluation
                # ran in the background; else the agent itself, which the next update donates,
                # so that save is waited for.
                saved = on_saver(functools.partial(checkpoints.save_best, eval_step, evaluated,
                                                   {**meta, "best_eval": best_eval}))
                if not tc.eval_in_background:
                    saved.result()
                video = run_dir / "videos" / f"best_step{eval_step}.gif"
                if tc.video and isinstance(evaluator, EvalProcesses):
                    evaluator.write_video(video)  # the worker holding the frames writes it
                elif tc.video and result.frames:
                    # Encoding takes ~1 s at 256x256, in a thread beside the loop (finished
                    # before the run returns; a process of its own measured no gain on the
                    # H200, where the loop mostly waits on the device: docs/perf_notes.md v18,
                    # v19); a GIF that cannot be written is reported, not raised.
                    gif_pool.submit(_write_gif_or_warn, result.frames, video)

        def finish_eval() -> None:
            """Wait for the evaluation in flight, if any, and log it."""
            if pending_eval:
                t0 = time.perf_counter()
                pending = pending_eval.pop()
                result, t_done = pending.wait()
                record_eval(pending.step, result, pending.evaluated(), pending.meta, t_done)
                timings["eval"] += time.perf_counter() - t0

        def collect_processes() -> tuple[EvalResult, float]:
            """The evaluation in flight in the evaluation processes, and when its last worker finished."""
            result = evaluator.collect()
            return result, min(evaluator.last_finished, time.perf_counter())

        def run_eval() -> None:
            """Evaluate the agent of this step: here, in evaluation processes (``eval_workers``),
            and/or (``eval_in_background``) while training goes on, in which case its row and best/
            come when it finishes."""
            nonlocal key
            finish_eval()  # at most one in flight: rows stay in step order
            key, eval_key = jax.random.split(key)
            deterministic = tc.eval_deterministic
            t0 = time.perf_counter()
            if tc.eval_in_background:
                # Nothing is waited for here: the agent of this step is copied on its device by
                # the dispatch thread, in order with the updates (no drain; the next update
                # donates the agent's buffers, not the copy's), and a background thread moves the
                # copy to the CPU (unless ``eval_on_device``) and sends its policy to the
                # evaluation processes, or evaluates it itself, while the loop goes on (the
                # drain and the copy held the loop ~110-150 ms per evaluation at 84x84 before v17,
                # ~20 ms per 1000 env steps at 256x256 before v18).
                copied = on_device(lambda: _copy_tree(agent))

                if send_pool is not None:
                    def send() -> Any:
                        evaluated = _moved(copied.result(), eval_cpu)
                        evaluator.submit(evaluated.policy(), eval_key, deterministic)
                        return evaluated

                    sent = send_pool.submit(send)

                    def wait_sent() -> tuple[EvalResult, float]:
                        sent.result()  # an error sending is raised here
                        return collect_processes()

                    def finished() -> bool:  # (a failed send: finished, its error raised by wait)
                        return sent.done() and (sent.exception() is not None or evaluator.finished())

                    pending_eval.append(_PendingEval(wait_sent, finished, step, sent.result, meta_now()))
                else:
                    def job() -> tuple[EvalResult, float, Any]:
                        evaluated = _moved(copied.result(), eval_cpu)
                        result = evaluator.run(lambda o, k: evaluated.act(o, k, deterministic=deterministic),
                                               _moved(eval_key, eval_cpu))
                        return result, time.perf_counter(), evaluated

                    future = eval_pool.submit(job)
                    pending_eval.append(_PendingEval(lambda: future.result()[:2], future.done, step,
                                                     lambda: future.result()[2], meta_now()))
                timings["eval"] += time.perf_counter() - t0
                return
            drain()
            if isinstance(evaluator, EvalProcesses):
                evaluator.submit(agent.policy(), eval_key, deterministic)
                pending_eval.append(_PendingEval(collect_processes, evaluator.finished, step,
                                                 lambda: agent, meta_now()))
                timings["eval"] += time.perf_counter() - t0
                finish_eval()  # before the next update donates the agent best/ may save
            else:
                result = evaluator.run(lambda o, k: agent.act(o, k, deterministic=deterministic), eval_key)
                record_eval(step, result, agent, meta_now(), time.perf_counter())
                timings["eval"] += time.perf_counter() - t0

        if tc.eval_in_background:
            # Compiled now, beside the warm-up: at the first evaluation its compilation held the
            # dispatch thread, and so the loop's next act, ~0.3 s (84x84, H200).
            warm_copy = on_device(lambda: _copy_tree(agent))
        if not tc.eval_workers:
            # The evaluation's act (its batch of eval_episodes observations, on the device it
            # runs on) compiled now too, by whoever makes the evaluation's calls: traced and
            # compiled at the first evaluation, it slowed the loop's next kilostep to 495-637 env
            # steps/s from ~1,130 (256x256, H200; 1,116 with this: docs/perf_notes.md v18). Its
            # own key: the run's keys are untouched.
            eval_obs = np.zeros((tc.eval_episodes, *single_obs_space.shape), single_obs_space.dtype)

            def warm_act(policy_of: Any, device: Any) -> None:
                warm_key = _moved(jax.random.PRNGKey(0), device)
                policy_of.act(eval_obs, warm_key, deterministic=tc.eval_deterministic)  # compiled in the call

            if eval_pool is not None:
                eval_pool.submit(lambda: warm_act(_moved(warm_copy.result(), eval_cpu), eval_cpu))
            else:
                on_device(lambda: warm_act(agent, None))
        print(f"run directory: {run_dir}", flush=True)
        t_start = time.perf_counter()
        last_eval: list[float | None] = [best_eval]
        obs, _ = envs.reset(seed=[config.seed * 10_007 + resumes * 1_000 + i for i in range(tc.n_envs)])
        ep_return = np.zeros(tc.n_envs)
        ep_length = np.zeros(tc.n_envs, dtype=np.int64)
        recent_returns: list[float] = []
        recent_lengths: list[int] = []
        metrics: dict[str, Any] = {}  # of the latest update call waited for (logging never waits)
        next_log = (step // tc.log_freq + 1) * tc.log_freq
        next_ckpt = (step // tc.checkpoint_freq + 1) * tc.checkpoint_freq
        last_log_time, last_log_step = time.perf_counter(), step

        bar = None
        if tc.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=tc.total_timesteps, initial=step, unit="step", dynamic_ncols=True, smoothing=0.05)
            cleanup.callback(bar.close)

        interrupted = False
        with _StopFlag() as stop:
            if eval_due_at_resume:  # before the first act: the same key split as the run before
                next_eval += tc.eval_freq
                run_eval()
            pending_actions = choose_actions(obs)
            while step < tc.total_timesteps:
                if stop.requested:
                    interrupted = True
                    print(f"\n{stop.requested} received: saving a checkpoint at step {step}", flush=True)
                    break
                t_act = time.perf_counter()
                # waits for the device's act, not the update
                actions = np.asarray(pending_actions.result())
                t0 = time.perf_counter()
                next_obs, rewards, terminated, truncated, infos = envs.step(actions)
                t1 = time.perf_counter()
                done = terminated | truncated
                real_next = next_obs
                if done.any():
                    real_next = next_obs.copy()
                    for i in np.flatnonzero(done):
                        real_next[i] = infos["final_obs"][i]
                replay.add(single_frames(obs, ec), actions, rewards, single_frames(real_next, ec), terminated, truncated)
                if mirror is not None:
                    chunks = mirror.take()  # host; the upload is a device call
                    on_device(functools.partial(mirror.upload, chunks))
                while jobs and jobs[0].done():  # surface a failed device call now
                    jobs.popleft().result()
                timings["act"] += t0 - t_act
                timings["env"] += t1 - t0
                timings["insert"] += time.perf_counter() - t1
                obs = next_obs
                step += tc.n_envs
                ep_return += rewards
                ep_length += 1
                for i in np.flatnonzero(done):
                    episodes += 1
                    recent_returns.append(float(ep_return[i]))
                    recent_lengths.append(int(ep_length[i]))
                    ep_return[i] = 0.0
                    ep_length[i] = 0
                if step > tc.learning_starts:
                    pending_calls += 1
                if tc.overlap:
                    # The next action is queued on the device before the update, so fetching it
                    # does not wait for the update, which then runs while the envs step.
                    pending_actions = choose_actions(obs)
                    maybe_update(block=False)
                else:
                    maybe_update(block=True)
                    pending_actions = choose_actions(obs)

                if bar is not None:
                    bar.update(tc.n_envs)
                if step >= next_log:
                    next_log += tc.log_freq
                    now = time.perf_counter()
                    sps = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    row = {
                        "step": step, "episodes": episodes, "updates": updates,
                        "train_return": np.mean(recent_returns) if recent_returns else "",
                        "train_length": np.mean(recent_lengths) if recent_lengths else "",
                        "env_steps_per_s": round(sps, 1),
                        "wall_time_s": round(wall_offset + now - t_start, 3),
                        **{f"time_{k}_s": round(v, 3) for k, v in timings.items()},
                        **{k: float(metrics[k]) for k in _METRIC_FIELDS if k in metrics},
                    }
                    progress_log.write(row)
                    check_saves()  # a failed background save stops the run now
                    recent_returns.clear()
                    recent_lengths.clear()
                    if pending_eval and pending_eval[0].finished():
                        finish_eval()  # a background evaluation that has finished: its row, best/
                    if bar is not None:
                        bar.set_postfix(sps=f"{sps:.0f}", eval=_fmt(last_eval[0]), refresh=False)
                # The checkpoint before the evaluation of the same step: it then waits only for
                # evaluations started at least eval_freq env steps ago (with eval_in_background
                # the one just started would keep the loop waiting for a whole evaluation).
                if step >= next_ckpt:
                    next_ckpt += tc.checkpoint_freq
                    if step < tc.total_timesteps:  # the last one comes after the final evaluation
                        save_checkpoint(wait=False)
                if next_eval is not None and step >= next_eval:
                    next_eval += tc.eval_freq
                    run_eval()
                    if bar is not None:
                        bar.set_postfix(eval=_fmt(last_eval[0]), refresh=False)

            finish_eval()
            if not interrupted and (next_eval is None or not eval_log_has(run_dir, step)):
                run_eval()
            save_checkpoint()
        drain()
        wait_update()
        # Leaving the stack closes, newest first: the progress bar, the background evaluation
        # thread, the dispatch thread (after the call it is making), the sampler and the mirror,
        # the logs, the evaluator (its processes), the
        # replay files, the checkpoint manager (after its async best/ save) and the envs. On an
        # exception (a second Ctrl-C too) the same happens, evaluation processes stopped without
        # waiting and the replay uncommitted, and the exception goes on up: no subprocess
        # outlives it, and the files are as a kill -9 would have left them.
    result = TrainResult(run_dir, step, episodes, updates, best_eval, interrupted, dict(timings))
    print(
        f"{'stopped' if interrupted else 'done'}: {step} env steps, {episodes} episodes, "
        f"{updates} gradient steps; best eval return {_fmt(best_eval)}; run directory {run_dir}",
        flush=True,
    )
    return result


def on_accelerator(setting: bool | str) -> bool:
    """A true/false/``auto`` setting resolved: ``auto`` means on when JAX runs on an accelerator."""
    if setting == "auto":
        return jax.default_backend() != "cpu"
    return bool(setting)


def _abandon_after(run_dir: Path, step: int, replay_header: dict[str, Any] | None,
                   restored_from: Path) -> None:
    """A resume from a checkpoint older than what the run saved last (``--resume`` of a named
    checkpoint; the newest one could not be restored; a kill -9 while the newest was being
    written): the run continues from ``step``, and what the abandoned continuation saved after it
    moves out of its way, to ``abandoned/<time>_after_<step>/``: its checkpoints (else a later
    resume would take them for the newest, and this run could not save its own at those steps),
    the replay header of its last commit (the buffer is rewound to the checkpoint's commit: what
    was added after it is no longer sampled and gets overwritten) and a copy of progress.csv and
    eval.csv as they were (the resumed run drops their rows after ``step``). best/ stays. Nothing
    happens when nothing was saved after ``step``.

    A checkpoint without the replay header (best/ checkpoints; checkpoints saved before it was
    recorded) cannot rewind the buffer: it is reopened as it is, and a named resume says so."""
    from dodgerl.replay import rewind_check, rewind_header

    replay_dir = run_dir / "replay"
    # Read only first: a header of another buffer raises before anything moves. Then the
    # checkpoints, then the buffer: a crash in between leaves what a plain resume repairs.
    have_buffer = (replay_dir / "header.json").is_file()
    can_rewind = bool(replay_header) and have_buffer
    dropped = rewind_check(replay_dir, replay_header) if can_rewind else 0
    name = f"{datetime.now():%Y%m%d_%H%M%S}_after_{step}"
    destination, n = run_dir / "abandoned" / name, 1
    while destination.exists():  # two resumes within one second
        n += 1
        destination = run_dir / "abandoned" / f"{name}_{n}"
    moved = set_aside_after(run_dir, step, destination)
    if can_rewind and dropped >= 0:
        # Dropped > 0: the rewind; 0: the sampling RNG's state set back to the checkpoint's.
        rewind_header(replay_dir, replay_header, keep_as=destination / "replay_header.json")
    elif can_rewind:
        print(f"warning: the replay buffer in {replay_dir} holds less than checkpoint {step} saw "
              "(was it recreated?): reopened as it is", flush=True)
    elif have_buffer and (moved or restored_from.parent.name == BEST_DIR):
        print(f"warning: {restored_from} does not record the replay buffer's state: the buffer "
              "is reopened as it is, with what was added after that step", flush=True)
    if not (dropped > 0 or moved):
        return
    destination.mkdir(parents=True, exist_ok=True)
    for log_name in ("progress.csv", "eval.csv"):
        if (run_dir / log_name).is_file():
            shutil.copy2(run_dir / log_name, destination / log_name)
    what = ", ".join(str(p.relative_to(destination)) for p in moved) or "no checkpoint"
    rewound = f"; replay buffer rewound to it ({dropped} transitions dropped)" if dropped > 0 else ""
    print(f"resuming from step {step}, before the run's last save: {what} set aside in "
          f"{destination}{rewound}", flush=True)


def use_dispatch_thread(setting: bool | str, env_config: EnvConfig) -> bool:
    """``train.dispatch_thread`` resolved: ``auto`` means image observations on an accelerator
    (docs/perf_notes.md v10: +23-27% end to end there; no gain for vector updates, and none on a
    CPU, where calls return at once)."""
    if setting == "auto":
        return env_config.obs_mode == "topdown" and on_accelerator("auto")
    return bool(setting)


def _cpu_device() -> Any:
    """JAX's first CPU device, where ``train.eval_in_background`` evaluates its copy of the agent
    (unless ``eval_on_device``); a clear error when JAX runs without a CPU backend."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError as e:
        raise ConfigError(
            "train.eval_in_background evaluates a copy of the agent on the CPU, but this JAX has "
            f"no CPU backend (JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}: {e}); set "
            "train.eval_on_device=true or let JAX_PLATFORMS include cpu") from e


def _moved(tree: Any, device: Any) -> Any:
    """``tree`` on ``device``: ``tree`` itself where it is there already or ``device`` is None
    (the caller owns it: a copy, a key), else new buffers there."""
    if device is None or all(leaf.devices() == {device} for leaf in jax.tree_util.tree_leaves(tree)):
        return tree
    return jax.device_put(tree, device, may_alias=False)


@jax.jit
def _copy_tree(tree: Any) -> Any:
    """A copy of every array of ``tree`` in new buffers on the same device, in one compiled call
    (per-leaf ``x.copy()`` compiles a program per leaf shape at the first call: ~0.6 s for an
    image agent on an H200)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


def eval_log_has(run_dir: Path, step: int) -> bool:
    with (run_dir / "eval.csv").open(newline="") as f:
        return any(int(r["step"]) == step for r in csv.DictReader(f))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
