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
from dodgerl.envs.make import image_side, make_vector_env
from dodgerl.train.checkpointing import (Checkpointer, RunState, new_run_dir, resume_state,
                                         set_aside_replay, split_keys)
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
    started_at: float = 0.0
    """``time.perf_counter()`` when the loop started (after set-up): progress.csv's wall_time_s
    counts from it, plus the earlier segments' time of a resumed run."""


def train(config: RunConfig, results_dir: str | Path = "results", resume: str | Path | None = None,
          total_timesteps: int | None = None, on_start: Callable[[Path], None] | None = None,
          fresh_replay: bool = False) -> TrainResult:
    """Train (or resume) a SAC agent as ``config`` says; returns where it went and how far.

    With ``resume``, the run directory's own ``config.yaml`` is used (``config`` is ignored);
    ``total_timesteps`` sets a new budget, which config.yaml then records. ``fresh_replay``
    (with ``resume``): the run's replay buffer is set aside and an empty one started; the agent
    and counters are restored as usual, and updates go on once the new buffer holds a batch.
    Several seeds in one process: ``dodgerl.train.train_seeds``.
    """
    run_dir, config, candidates = _open_run(config, results_dir, resume, total_timesteps)
    if fresh_replay and resume is not None:
        set_aside_replay(run_dir)
    if on_start is not None:
        on_start(run_dir)
    return run_loop(config, [RunFiles(run_dir, config, candidates)], stacked=False)[0]


@dataclasses.dataclass
class RunFiles:
    """One seed's run directory, its config, and the checkpoints to resume from (none: new)."""

    run_dir: Path
    config: RunConfig
    candidates: list[Path]


def run_loop(config: RunConfig, runs: list[RunFiles], stacked: bool) -> list[TrainResult]:
    """The training loop over one run, or over the seeds of a group (``stacked``: their agents
    stacked on a seed axis, advanced by one compiled update); one result per run."""
    tc = config.train
    with contextlib.ExitStack() as cleanup:
        # Before the start: a stop asked while the run is built is honoured at its first step.
        stop = cleanup.enter_context(StopFlag())
        run = start_run(config, runs, stacked, cleanup)
        state, bar = run.state, run.bar  # every seed's counters move together: seed 0's is the clock
        next_log = (state.step // tc.log_freq + 1) * tc.log_freq
        next_ckpt = (state.step // tc.checkpoint_freq + 1) * tc.checkpoint_freq
        interrupted = False
        if run.eval_due:  # before the first act: the same key split as the run before
            run.evaluate(advance=True)
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
                run.evaluate(advance=True)
        run.finish_evaluations()
        if not interrupted and (state.next_eval is None or not eval_log_has(runs[0].run_dir / "eval.csv", state.step)):
            run.evaluate(advance=False)
        run.save_checkpoint(wait=True)
        run.dispatcher.finish()
        # Leaving the stack closes, newest first: the progress bar, the evaluation's threads and
        # processes, the dispatch thread, the sampler and the mirror, the logs, the replay files,
        # the checkpoint manager (after its saves) and the envs. On an exception (a second
        # Ctrl-C too) the same happens, evaluation processes stopped without waiting and the
        # replay uncommitted, and the exception goes on up: no subprocess outlives it, and the
        # files are as a kill -9 would have left them.
    results = []
    for seed in run.seeds:
        s = seed.state
        print(f"{'stopped' if interrupted else 'done'}: {s.step} env steps, {s.episodes} episodes, "
              f"{s.updates} gradient steps; best eval return {fmt(s.best_eval)}; "
              f"run directory {seed.run_dir}", flush=True)
        results.append(TrainResult(seed.run_dir, s.step, s.episodes, s.updates, s.best_eval,
                                   interrupted, dict(run.timings), s.t_start))
    return results


@dataclasses.dataclass
class Seed:
    """One seed's own parts in a run: its counters and RNGs, replay, files and evaluation."""

    run_dir: Path
    state: RunState
    replay: Any
    checkpointer: Checkpointer
    evaluation: TrainingEvaluation
    progress_log: CsvLog
    last_log: tuple[float, int]


@dataclasses.dataclass
class Run:
    """The parts of one run (or of a group's seeds, which share the envs' pool, the dispatcher
    and the plan), wired together: what the loop calls, each step one call."""

    config: RunConfig
    plan: ExecutionPlan
    seeds: list[Seed]
    envs: Any
    dispatcher: Dispatcher
    collector: Collector
    pace: PaceNotice
    bar: ProgressBar | None
    timings: dict[str, float]
    eval_due: bool
    """The evaluation of the restored step is still due (it runs first)."""
    stacked: bool

    @property
    def state(self) -> RunState:
        return self.seeds[0].state

    def _keys(self) -> Any:
        """A fresh key of every seed, stacked (N,) for a group; one key for a run of one agent."""
        keys, stacked = split_keys([seed.state for seed in self.seeds])
        return stacked if self.stacked else keys[0]

    def choose_actions(self) -> Future:
        """Uniform random actions during warm-up, then the policy's (not waited for)."""
        if self.state.step < self.config.train.learning_starts:
            shape = (self.config.train.n_envs, *self.envs.single_action_space.shape)
            return resolved(np.concatenate([seed.state.np_rng.uniform(-1.0, 1.0, size=shape)
                                            for seed in self.seeds]).astype(np.float32))
        t0 = time.perf_counter()
        future = self.dispatcher.act(self.collector.observations, self._keys())
        self.timings["act"] += time.perf_counter() - t0
        return future

    def collect(self, actions: Future) -> None:
        """Step the envs with ``actions`` into the replays (and the device mirror)."""
        t0 = time.perf_counter()
        chosen = np.asarray(actions.result())  # waits for the device's act, not the update
        t1 = time.perf_counter()
        finished, env_s = self.collector.step(chosen)
        self.dispatcher.stored()
        self.timings["act"] += t1 - t0
        self.timings["env"] += env_s
        self.timings["insert"] += time.perf_counter() - t1 - env_s
        for seed, ended in zip(self.seeds, finished):
            seed.state.step += self.config.train.n_envs
            seed.state.episodes += ended
        if self.state.step > self.config.train.learning_starts:
            self.dispatcher.collected()

    def update(self, block: bool) -> None:
        """The gradient steps due, if any (``block``: waited for)."""
        if self.dispatcher.update_due():
            made = self.dispatcher.update(self._keys(), block)
            for seed in self.seeds:
                seed.state.updates += made
            notice = self.pace.observe(self.state.step, self.state.updates, self.timings["compile"] > 0)
            if notice:
                print(f"\n{notice}", flush=True)

    def evaluate(self, advance: bool) -> None:
        """Start each seed's evaluation of this step (recorded when it finishes); ``advance``:
        the periodic one due now, and the next one is due ``eval_freq`` steps later."""
        for seed in self.seeds:
            if advance:
                seed.state.next_eval += self.config.train.eval_freq
            seed.evaluation.finish()  # at most one in flight per seed
            seed.evaluation.start(seed.state.split_key(), seed.state.meta(len(seed.replay)))
        if self.bar is not None:
            self.bar.show(self._last_return())

    def finish_evaluations(self) -> None:
        for seed in self.seeds:
            seed.evaluation.finish()

    def _last_return(self) -> float | None:
        returns = [s.evaluation.last_return for s in self.seeds if s.evaluation.last_return is not None]
        return float(np.mean(returns)) if returns else None

    def save_checkpoint(self, wait: bool) -> None:
        """Commit each seed's replay, then save its agent of this step (from a copy, in the
        background unless ``wait``)."""
        t0 = time.perf_counter()
        for i, seed in enumerate(self.seeds):
            seed.evaluation.finish()  # a checkpoint's best_eval and eval.csv cover every evaluation up to it
            # The checkpoint keeps the header of this commit: a resume can rewind the buffer to it.
            meta = {**seed.state.meta(len(seed.replay)), "replay_header": seed.replay.commit()}
            copy = self.dispatcher.seed_view(i).copy_agent()
            seed.checkpointer.save(seed.state.step, copy, meta, wait=wait)
        self.timings["checkpoint"] += time.perf_counter() - t0

    def log_progress(self) -> None:
        """A progress.csv row of each seed; surfaces a failed background save and records a
        finished background evaluation."""
        now = time.perf_counter()
        for i, seed in enumerate(self.seeds):
            state = seed.state
            sps = (state.step - seed.last_log[1]) / max(now - seed.last_log[0], 1e-9)
            seed.last_log = (now, state.step)
            seed.progress_log.write(progress_row(state, sps, now, self.timings,
                                                 self.dispatcher.metrics_of(i),
                                                 self.collector.episode_stats(i)))
            seed.checkpointer.check()  # a failed background save stops the run now
            seed.evaluation.poll()
        if self.bar is not None:
            self.bar.show(self._last_return())


def start_run(config: RunConfig, runs: list[RunFiles], stacked: bool,
              cleanup: contextlib.ExitStack) -> Run:
    """Build the parts of a run, or of a group's seeds (``stacked``), restoring each run's
    checkpoint of its ``candidates``, if any; each part closed by ``cleanup`` in the reverse
    order."""
    tc, ec = config.train, config.env
    n_seeds = len(runs)
    plan = choose_plan(config, n_seeds=n_seeds)
    timings = dict.fromkeys(TIMED_PHASES, 0.0)
    envs = make_vector_env(ec, tc.n_envs * n_seeds, plan.async_envs, plan.envs_per_worker)
    cleanup.callback(envs.close)
    states, agents, eval_due = _restore_seeds(runs, envs, tc.eval_freq)
    replays = [open_replay(f.run_dir, f.config, plan, envs, agents[i], cleanup)
               for i, f in enumerate(runs)]
    steps_per_call = tc.utd * tc.n_envs * tc.update_every
    if stacked:
        from dodgerl.train.group import GroupDispatcher, plan_for_memory

        plan = plan_for_memory(plan, replays)
        dispatcher: Dispatcher = GroupDispatcher(agents, replays, plan, config.agent.batch_size,
                                                 steps_per_call, tc.update_every, timings, cleanup)
    else:
        dispatcher = Dispatcher(agents[0], replays[0], plan, config.agent.batch_size,
                                steps_per_call, tc.update_every, timings, cleanup)
    print(plan.summary(), flush=True)
    seeds = []
    for i, files in enumerate(runs):
        plan.write(files.run_dir)
        seeds.append(_seed_parts(files, plan, states[i], replays[i], eval_due[i],
                                 dispatcher.seed_view(i), envs, timings, cleanup))
        print(f"run directory: {files.run_dir}", flush=True)
    pace = PaceNotice(image_side(ec) is not None and not plan.machine.accelerator, tc.total_timesteps)
    t_start = time.perf_counter()
    for state in states:
        state.t_start = t_start
    collector = Collector(envs, replays, ec, [s_config.seed * 10_007 + state.resumes * 1_000 + i
                                              for s_config, state in zip((f.config for f in runs), states)
                                              for i in range(tc.n_envs)])
    bar = None
    if tc.progress_bar:
        bar = ProgressBar(tc.total_timesteps, states[0].step)
        cleanup.callback(bar.close)
    return Run(config, plan, seeds, envs, dispatcher, collector, pace, bar, timings,
               eval_due=eval_due[0], stacked=stacked)


def _restore_seeds(runs: list[RunFiles], envs: Any, eval_freq: int
                   ) -> tuple[list[RunState], list[Any], list[bool]]:
    """Each run's state and agent: new, or restored from the first of its candidates that
    restores. The seeds of a group step together: where one restored an older step than the
    others (its newer checkpoint did not verify), all of them go back to that step."""
    while True:
        states, agents, eval_due = [], [], []
        for files in runs:
            seed_config = files.config
            state = RunState(key=jax.random.PRNGKey(seed_config.seed),
                             np_rng=np.random.default_rng(seed_config.seed),
                             config=seed_config.to_dict())
            agent = agent_for(envs, seed_config, state.split_key())
            due = False
            if files.candidates:
                agent, due = resume_state(files.run_dir, files.candidates, agent, state, eval_freq)
            if state.next_eval is None and eval_freq:
                state.next_eval = (state.step // eval_freq + 1) * eval_freq
            states.append(state)
            agents.append(agent)
            eval_due.append(due)
        steps = {state.step for state in states}
        if len(steps) == 1:
            return states, agents, eval_due
        common = min(steps)
        print(f"the seeds restored different steps ({sorted(steps)}): all resume from {common}",
              flush=True)
        for files in runs:
            files.candidates = [c for c in files.candidates if int(c.name) <= common]


def _seed_parts(files: RunFiles, plan: ExecutionPlan, state: RunState, replay: Any, eval_due: bool,
                view: Any, envs: Any, timings: dict[str, float], cleanup: contextlib.ExitStack) -> Seed:
    """One seed's checkpointer, logs and evaluation."""
    tc, run_dir = files.config.train, files.run_dir
    checkpointer = Checkpointer(run_dir, tc.keep_checkpoints, cleanup)
    resume_step = state.step if files.candidates else None
    board = run_dir / "tensorboard" if tc.tensorboard else None
    progress_log = cleanup.enter_context(contextlib.closing(
        CsvLog(run_dir / "progress.csv", PROGRESS_FIELDS, resume_step, tensorboard=board)))
    # A row of the evaluation due at the resumed step (written after its checkpoint, before the
    # kill) is dropped: that evaluation runs again, on the same agent.
    eval_log = cleanup.enter_context(contextlib.closing(CsvLog(
        run_dir / "eval.csv", EVAL_FIELDS, None if resume_step is None else resume_step - eval_due,
        tensorboard=board)))
    evaluation = TrainingEvaluation(files.config.env, tc, plan, view, state, checkpointer, eval_log,
                                    run_dir, envs.single_observation_space, timings, cleanup)
    return Seed(run_dir, state, replay, checkpointer, evaluation, progress_log,
                last_log=(time.perf_counter(), state.step))


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
