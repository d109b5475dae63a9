"""Can an encoder represent a good policy, and how dangerous each move is? Behaviour cloning of the lookahead planner.

    python benchmarks/encoder_probe.py [--level 2] [--transitions 100000] [--noise 0.3]
        [--steps 30000] [--episodes 20] [--encoders mlp,set] [--json out.json]
    python benchmarks/encoder_probe.py --obs topdown --image-size 84 --frame-stack 3 \
        --encoders cnn,cnn512 --level 1 --transitions 50000   # the same from pixels (GPU)

SAC from state learns level 2 slowly (benchmarks/reports/train_vector_level2_cpu); this
separates what the network can represent from what SAC's learning finds. It plays the
lookahead planner (``dodgerl.envs.policies.LookaheadPolicy``, which survives level 2) with
Gaussian action noise of std ``--noise`` (so the data covers the states a slightly wrong policy
reaches), records (observation, planner action) pairs, then fits each encoder followed by the
actor's MLP ([256, 256], tanh output) to the planner's actions by mean squared error: same data,
same steps, same seeds. Each fitted policy is then played deterministically on the evaluation
seeds the training runs use (1,000,000 + i). A policy that the plain MLP cannot fit but the
set encoder can says the representation, not the reward signal, is what holds SAC back.

The clearance probe (``--clearance-steps``, default ``--steps``; 0: off) asks the critic's
question without the RL around it: each encoder followed by an MLP [256, 256] regresses, from
the observation, how close each of the planner's candidate moves would bring the player to a
projectile (``dodgerl.envs.policies.lookahead_clearance``: a deterministic function of the
positions and velocities, so velocities must be read off the stacked frames), on the first 90%
of the episodes; its RMSE on the other 10% (at the end, and the lowest of 20 checks along the
fit) is against that of predicting the training mean. A critic that cannot tell which move is
dangerous cannot rank actions.

``--obs topdown`` records what the pixel agent sees (``--image-size``, ``--frame-stack``
frames, as ``dodgerl.envs.make.make_env`` stacks them) for the same planner, so the vector and
pixel encoders answer the same question: ``cnn`` is NatureCNN with the shipped configs'
LayerNorm-tanh trunk of 50, ``cnn512`` with DrQ / SB3's ReLU 512. No augmentation: this measures
what fits, not what generalises best.

The vector probe runs on the CPU unless JAX_PLATFORMS says otherwise (about 3 minutes per
encoder on the 2-core CI box at the defaults); the pixel probe on JAX's default device, since
the CNN encoders need a GPU at these sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from dodgerl.config import EnvConfig  # noqa: E402
from dodgerl.envs.dodge_env import DODGE_OBS_LAYOUT  # noqa: E402
from dodgerl.envs.make import make_env  # noqa: E402
from dodgerl.envs.policies import LOOKAHEAD_MOVES, LookaheadPolicy, lookahead_clearance, run_episode  # noqa: E402
from dodgerl.networks import MLP, MLPEncoder, NatureCNN, SetEncoder  # noqa: E402

EVAL_SEED = 1_000_000
VECTOR_ENCODERS = ("mlp", "set")
IMAGE_ENCODERS = ("cnn", "cnn512")


class ClonedPolicy(nn.Module):
    """An SAC encoder, then the actor head's MLP with a tanh on its output (the mean action)."""

    encoder: nn.Module
    net_arch: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        return jnp.tanh(MLP(self.net_arch, 2)(self.encoder(observations)))


class ClearanceProbe(nn.Module):
    """An SAC encoder, then an MLP to ``outputs`` numbers: each candidate move's clearance."""

    encoder: nn.Module
    outputs: int
    net_arch: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        return MLP(self.net_arch, self.outputs)(self.encoder(observations))


def make_encoder(name: str, set_arch: tuple[int, ...], obs: str = "vector") -> nn.Module:
    known = VECTOR_ENCODERS if obs == "vector" else IMAGE_ENCODERS
    if name not in VECTOR_ENCODERS + IMAGE_ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: expected one of {', '.join(VECTOR_ENCODERS + IMAGE_ENCODERS)}")
    if name not in known:
        raise ValueError(f"encoder {name!r} does not read {obs} observations: use one of {', '.join(known)}")
    if name == "mlp":
        return MLPEncoder()  # the identity: the shipped vector config's encoder
    if name == "set":
        return SetEncoder(*DODGE_OBS_LAYOUT, features=set_arch)
    if name == "cnn":  # the shipped pixel configs' encoder (encoder_output layernorm_tanh, 50)
        return NatureCNN(features=50, output="layernorm_tanh")
    return NatureCNN(features=512, output="relu")  # DrQ's / SB3's


def probe_env_config(level: int, obs: str = "vector", image_size: int = 84, frame_stack: int = 1) -> EnvConfig:
    """The dodge env as the agent sees it: the state vector, or images of ``image_size`` with
    ``frame_stack`` frames."""
    if obs == "vector":
        return EnvConfig(level=level, obs_mode="vector", action_space_type="basic", max_episode_steps=1000)
    return EnvConfig(level=level, obs_mode="topdown", image_size=image_size, action_space_type="basic",
                     frame_stack=frame_stack, max_episode_steps=1000)


@dataclasses.dataclass
class Collected:
    """Noisy planner play: per transition the observation, the planner's (noise-free) action,
    each candidate move's clearance (``lookahead_clearance``: metres to the nearest projectile
    over the planner's horizon), whether the step ended the episode by a hit, and the episode
    it belongs to."""

    observations: np.ndarray
    actions: np.ndarray
    clearance: np.ndarray
    terminated: np.ndarray
    episode_ids: np.ndarray

    @property
    def episodes(self) -> int:
        return int(self.episode_ids.max()) + 1


def collect(level: int, transitions: int, noise: float, seed: int = 0,
            env_config: EnvConfig | None = None) -> Collected:
    """``transitions`` steps of noisy planner play on ``env_config`` (default: the state vector
    of ``level``); episode i uses seed i. The last episode is cut at ``transitions``."""
    env = make_env(env_config or probe_env_config(level))
    planner = LookaheadPolicy(env)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=0)
    observations = np.empty((transitions, *obs.shape), obs.dtype)
    actions = np.empty((transitions, 2), np.float32)
    clearance = np.empty((transitions, len(LOOKAHEAD_MOVES)), np.float32)
    terminated = np.zeros(transitions, bool)
    episode_ids = np.empty(transitions, np.int64)
    episode = 0
    for t in range(transitions):
        action = planner()
        observations[t], actions[t], episode_ids[t] = obs, action, episode
        clearance[t] = lookahead_clearance(env.unwrapped.state())
        played = np.clip(action + noise * rng.normal(size=2), -1.0, 1.0).astype(np.float32)
        obs, _, terminated[t], truncated, _ = env.step(played)
        if (terminated[t] or truncated) and t + 1 < transitions:
            episode += 1
            obs, _ = env.reset(seed=episode)
    env.close()
    return Collected(observations, actions, clearance, terminated, episode_ids)


def fit(model: nn.Module, observations: np.ndarray, targets: np.ndarray, steps: int,
        batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
        every: int = 0, callback: Any = None) -> tuple[dict, float]:
    """Adam on the mean squared error of ``model(observations)`` to ``targets`` (the planner's
    actions, or returns); returns (params, last-1000-step mean loss). With ``every`` > 0,
    ``callback(step, params)`` runs after every ``every`` steps."""
    params = model.init(jax.random.key(seed), observations[:1])
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    x_all, y_all = jnp.asarray(observations), jnp.asarray(targets)
    losses = []
    for _ in range(steps):
        idx = jnp.asarray(rng.integers(0, len(observations), batch_size))
        params, opt_state, loss = step(params, opt_state, x_all[idx], y_all[idx])
        losses.append(loss)
        if every and len(losses) % every == 0:
            callback(len(losses), params)
    tail = np.asarray(jax.device_get(losses[-1000:]))
    return params, float(tail.mean())


def clearance_probe(encoder: nn.Module, data: Collected, steps: int, batch_size: int = 256) -> dict:
    """Fit ``ClearanceProbe(encoder)`` to every candidate move's clearance on the first 90% of
    the episodes (at least one held out); RMSEs in metres on both parts (at the end, and the
    lowest of 20 checks along the fit), and the held-out RMSE of the training mean."""
    if data.episodes < 2:
        raise ValueError(f"clearance probe: {data.episodes} episode cannot be split into training and "
                         "held-out episodes: collect more transitions")
    cut = min(data.episodes - 1, int(np.ceil(0.9 * data.episodes)))
    # episodes are recorded in order, so the split is one index and both parts are views
    split = int(np.searchsorted(data.episode_ids, cut))
    parts = {"train": (data.observations[:split], data.clearance[:split]),
             "held_out": (data.observations[split:], data.clearance[split:])}
    model = ClearanceProbe(encoder, outputs=data.clearance.shape[1])
    apply = jax.jit(model.apply)  # compiled once for every check along the fit

    def rmse(params: dict, part: str, chunk: int = 1024) -> float:
        x, y = parts[part]
        predicted = np.concatenate([np.asarray(apply(params, jnp.asarray(x[i:i + chunk])))
                                    for i in range(0, len(x), chunk)])
        return float(np.sqrt(np.mean((predicted - y) ** 2)))

    curve: list[tuple[int, float]] = []
    params, _ = fit(model, *parts["train"], steps, batch_size,
                    every=max(1, steps // 20), callback=lambda step, p: curve.append((step, rmse(p, "held_out"))))
    best_step, best = min(curve, key=lambda c: c[1]) if curve else (steps, rmse(params, "held_out"))
    baseline = float(np.sqrt(np.mean((parts["held_out"][1] - parts["train"][1].mean(axis=0)) ** 2)))
    return {"rmse_train": rmse(params, "train"), "rmse_held_out": rmse(params, "held_out"),
            "rmse_held_out_best": best, "rmse_held_out_best_step": best_step, "held_out_curve": curve,
            "rmse_held_out_mean_baseline": baseline, "train_episodes": cut, "held_out_episodes": data.episodes - cut,
            "train_transitions": split, "held_out_transitions": len(data.episode_ids) - split}


def play(env_config: EnvConfig, make_policy, episodes: int) -> np.ndarray:
    """(return, length) of ``make_policy(env)`` on seeds EVAL_SEED + i (deterministic policies)."""
    env = make_env(env_config)
    policy = make_policy(env)
    results = [run_episode(env, policy, seed=EVAL_SEED + i) for i in range(episodes)]
    env.close()
    return np.asarray(results, np.float64)


def evaluate(policy: ClonedPolicy, params: dict, env_config: EnvConfig, episodes: int) -> np.ndarray:
    """The fitted policy's (return, length) per episode, as ``play``."""
    act = jax.jit(lambda obs: policy.apply(params, obs[None])[0])
    return play(env_config, lambda env: lambda obs: np.asarray(act(obs)), episodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--obs", choices=("vector", "topdown"), default="vector")
    parser.add_argument("--image-size", type=int, default=84, help="image side (--obs topdown)")
    parser.add_argument("--frame-stack", type=int, default=3, help="stacked frames (--obs topdown)")
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian action noise while collecting")
    parser.add_argument("--steps", type=int, default=30_000, help="gradient steps of the fit")
    parser.add_argument("--clearance-steps", type=int, default=None,
                        help="gradient steps of the clearance probe (default: --steps; 0: none)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per encoder")
    parser.add_argument("--encoders", default=None,
                        help=f"comma-separated: {', '.join(VECTOR_ENCODERS)} (vector) or "
                             f"{', '.join(IMAGE_ENCODERS)} (topdown); default: all of the obs mode's")
    parser.add_argument("--set-arch", default="64,64", help="hidden widths of the set encoder's item MLP")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.obs == "vector" and "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")  # small MLPs: the CPU, as the committed report
    set_arch = tuple(int(w) for w in args.set_arch.split(","))
    default = VECTOR_ENCODERS if args.obs == "vector" else IMAGE_ENCODERS
    names = [n for n in (args.encoders or ",".join(default)).split(",") if n]
    try:
        for name in names:
            make_encoder(name, set_arch, args.obs)  # fail on a bad name before collecting
    except ValueError as err:
        parser.error(str(err))
    clearance_steps = args.steps if args.clearance_steps is None else args.clearance_steps
    env_config = probe_env_config(args.level, args.obs, args.image_size, args.frame_stack)

    start = time.perf_counter()
    data = collect(args.level, args.transitions, args.noise, env_config=env_config)
    collect_s = time.perf_counter() - start
    planner = play(env_config, LookaheadPolicy, args.episodes)
    rows = []
    for name in names:
        policy = ClonedPolicy(make_encoder(name, set_arch, args.obs))
        t0 = time.perf_counter()
        params, loss = fit(policy, data.observations, data.actions, args.steps, args.batch_size)
        results = evaluate(policy, params, env_config, args.episodes)
        row = {"encoder": name, "fit_loss": loss, "return_mean": results[:, 0].mean(),
               "return_std": results[:, 0].std(), "length_mean": results[:, 1].mean(),
               "survived": float((results[:, 1] == 1000).mean()), "seconds": time.perf_counter() - t0}
        if clearance_steps:
            row["clearance"] = clearance_probe(make_encoder(name, set_arch, args.obs), data, clearance_steps,
                                               args.batch_size)
        rows.append(row)
    seen = "the 65-dim state" if args.obs == "vector" else \
        f"{args.image_size}x{args.image_size} images, {args.frame_stack} frames"
    print(f"Behaviour cloning of the lookahead planner, level {args.level}, from {seen}: {len(data.observations)} "
          f"transitions from {data.episodes} episodes (action noise std {args.noise}, {collect_s:.0f} s), "
          f"{args.steps} Adam steps of batch {args.batch_size} per encoder, {args.episodes} deterministic "
          f"episodes on seeds {EVAL_SEED}+i, on {jax.devices()[0].platform}\n")
    labels = {"mlp": "MLP (identity encoder) + [256, 256]", "set": f"set encoder {list(set_arch)} + [256, 256]",
              "cnn": "NatureCNN, LayerNorm-tanh 50 + [256, 256]", "cnn512": "NatureCNN, ReLU 512 + [256, 256]"}
    print("| policy | fit loss (MSE) | return mean | return std | length mean | survived to truncation | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| lookahead planner (the teacher) | | {planner[:, 0].mean():.1f} | {planner[:, 0].std():.1f} | "
          f"{planner[:, 1].mean():.1f} | {(planner[:, 1] == 1000).mean():.0%} | |")
    for r in rows:
        print(f"| {labels[r['encoder']]} | {r['fit_loss']:.4f} | {r['return_mean']:.1f} | {r['return_std']:.1f} | "
              f"{r['length_mean']:.1f} | {r['survived']:.0%} | {r['seconds']:.0f} |")
    if clearance_steps:
        v = rows[0]["clearance"]
        print(f"\nClearance probe: each of the {len(LOOKAHEAD_MOVES)} candidate moves' clearance (metres to the "
              f"nearest projectile over the planner's horizon, capped at 1.5), fitted on {v['train_transitions']} "
              f"transitions of {v['train_episodes']} episodes for {clearance_steps} Adam steps; RMSE in metres; held "
              f"out: {v['held_out_transitions']} transitions of the last {v['held_out_episodes']} episodes; "
              f"{int(data.terminated.sum())} hits in all\n")
        print("| encoder | RMSE, training episodes | RMSE, held-out episodes | lowest held-out RMSE along the fit (step) "
              "| held out, predicting the training mean |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            v = r["clearance"]
            print(f"| {labels[r['encoder']]} | {v['rmse_train']:.3f} | {v['rmse_held_out']:.3f} | "
                  f"{v['rmse_held_out_best']:.3f} ({v['rmse_held_out_best_step']}) | {v['rmse_held_out_mean_baseline']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "transitions": len(data.observations), "episodes": data.episodes,
                       "planner_return_mean": planner[:, 0].mean(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
