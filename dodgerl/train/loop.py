"""The training loop: act, step the envs into the replay, update, log, checkpoint, evaluate.

``train()`` is the one place that knows the env, the replay buffer, the agent and the files of a
run; each part it calls has one job (``collector``, ``dispatcher``, ``evaluation``,
``checkpointing``, ``logs``), and how fast it runs is the execution plan's (``plan``)::

    results/<experiment>/<YYYYmmdd_HHMMSS>/
        config.yaml  plan.json  progress.csv  eval.csv
        checkpoints/<step>/  best/<step>/  replay/  videos/
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from dodgerl.checkpoint import resolve_resume
from dodgerl.config import RunConfig, load_run_config, save_config
from dodgerl.envs.make import make_vector_env
from dodgerl.train.checkpointing import (Checkpointer, RunState, new_run_dir, resume_state,
                                         set_aside_replay)
from dodgerl.train.collector import Collector
from dodgerl.train.dispatcher import Dispatcher, resolved
from dodgerl.train.evaluation import TrainingEvaluation
from dodgerl.train.logs import (EVAL_FIELDS, PROGRESS_FIELDS, TIMED_PHASES, CsvLog, PaceNotice,
                                ProgressBar, eval_log_has, fmt, progress_row)
from dodgerl.train.plan import ExecutionPlan, choose_plan
from dodgerl.train.setup import agent_for, open_replay, with_env_structure


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    episodes: int
    updates: int
    best_eval_return: float | None
    interrupted: bool
    timings: dict[str, float]


def train(config: RunConfig, results_dir: str | Path = "results", resume: str | Path | None = None,
          total_timesteps: int | None = None, on_start: Callable[[Path], None] | None = None,
          fresh_replay: bool = False) -> TrainResult:
    """Train (or resume) a SAC agent as ``config`` says; returns where it went and how far.

    With ``resume``, the run directory's own ``config.yaml`` is used (``config`` is ignored);
    ``total_timesteps`` sets a new budget, which config.yaml then records. ``fresh_replay``
    (with ``resume``): the run's replay buffer is set aside and an empty one started; the agent
    and counters are restored as usual, and updates go on once the new buffer holds a batch.
    """
    run_dir, config, candidates = _open_run(config, results_dir, resume, total_timesteps)
    if fresh_replay and resume is not None:
        set_aside_replay(run_dir)
    if on_start is not None:
        on_start(run_dir)
    tc = config.train
    with contextlib.ExitStack() as cleanup:
        run = start_run(config, run_dir, candidates, cleanup)
        state, bar = run.state, run.bar
        next_log = (state.step // tc.log_freq + 1) * tc.log_freq
        next_ckpt = (state.step // tc.checkpoint_freq + 1) * tc.checkpoint_freq
        interrupted = False
        with StopFlag() as stop:
            if run.eval_due:  # before the first act: the same key split as the run before
                state.next_eval += tc.eval_freq
                run.evaluate()
            actions = run.choose_actions()
            while state.step < tc.total_timesteps:
                if stop.requested:
                    interrupted = True
                    print(f"\n{stop.requested} received: saving a checkpoint at step {state.step}", flush=True)
                    break
                run.collect(actions)
                if run.plan.overlap:
                    # The next action is queued before the update: fetching it does not wait
                    # for the update, which then runs while the envs step.
                    actions = run.choose_actions()
                    run.update(block=False)
                else:
                    run.update(block=True)
                    actions = run.choose_actions()
                if bar is not None:
                    bar.update(tc.n_envs)
                if state.step >= next_log:
                    next_log += tc.log_freq
                    run.log_progress()
                # The checkpoint before the evaluation of the same step: it then waits only for
                # evaluations started at least eval_freq env steps ago.
                if state.step >= next_ckpt:
                    next_ckpt += tc.checkpoint_freq
                    if state.step < tc.total_timesteps:  # the last one comes after the final evaluation
                        run.save_checkpoint(wait=False)
                if state.next_eval is not None and state.step >= state.next_eval:
                    state.next_eval += tc.eval_freq
                    run.evaluate()
            run.evaluation.finish()
            if not interrupted and (state.next_eval is None or not eval_log_has(run_dir / "eval.csv", state.step)):
                run.evaluate()
            run.save_checkpoint(wait=True)
        run.dispatcher.finish()
        # Leaving the stack closes, newest first: the progress bar, the evaluation's threads and
        # processes, the dispatch thread, the sampler and the mirror, the logs, the replay files,
        # the checkpoint manager (after its saves) and the envs. On an exception (a second
        # Ctrl-C too) the same happens, evaluation processes stopped without waiting and the
        # replay uncommitted, and the exception goes on up: no subprocess outlives it, and the
        # files are as a kill -9 would have left them.
    print(f"{'stopped' if interrupted else 'done'}: {state.step} env steps, {state.episodes} episodes, "
          f"{state.updates} gradient steps; best eval return {fmt(state.best_eval)}; "
          f"run directory {run_dir}", flush=True)
    return TrainResult(run_dir, state.step, state.episodes, state.updates, state.best_eval,
                       interrupted, dict(run.timings))


@dataclasses.dataclass
class Run:
    """The parts of one run, wired together: what the loop calls, each step one call."""

    config: RunConfig
    plan: ExecutionPlan
    state: RunState
    envs: Any
    replay: Any
    checkpointer: Checkpointer
    dispatcher: Dispatcher
    evaluation: TrainingEvaluation
    collector: Collector
    progress_log: CsvLog
    pace: PaceNotice
    bar: ProgressBar | None
    timings: dict[str, float]
    eval_due: bool
    """The evaluation of the restored step is still due (it runs first)."""
    last_log: tuple[float, int] = (0.0, 0)

    def choose_actions(self) -> Future:
        """Uniform random actions during warm-up, then the policy's (not waited for)."""
        state = self.state
        if state.step < self.config.train.learning_starts:
            shape = self.envs.action_space.shape
            return resolved(state.np_rng.uniform(-1.0, 1.0, size=shape).astype(np.float32))
        t0 = time.perf_counter()
        future = self.dispatcher.act(self.collector.observations, state.split_key())
        self.timings["act"] += time.perf_counter() - t0
        return future

    def collect(self, actions: Future) -> None:
        """Step the envs with ``actions`` into the replay (and its device mirror)."""
        t0 = time.perf_counter()
        chosen = np.asarray(actions.result())  # waits for the device's act, not the update
        t1 = time.perf_counter()
        finished, env_s = self.collector.step(chosen)
        self.dispatcher.stored()
        self.timings["act"] += t1 - t0
        self.timings["env"] += env_s
        self.timings["insert"] += time.perf_counter() - t1 - env_s
        self.state.step += self.config.train.n_envs
        self.state.episodes += finished
        if self.state.step > self.config.train.learning_starts:
            self.dispatcher.collected()

    def update(self, block: bool) -> None:
        """The gradient steps due, if any (``block``: waited for)."""
        if self.dispatcher.update_due():
            self.state.updates += self.dispatcher.update(self.state.split_key(), block)
            notice = self.pace.observe(self.state.step, self.state.updates, self.timings["compile"] > 0)
            if notice:
                print(f"\n{notice}", flush=True)

    def evaluate(self) -> None:
        """Start the evaluation of this step (recorded when it finishes)."""
        self.evaluation.finish()  # at most one in flight
        self.evaluation.start(self.state.split_key(), self.state.meta(len(self.replay)))
        if self.bar is not None:
            self.bar.show(self.evaluation.last_return)

    def save_checkpoint(self, wait: bool) -> None:
        """Commit the replay, then save the agent of this step (from a copy, in the
        background unless ``wait``)."""
        self.evaluation.finish()  # a checkpoint's best_eval and eval.csv cover every evaluation up to it
        t0 = time.perf_counter()
        # The checkpoint keeps the header of this commit: a resume can rewind the buffer to it.
        meta = {**self.state.meta(len(self.replay)), "replay_header": self.replay.commit()}
        self.checkpointer.save(self.state.step, self.dispatcher.copy_agent(), meta, wait=wait)
        self.timings["checkpoint"] += time.perf_counter() - t0

    def log_progress(self) -> None:
        """A progress.csv row; surfaces a failed background save and records a finished
        background evaluation."""
        state, now = self.state, time.perf_counter()
        sps = (state.step - self.last_log[1]) / max(now - self.last_log[0], 1e-9)
        self.last_log = (now, state.step)
        self.progress_log.write(progress_row(state, sps, now, self.timings, self.dispatcher.metrics,
                                             self.collector.episode_stats()))
        self.checkpointer.check()  # a failed background save stops the run now
        self.evaluation.poll()
        if self.bar is not None:
            self.bar.show(self.evaluation.last_return)


def start_run(config: RunConfig, run_dir: Path, candidates: list[Path],
              cleanup: contextlib.ExitStack) -> Run:
    """Build the parts of a run (restoring a checkpoint of ``candidates``, if any), each closed
    by ``cleanup`` in the reverse order."""
    tc, ec = config.train, config.env
    plan = choose_plan(config)
    print(plan.summary(), flush=True)
    plan.write(run_dir)
    timings = dict.fromkeys(TIMED_PHASES, 0.0)
    envs = make_vector_env(ec, tc.n_envs, plan.async_envs, plan.envs_per_worker)
    cleanup.callback(envs.close)
    state = RunState(key=jax.random.PRNGKey(config.seed), np_rng=np.random.default_rng(config.seed),
                     config=config.to_dict())
    agent = agent_for(envs, config, state.split_key())
    eval_due = False
    if candidates:
        agent, eval_due = resume_state(run_dir, candidates, agent, state, tc.eval_freq)
    if state.next_eval is None and tc.eval_freq:
        state.next_eval = (state.step // tc.eval_freq + 1) * tc.eval_freq
    checkpointer = Checkpointer(run_dir, tc.keep_checkpoints, cleanup)
    replay = open_replay(run_dir, config, plan, envs, agent, cleanup)
    resume_step = state.step if candidates else None
    progress_log = cleanup.enter_context(contextlib.closing(
        CsvLog(run_dir / "progress.csv", PROGRESS_FIELDS, resume_step)))
    # A row of the evaluation due at the resumed step (written after its checkpoint, before the
    # kill) is dropped: that evaluation runs again, on the same agent.
    eval_log = cleanup.enter_context(contextlib.closing(CsvLog(
        run_dir / "eval.csv", EVAL_FIELDS, None if resume_step is None else resume_step - eval_due)))
    dispatcher = Dispatcher(agent, replay, plan, config.agent.batch_size,
                            tc.utd * tc.n_envs * tc.update_every, tc.update_every, timings, cleanup)
    evaluation = TrainingEvaluation(ec, tc, plan, dispatcher, state, checkpointer, eval_log,
                                    run_dir, envs.single_observation_space, timings, cleanup)
    pace = PaceNotice(ec.obs_mode == "topdown" and not plan.machine.accelerator, tc.total_timesteps)
    print(f"run directory: {run_dir}", flush=True)
    state.t_start = time.perf_counter()
    collector = Collector(envs, replay, ec, [config.seed * 10_007 + state.resumes * 1_000 + i
                                             for i in range(tc.n_envs)])
    bar = None
    if tc.progress_bar:
        bar = ProgressBar(tc.total_timesteps, state.step)
        cleanup.callback(bar.close)
    return Run(config, plan, state, envs, replay, checkpointer, dispatcher, evaluation, collector,
               progress_log, pace, bar, timings, eval_due, last_log=(time.perf_counter(), state.step))


def _open_run(config: RunConfig, results_dir: str | Path, resume: str | Path | None,
              total_timesteps: int | None) -> tuple[Path, RunConfig, list[Path]]:
    """The run directory, its config (the effective budget recorded in config.yaml), and the
    checkpoints to resume from (none for a new run)."""
    candidates: list[Path] = []
    if resume is not None:
        run_dir, candidates = resolve_resume(resume)
        config = load_run_config(run_dir)
    else:
        config = with_env_structure(config)  # before the directory: a bad config leaves none
        run_dir = new_run_dir(results_dir, config.experiment)
    if total_timesteps is not None:
        config = config.with_total_timesteps(total_timesteps)
    if resume is None or total_timesteps is not None:
        save_config(config, run_dir / "config.yaml")
    return run_dir, config, candidates


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag the loop checks, so it can checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
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
