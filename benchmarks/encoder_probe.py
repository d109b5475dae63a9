"""Can an encoder represent a good policy from the 65-dim state? Behaviour cloning of the lookahead planner.

    python benchmarks/encoder_probe.py [--level 2] [--transitions 100000] [--noise 0.3]
        [--steps 30000] [--episodes 20] [--encoders mlp,set] [--json out.json]

SAC from state learns level 2 slowly (benchmarks/reports/train_vector_level2_cpu); this
separates what the network can represent from what SAC's learning finds. It plays the
lookahead planner (``dodgerl.envs.policies.LookaheadPolicy``, which survives level 2) with
Gaussian action noise of std ``--noise`` (so the data covers the states a slightly wrong policy
reaches), records (observation, planner action) pairs, then fits each encoder followed by the
actor's MLP ([256, 256], tanh output) to the planner's actions by mean squared error: same data,
same steps, same seeds. Each fitted policy is then played deterministically on the evaluation
seeds the training runs use (1,000,000 + i). A policy that the plain MLP cannot fit but the
set encoder can says the representation, not the reward signal, is what holds SAC back.

Runs on the CPU (forced); about 3 minutes per encoder on the 2-core CI box at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from dodgerl.envs.dodge_env import DodgeEnv  # noqa: E402
from dodgerl.envs.policies import LookaheadPolicy, run_episode  # noqa: E402
from dodgerl.envs.dodge_env import DODGE_OBS_LAYOUT  # noqa: E402
from dodgerl.networks import MLP, MLPEncoder, SetEncoder  # noqa: E402

EVAL_SEED = 1_000_000


class ClonedPolicy(nn.Module):
    """An SAC encoder, then the actor head's MLP with a tanh on its output (the mean action)."""

    encoder: nn.Module
    net_arch: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        return jnp.tanh(MLP(self.net_arch, 2)(self.encoder(observations)))


def make_encoder(name: str, set_arch: tuple[int, ...]) -> nn.Module:
    if name == "mlp":
        return MLPEncoder()  # the identity: the shipped vector config's encoder
    if name == "set":
        return SetEncoder(*DODGE_OBS_LAYOUT, features=set_arch)
    raise ValueError(f"unknown encoder {name!r}: expected mlp or set")


def collect(level: int, transitions: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(observations, planner actions, episodes) from noisy planner play; episode i uses seed i."""
    env = DodgeEnv(level=level, obs_mode="vector")
    planner = LookaheadPolicy(env)
    rng = np.random.default_rng(seed)
    observations, actions = [], []
    episode = 0
    while len(observations) < transitions:
        obs, _ = env.reset(seed=episode)
        episode += 1
        while len(observations) < transitions:
            action = planner()
            observations.append(obs)
            actions.append(action)
            played = np.clip(action + noise * rng.normal(size=2), -1.0, 1.0).astype(np.float32)
            obs, _, terminated, truncated, _ = env.step(played)
            if terminated or truncated:
                break
    env.close()
    return np.asarray(observations, np.float32), np.asarray(actions, np.float32), episode


def fit(policy: ClonedPolicy, observations: np.ndarray, actions: np.ndarray, steps: int,
        batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> tuple[dict, float]:
    """Adam on the mean squared error to the planner's actions; returns (params, last-1000-step mean loss)."""
    params = policy.init(jax.random.key(seed), observations[:1])
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((policy.apply(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    x_all, y_all = jnp.asarray(observations), jnp.asarray(actions)
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, len(observations), batch_size)
        params, opt_state, loss = step(params, opt_state, x_all[idx], y_all[idx])
        losses.append(loss)
    tail = np.asarray(jax.device_get(losses[-1000:]))
    return params, float(tail.mean())


def play(level: int, make_policy, episodes: int) -> np.ndarray:
    """(return, length) of ``make_policy(env)`` on seeds EVAL_SEED + i (deterministic policies)."""
    env = DodgeEnv(level=level, obs_mode="vector")
    policy = make_policy(env)
    results = [run_episode(env, policy, seed=EVAL_SEED + i) for i in range(episodes)]
    env.close()
    return np.asarray(results, np.float64)


def evaluate(policy: ClonedPolicy, params: dict, level: int, episodes: int) -> np.ndarray:
    """The fitted policy's (return, length) per episode, as ``play``."""
    act = jax.jit(lambda obs: policy.apply(params, obs[None])[0])
    return play(level, lambda env: lambda obs: np.asarray(act(obs)), episodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian action noise while collecting")
    parser.add_argument("--steps", type=int, default=30_000, help="gradient steps of the fit (batch 256)")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per encoder")
    parser.add_argument("--encoders", default="mlp,set", help="comma-separated: mlp, set")
    parser.add_argument("--set-arch", default="64,64", help="hidden widths of the set encoder's item MLP")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    set_arch = tuple(int(w) for w in args.set_arch.split(","))
    names = [n for n in args.encoders.split(",") if n]
    for name in names:
        make_encoder(name, set_arch)  # fail on a bad name before collecting

    start = time.perf_counter()
    observations, actions, n_episodes = collect(args.level, args.transitions, args.noise)
    collect_s = time.perf_counter() - start
    planner = play(args.level, LookaheadPolicy, args.episodes)
    rows = []
    for name in names:
        policy = ClonedPolicy(make_encoder(name, set_arch))
        t0 = time.perf_counter()
        params, loss = fit(policy, observations, actions, args.steps)
        results = evaluate(policy, params, args.level, args.episodes)
        rows.append({"encoder": name, "fit_loss": loss, "return_mean": results[:, 0].mean(),
                     "return_std": results[:, 0].std(), "length_mean": results[:, 1].mean(),
                     "survived": float((results[:, 1] == 1000).mean()), "seconds": time.perf_counter() - t0})
    print(f"Behaviour cloning of the lookahead planner, level {args.level}: {len(observations)} transitions "
          f"from {n_episodes} episodes (action noise std {args.noise}, {collect_s:.0f} s), {args.steps} Adam "
          f"steps of batch 256 per encoder, {args.episodes} deterministic episodes on seeds {EVAL_SEED}+i\n")
    print("| policy | fit loss (MSE) | return mean | return std | length mean | survived to truncation | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| lookahead planner (the teacher) | | {planner[:, 0].mean():.1f} | {planner[:, 0].std():.1f} | "
          f"{planner[:, 1].mean():.1f} | {(planner[:, 1] == 1000).mean():.0%} | |")
    for r in rows:
        label = "MLP (identity encoder) + [256, 256]" if r["encoder"] == "mlp" else \
            f"set encoder {list(set_arch)} + [256, 256]"
        print(f"| {label} | {r['fit_loss']:.4f} | {r['return_mean']:.1f} | {r['return_std']:.1f} | "
              f"{r['length_mean']:.1f} | {r['survived']:.0%} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "transitions": len(observations), "episodes": n_episodes,
                       "planner_return_mean": planner[:, 0].mean(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
