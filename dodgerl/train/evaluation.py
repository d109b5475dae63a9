"""Evaluation during training, in whichever placement the execution plan chose.

- in the loop: the live agent acts on the fixed-seed episodes, the loop waits;
- in a background thread: a copy of the agent (on the CPU, or on the training device), while
  training goes on;
- in evaluation processes, each with a CPU copy of the policy (the loop waits for them unless
  ``eval_in_background``).

Every placement evaluates the agent of the step it started at, on the same episodes: same rows.
A background evaluation's row and ``best/`` are written when it finishes; at most one is in
flight, so rows stay in step order.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from dodgerl.config import ConfigError, EnvConfig, TrainConfig
from dodgerl.episodes import EvalResult, Evaluator, write_gif_or_warn
from dodgerl.train.checkpointing import Checkpointer, RunState
from dodgerl.train.dispatcher import Dispatcher
from dodgerl.train.eval_processes import EvalProcesses
from dodgerl.train.logs import CsvLog
from dodgerl.train.plan import ExecutionPlan


class _Pending(NamedTuple):
    """An evaluation started and not yet logged."""

    wait: Callable[[], tuple[EvalResult, float]]
    """Waits for it: (result, ``time.perf_counter()`` when it finished)."""
    finished: Callable[[], bool]
    """Whether ``wait`` would return at once."""
    step: int
    evaluated: Callable[[], Any]
    """Returns the agent it evaluates (best/ saves it); call after ``wait``."""
    meta: dict[str, Any]
    """The checkpoint meta of its step."""


class TrainingEvaluation:
    """Starts evaluations of the dispatcher's agent and records them: eval.csv, best/, GIFs."""

    def __init__(self, env_config: EnvConfig, tc: TrainConfig, plan: ExecutionPlan,
                 dispatcher: Dispatcher, state: RunState, checkpointer: Checkpointer,
                 eval_log: CsvLog, run_dir: Path, observation_space: Any,
                 timings: dict[str, float], cleanup: contextlib.ExitStack) -> None:
        self.tc, self.plan, self.timings = tc, plan, timings
        self.dispatcher, self.state, self.checkpointer = dispatcher, state, checkpointer
        self.eval_log, self.run_dir = eval_log, run_dir
        self.last_return = state.best_eval
        self._pending: list[_Pending] = []
        if plan.eval_workers:
            self.evaluator: Evaluator | EvalProcesses = EvalProcesses(
                env_config, tc.eval_episodes, tc.eval_seed, record=tc.video, workers=plan.eval_workers)
            # On an exception: stopped now, not waited for.
            cleanup.push(lambda exc_type, *_: self.evaluator.close(wait=exc_type is None))
        else:
            self.evaluator = Evaluator(env_config, tc.eval_episodes, tc.eval_seed, record=tc.video,
                                       asynchronous=plan.eval_async_envs,
                                       envs_per_worker=plan.envs_per_worker)
            cleanup.callback(self.evaluator.close)
        self._gifs = self._pool("gif", True, cleanup)  # shut down after the GIFs asked for
        self._thread = self._pool("eval", plan.eval_in_background and not plan.eval_workers, cleanup)
        # Background evaluations in processes: a thread moves the agent's copy to the CPU and
        # sends its policy to the workers (shut down before the workers are closed).
        self._sender = self._pool("eval-send", plan.eval_in_background and bool(plan.eval_workers), cleanup)
        # Where the background evaluation's copy goes; looked up now, not at the first
        # evaluation (a JAX started with JAX_PLATFORMS=cuda has no CPU backend).
        self._cpu = cpu_device() if plan.eval_in_background and not plan.eval_on_device else None
        self._compile_act(observation_space)

    @staticmethod
    def _pool(name: str, wanted: bool, cleanup: contextlib.ExitStack) -> ThreadPoolExecutor | None:
        if not wanted:
            return None
        pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        cleanup.callback(pool.shutdown)
        return pool

    def _compile_act(self, observation_space: Any) -> None:
        """Compile the evaluation's act (its batch of ``eval_episodes`` observations, on the
        device it runs on) beside the warm-up, by whoever makes the evaluation's calls: compiled
        at the first evaluation, it would hold the loop. Its own key: the run's are untouched."""
        if self.plan.eval_in_background:
            warm_copy = self.dispatcher.copy_agent()  # the copy's program, compiled now too
        if self.plan.eval_workers:
            return
        eval_obs = np.zeros((self.tc.eval_episodes, *observation_space.shape), observation_space.dtype)

        def warm_act(policy_of: Any, device: Any) -> None:
            warm_key = moved(jax.random.PRNGKey(0), device)
            policy_of.act(eval_obs, warm_key, deterministic=self.tc.eval_deterministic)

        if self._thread is not None:
            self._thread.submit(lambda: warm_act(moved(warm_copy.result(), self._cpu), self._cpu))
        else:
            self.dispatcher.submit(lambda: warm_act(self.dispatcher.agent, None))

    # -- the loop's calls

    def start(self, key: jax.Array, meta: dict[str, Any]) -> None:
        """Evaluate the agent of this step (``meta``: its checkpoint meta), in the plan's
        placement; a background evaluation's row comes when it finishes."""
        self.finish()  # at most one in flight: rows stay in step order
        t0 = time.perf_counter()
        step, deterministic = self.state.step, self.tc.eval_deterministic
        if self.plan.eval_in_background:
            self._start_background(key, meta)
            self.timings["eval"] += time.perf_counter() - t0
            return
        self.dispatcher.drain()
        agent = self.dispatcher.agent
        if isinstance(self.evaluator, EvalProcesses):
            self.evaluator.submit(agent.policy(), key, deterministic)
            self._pending.append(_Pending(self._collect_processes, self.evaluator.finished, step,
                                          lambda: agent, meta))
            self.timings["eval"] += time.perf_counter() - t0
            self.finish()  # before the next update donates the agent best/ may save
        else:
            result = self.evaluator.run(lambda o, k: agent.act(o, k, deterministic=deterministic), key)
            self._record(step, result, agent, meta, time.perf_counter())
            self.timings["eval"] += time.perf_counter() - t0

    def _start_background(self, key: jax.Array, meta: dict[str, Any]) -> None:
        """Nothing is waited for here: the agent of this step is copied on its device by the
        dispatch thread, in order with the updates (the next update donates the agent's buffers,
        not the copy's), and a background thread moves the copy to the CPU (unless on device)
        and sends its policy to the evaluation processes, or evaluates it itself."""
        step, deterministic, evaluator = self.state.step, self.tc.eval_deterministic, self.evaluator
        copied = self.dispatcher.copy_agent()
        if self._sender is not None:
            def send() -> Any:
                evaluated = moved(copied.result(), self._cpu)
                evaluator.submit(evaluated.policy(), key, deterministic)
                return evaluated

            sent = self._sender.submit(send)

            def wait_sent() -> tuple[EvalResult, float]:
                sent.result()  # an error sending is raised here
                return self._collect_processes()

            def finished() -> bool:  # (a failed send: finished, its error raised by wait)
                return sent.done() and (sent.exception() is not None or evaluator.finished())

            self._pending.append(_Pending(wait_sent, finished, step, sent.result, meta))
            return

        def job() -> tuple[EvalResult, float, Any]:
            evaluated = moved(copied.result(), self._cpu)
            result = evaluator.run(lambda o, k: evaluated.act(o, k, deterministic=deterministic),
                                   moved(key, self._cpu))
            return result, time.perf_counter(), evaluated

        future = self._thread.submit(job)
        self._pending.append(_Pending(lambda: future.result()[:2], future.done, step,
                                      lambda: future.result()[2], meta))

    def _collect_processes(self) -> tuple[EvalResult, float]:
        """The evaluation in flight in the processes, and when its last worker finished."""
        result = self.evaluator.collect()
        return result, min(self.evaluator.last_finished, time.perf_counter())

    def poll(self) -> None:
        """Record a background evaluation that has finished, if any."""
        if self._pending and self._pending[0].finished():
            self.finish()

    def finish(self) -> None:
        """Wait for the evaluation in flight, if any, and record it."""
        if self._pending:
            t0 = time.perf_counter()
            pending = self._pending.pop()
            result, t_done = pending.wait()
            self._record(pending.step, result, pending.evaluated(), pending.meta, t_done)
            self.timings["eval"] += time.perf_counter() - t0

    def _record(self, step: int, result: EvalResult, evaluated: Any, meta: dict[str, Any],
                t_done: float) -> None:
        row = result.row(step, self.state.wall_time(t_done))
        self.eval_log.write(row)
        self.last_return = row["mean_return"]
        state = self.state
        if state.best_eval is not None and row["mean_return"] <= state.best_eval:
            return
        state.best_eval = row["mean_return"]
        # From a copy when the evaluation ran in the background; else the live agent, which the
        # next update donates, so that save is waited for.
        self.checkpointer.save_best(step, evaluated, {**meta, "best_eval": state.best_eval},
                                    wait=not self.plan.eval_in_background)
        video = self.run_dir / "videos" / f"best_step{step}.gif"
        if self.tc.video and isinstance(self.evaluator, EvalProcesses):
            self.evaluator.write_video(video)  # the worker holding the frames writes it
        elif self.tc.video and result.frames:
            # Encoded in a thread beside the loop (finished before the run returns); a GIF that
            # cannot be written is reported, not raised.
            self._gifs.submit(write_gif_or_warn, result.frames, video)


def cpu_device() -> Any:
    """JAX's first CPU device, where a background evaluation's copy goes (unless on the
    device); a clear error when JAX runs without a CPU backend."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError as e:
        raise ConfigError(
            "perf.eval_in_background evaluates a copy of the agent on the CPU, but this JAX has "
            f"no CPU backend (JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}: {e}); set "
            "perf.eval_on_device=true or let JAX_PLATFORMS include cpu") from e


def moved(tree: Any, device: Any) -> Any:
    """``tree`` on ``device``: ``tree`` itself where it is there already or ``device`` is None
    (the caller owns it: a copy, a key), else new buffers there."""
    if device is None or all(leaf.devices() == {device} for leaf in jax.tree_util.tree_leaves(tree)):
        return tree
    return jax.device_put(tree, device, may_alias=False)
