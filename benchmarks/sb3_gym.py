"""Stable-Baselines3 SAC on any Gymnasium env id: a peer row for dodgerl's own runs.

    pip install stable-baselines3          # optional: not a dependency of dodgerl
    python benchmarks/sb3_gym.py --env-id HalfCheetah-v5 --seed 0 --total-timesteps 300000 \\
        --eval-freq 10000 --eval-episodes 10 --eval-seed 1000000 --results-dir results \\
        --learning-starts 10000 --device auto

Hyperparameters: SB3's SAC defaults (``SAC("MlpPolicy", env)``: learning_rate 3e-4 for actor,
critics and temperature, buffer_size 1e6, batch_size 256, tau 0.005, gamma 0.99, train_freq 1,
gradient_steps 1, ent_coef "auto" from 1.0, target_entropy -|A|, two critics, net_arch
[256, 256]) with ``learning_starts`` 10000, which is what rl-baselines3-zoo's MuJoCo SAC entries
are (``mujoco-defaults``: ``policy: MlpPolicy, learning_starts: 10000``, nothing else):
https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/hyperparams/sac.yml
(SB3's own default learning_starts is 100; ``--learning-starts`` sets it.)

It writes what dodgerl's runs write, so one reader serves both (``benchmarks/sweep_summary.py``
takes any folder with config.yaml and eval.csv):

    DIR/sb3_<env>/<seed>/config.yaml    seed, env.id, the hyperparameters (dodgerl's key names
                                        where one means the same, and SB3's own under ``sb3:``)
    DIR/sb3_<env>/<seed>/eval.csv       every eval_freq env steps: eval_episodes deterministic
                                        episodes (the mean action), episode i on env seed
                                        eval_seed + i; dodgerl's eval.csv columns
    DIR/sb3_<env>/<seed>/progress.csv   every 1000 env steps: step, episodes, train_return
                                        (the last finished training episode), env_steps_per_s
                                        (over those 1000 steps, evaluations included),
                                        wall_time_s, time_eval_s

``<env>`` is the env id with "/" and ":" replaced by "_". wall_time_s counts from the start of
``model.learn`` (after the model is built), as dodgerl's counts from the loop's start. Every row
is flushed as it is written, so a killed process keeps the rows it wrote. The SB3 import is in
``main`` alone: the module imports without SB3.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

EVAL_FIELDS = (
    "step",
    "mean_return",
    "std_return",
    "min_return",
    "max_return",
    "mean_length",
    "episodes",
    "wall_time_s",
)
"""dodgerl's eval.csv columns (dodgerl/train/logs.py EVAL_FIELDS), in its order."""
PROGRESS_FIELDS = (
    "step",
    "episodes",
    "train_return",
    "env_steps_per_s",
    "wall_time_s",
    "time_eval_s",
)
"""A subset of dodgerl's progress.csv columns, same names and meanings."""
PROGRESS_FREQ = 1000
ZOO_SAC_YML = "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/hyperparams/sac.yml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--env-id", required=True, help="any registered Gymnasium id (module:Id imports module)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-timesteps", type=int, default=1_000_000, help="env steps")
    p.add_argument("--eval-freq", type=int, default=10_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument(
        "--eval-seed", type=int, default=1_000_000, help="episode i uses env seed eval_seed + i"
    )
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument(
        "--learning-starts",
        type=int,
        default=10_000,
        help="random-action steps before the first update (zoo MuJoCo: 10000; SB3 default: 100)",
    )
    p.add_argument(
        "--device", default="auto", help="torch device for SB3: auto, cpu, cuda, cuda:1, ..."
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads(N) (0: torch's default); 1 is far faster on a small, busy CPU",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory's logs"
    )
    args = p.parse_args(argv)
    for name in ("total_timesteps", "eval_freq", "eval_episodes"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.learning_starts < 0 or args.torch_threads < 0:
        p.error("--learning-starts and --torch-threads must be >= 0")
    return args


def run_dir_of(results_dir: Path, env_id: str, seed: int) -> Path:
    return Path(results_dir) / f"sb3_{env_id.replace('/', '_').replace(':', '_')}" / str(seed)


class Csv:
    """An append-only CSV whose every row is flushed at once."""

    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields)
        self.writer.writeheader()
        self.file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def evaluate(model: Any, env: Any, episodes: int, eval_seed: int) -> tuple[list[float], list[int]]:
    """Returns and lengths of ``episodes`` deterministic episodes, episode i on seed eval_seed + i."""
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=eval_seed + i)
        total, length, done = 0.0, 0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(length)
    return returns, lengths


def eval_row(
    step: int, returns: list[float], lengths: list[int], wall_time: float
) -> dict[str, Any]:
    import numpy as np

    r = np.asarray(returns, dtype=np.float64)
    return {
        "step": step,
        "mean_return": float(r.mean()),
        "std_return": float(r.std()),
        "min_return": float(r.min()),
        "max_return": float(r.max()),
        "mean_length": float(np.mean(lengths)),
        "episodes": len(returns),
        "wall_time_s": round(wall_time, 3),
    }


def config_of(args: argparse.Namespace, model: Any, versions: dict[str, str]) -> dict[str, Any]:
    """config.yaml: dodgerl's keys where they mean the same, SB3's own names under ``sb3``."""
    net_arch = model.policy_kwargs.get("net_arch", [256, 256])
    ent_coef = model.ent_coef
    lr = (
        float(model.learning_rate)
        if not callable(model.learning_rate)
        else str(model.learning_rate)
    )
    return {
        "experiment": run_dir_of(Path("."), args.env_id, args.seed).parent.name,
        "seed": args.seed,
        "env": {"id": args.env_id},
        "agent": {
            "gamma": float(model.gamma),
            "tau": float(model.tau),
            "actor_lr": lr,
            "critic_lr": lr,
            "temperature_lr": lr,
            "batch_size": int(model.batch_size),
            "net_arch": list(net_arch),
            "n_critics": int(model.policy.critic.n_critics),
            "initial_temperature": 1.0 if ent_coef == "auto" else ent_coef,
            "target_entropy": float(model.target_entropy),
        },
        "replay": {"buffer_size": int(model.buffer_size), "n_step": 1},
        "train": {
            "total_timesteps": args.total_timesteps,
            "learning_starts": int(model.learning_starts),
            "n_envs": 1,
            "utd": int(model.gradient_steps),
            "update_every": int(model.train_freq.frequency),
            "eval_freq": args.eval_freq,
            "eval_episodes": args.eval_episodes,
            "eval_deterministic": True,
            "eval_seed": args.eval_seed,
            "log_freq": PROGRESS_FREQ,
        },
        "sb3": {
            "algo": "SAC",
            "policy": "MlpPolicy",
            "hyperparams": ZOO_SAC_YML,
            "learning_rate": lr,
            "buffer_size": int(model.buffer_size),
            "learning_starts": int(model.learning_starts),
            "batch_size": int(model.batch_size),
            "tau": float(model.tau),
            "gamma": float(model.gamma),
            "train_freq": int(model.train_freq.frequency),
            "gradient_steps": int(model.gradient_steps),
            "ent_coef": str(ent_coef),
            "target_update_interval": int(model.target_update_interval),
            "target_entropy": float(model.target_entropy),
            "use_sde": bool(model.use_sde),
            "device": str(model.device),
            "torch_threads": args.torch_threads,
            **versions,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import gymnasium as gym
        import stable_baselines3
        import torch
        import yaml
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as e:
        print(
            f"error: {e}: this benchmark needs stable-baselines3 (pip install stable-baselines3)",
            file=sys.stderr,
        )
        return 2

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    run_dir = run_dir_of(args.results_dir, args.env_id, args.seed)
    if (run_dir / "eval.csv").exists() and not args.overwrite:
        print(f"error: {run_dir}/eval.csv exists (--overwrite replaces it)", file=sys.stderr)
        return 2
    try:
        env = gym.make(args.env_id)
        eval_env = gym.make(args.env_id)
    except (gym.error.Error, ImportError, TypeError, ValueError) as e:  # unknown id, no mujoco
        print(f"error: env {args.env_id}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    model = SAC(
        "MlpPolicy",
        env,
        learning_starts=args.learning_starts,
        seed=args.seed,
        device=args.device,
        verbose=0,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    versions = {
        "sb3_version": str(stable_baselines3.__version__),
        "torch_version": str(torch.__version__),
        "gymnasium_version": str(gym.__version__),
    }
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(config_of(args, model, versions), sort_keys=False)
    )
    eval_log = Csv(run_dir / "eval.csv", EVAL_FIELDS)
    progress_log = Csv(run_dir / "progress.csv", PROGRESS_FIELDS)

    class Logs(BaseCallback):
        """progress.csv every PROGRESS_FREQ env steps, an evaluation every eval_freq."""

        def _on_training_start(self) -> None:
            self.t0 = self.t_last = time.perf_counter()
            self.step_last, self.episodes, self.train_return, self.time_eval = 0, 0, "", 0.0

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "episode" in info:  # SB3's Monitor: a training episode ended
                    self.episodes += 1
                    self.train_return = float(info["episode"]["r"])
            step = self.num_timesteps
            if step % args.eval_freq == 0:
                t = time.perf_counter()
                returns, lengths = evaluate(
                    self.model, eval_env, args.eval_episodes, args.eval_seed
                )
                now = time.perf_counter()
                self.time_eval += now - t
                row = eval_row(step, returns, lengths, now - self.t0)
                eval_log.write(row)
                print(
                    f"step {step}: eval mean return {row['mean_return']:.1f} "
                    f"+- {row['std_return']:.1f} ({row['wall_time_s']:.0f} s)",
                    flush=True,
                )
            if step % PROGRESS_FREQ == 0:
                now = time.perf_counter()
                rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
                progress_log.write(
                    {
                        "step": step,
                        "episodes": self.episodes,
                        "train_return": self.train_return,
                        "env_steps_per_s": round(rate, 1),
                        "wall_time_s": round(now - self.t0, 3),
                        "time_eval_s": round(self.time_eval, 3),
                    }
                )
                self.t_last, self.step_last = now, step
            return True

    try:
        model.learn(total_timesteps=args.total_timesteps, callback=Logs())
    finally:
        eval_log.close()
        progress_log.close()
        env.close()
        eval_env.close()
    print(f"wrote {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
