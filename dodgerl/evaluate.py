"""Use what a run kept: load its best policy (or any checkpoint) and evaluate it on N episodes.

    python experiments/evaluate.py results/sac_vector_easy/20261129_101500            # best/
    python experiments/evaluate.py RUN_DIR --which latest --episodes 100 --gif best.gif
    python experiments/evaluate.py RUN_DIR/checkpoints/50000 --stochastic

In research code::

    from dodgerl.evaluate import load_agent, evaluate
    loaded = load_agent("results/sac_vector_easy/20261129_101500")      # the kept best policy
    result = evaluate(loaded.agent, loaded.config.env, episodes=100)
    policy = loaded.agent.policy()                                      # actor + encoder alone

The agent comes back whole (params, targets, optimiser states, temperature) in the structure
``sac.create`` gives for the run's own ``config.yaml``, so ``agent.act`` and ``agent.update`` work
on it. ``evaluate`` runs the same episodes as the run's evaluations for the same seed and count
(``Evaluator``), so a run's logged best evaluation can be checked, or re-measured on more
episodes than the run could afford.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dodgerl.checkpoint import WHICH, CheckpointError, find_checkpoint, restore
from dodgerl.config import ConfigError, EnvConfig, RunConfig, load_run_config
from dodgerl.envs.make import episode_horizon, make_env, observation_structure
from dodgerl.episodes import EvalResult, Evaluator, write_gif


@dataclasses.dataclass(frozen=True)
class LoadedAgent:
    """An agent restored from a checkpoint, with the run's config and the checkpoint's meta
    (``step``, ``best_eval``, counters)."""

    agent: Any
    config: RunConfig
    meta: dict[str, Any]
    checkpoint: Path


def load_agent(path: str | Path, which: str = "best") -> LoadedAgent:
    """Restore the agent of a run directory (``which``: its kept ``best`` policy or its
    ``latest`` checkpoint) or of one checkpoint directory. Raises ``CheckpointError`` naming
    the path when there is nothing complete to load or it cannot be restored."""
    from dodgerl.agents import sac

    step_dir = find_checkpoint(path, which)
    run_dir = step_dir.parent.parent
    try:
        config = load_run_config(run_dir)
    except (OSError, ConfigError) as err:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: {err}") from err
    agent_config = config.agent
    structure = observation_structure(config.env)
    if structure is not None:  # a config.yaml that leaves them out (written by hand)
        agent_config = sac.with_observation_structure(agent_config, structure)
    env = make_env(config.env)
    try:
        template = sac.create(jax.random.PRNGKey(0), env.observation_space, env.action_space,
                              agent_config)
    finally:
        env.close()
    agent, meta = restore(step_dir, template)
    return LoadedAgent(agent, config, meta, step_dir)


def evaluate(agent: Any, env_config: EnvConfig, episodes: int = 10, seed: int = 1_000_000,
             deterministic: bool = True, key: jax.Array | None = None,
             record: bool = False, processes: int = 0) -> EvalResult:
    """``episodes`` episodes of ``agent`` (anything with ``act(obs, key, deterministic=)``: an
    agent or a ``sac.Policy``) on envs reset with seeds ``seed``, ``seed + 1``, ...; the same
    episodes a run evaluates with ``eval_seed`` = ``seed``. ``record``: keep episode 0's frames.
    Deterministic results equal the run's own evaluation exactly when both act on the same kind
    of device (a run on a GPU evaluated here on the CPU can differ in the last bits).

    ``processes``: 0 steps every env in this process; N > 0 steps episodes 1, 2, ... in
    subprocesses of k envs each, k the largest divisor of episodes - 1 that is at most
    ceil((episodes - 1) / N) (``Evaluator``'s asynchronous mode: the same episodes and results,
    in about the time of the slowest subprocess). So there are N subprocesses where N divides
    episodes - 1, and more where it does not (33 for 100 episodes and N = 16)."""
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes={episodes!r}: must be an integer >= 1")
    if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 0:
        raise ValueError(f"processes={processes!r}: must be an integer >= 0")
    episodes = int(episodes)
    key = jax.random.PRNGKey(0) if key is None else key
    per_worker = -(-(episodes - 1) // processes) if processes and episodes > 1 else 1
    evaluator = Evaluator(env_config, episodes, seed, record, asynchronous=processes > 0,
                          envs_per_worker=per_worker)
    try:
        return evaluator.run(lambda o, k: agent.act(o, k, deterministic=deterministic), key)
    finally:
        evaluator.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate a saved SAC agent: the best policy a run kept, or any checkpoint.")
    parser.add_argument("path", type=Path,
                        help="a run directory, or one checkpoint: RUN_DIR/checkpoints/<step> or "
                             "RUN_DIR/best/<step>")
    parser.add_argument("--which", choices=WHICH, default="best",
                        help="with a run directory: its kept best policy (default) or its "
                             "latest checkpoint")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to run (default: the run's eval_episodes)")
    parser.add_argument("--seed", type=int, default=None,
                        help="episode i resets with seed + i (default: the run's eval_seed, i.e. "
                             "the run's own evaluation episodes, on which its best was selected: "
                             "pass another seed for fresh episodes)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", default=None,
                      help="sample actions (default: as the run's eval_deterministic)")
    mode.add_argument("--deterministic", dest="deterministic", action="store_true",
                      help="take the mean action")
    parser.add_argument("--key", type=int, default=0, help="PRNG seed of sampled actions")
    parser.add_argument("--processes", type=int, default=0,
                        help="step episodes 1, 2, ... in subprocesses, N of them where N divides "
                             "episodes - 1 and more where it does not (0, the default: all in this "
                             "process); the episodes and results are the same")
    parser.add_argument("--gif", type=Path, default=None, help="write episode 0 as a GIF here")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if args.processes < 0:
        parser.error("--processes must be >= 0")
    try:
        loaded = load_agent(args.path, args.which)
    except (CheckpointError, ConfigError) as err:  # ConfigError: the run's env cannot be made here
        print(f"error: {err}", file=sys.stderr)
        return 2
    tc = loaded.config.train
    episodes = tc.eval_episodes if args.episodes is None else args.episodes
    seed = tc.eval_seed if args.seed is None else args.seed
    deterministic = tc.eval_deterministic if args.deterministic is None else args.deterministic
    result = evaluate(loaded.agent, loaded.config.env, episodes, seed, deterministic,
                      jax.random.PRNGKey(args.key), record=args.gif is not None,
                      processes=args.processes)
    if args.gif is not None and result.frames:
        write_gif(result.frames, args.gif)
    row = result.row(loaded.meta["step"], 0.0)
    horizon = episode_horizon(loaded.config.env)
    logged = loaded.meta.get("best_eval")
    print(f"checkpoint {loaded.checkpoint} (step {loaded.meta['step']}; run's best eval so far "
          f"{'-' if logged is None else f'{logged:.1f}'})")
    print(f"{episodes} {'deterministic' if deterministic else 'stochastic'} episodes, seeds "
          f"{seed}..{seed + episodes - 1}: mean return {row['mean_return']:.1f} "
          f"(std {row['std_return']:.1f}, min {row['min_return']:.1f}, max {row['max_return']:.1f}), "
          f"mean length {row['mean_length']:.1f}"
          + ("" if horizon is None else
             f", {np.mean(result.lengths >= horizon):.0%} reached the {horizon}-step horizon"))
    if args.gif is not None:
        print(f"episode 0 written to {args.gif}" if result.frames else
              f"no GIF written: {loaded.config.env.id} renders no rgb_array frames here")
    return 0
