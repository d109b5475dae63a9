"""What one iteration of the training loop costs, part by part, without the envs.

The fast loop (``dodgerl.train`` with ``n_envs`` envs, the device replay mirror and the overlapped
update) does, per iteration: add ``n_envs`` transitions to the on-disk buffer and sync them to
the mirror (*insert*), draw the next update's indices on the host and upload them (*sample*),
run ``act`` on ``n_envs`` observations and fetch the actions (*act*), and one
``update_from`` call of ``utd * n_envs`` gradient steps (*update*). This script times each part
alone (blocking on its result), then the parts in the loop's order with the update overlapped
(dispatched first, waited for last), so the gap between "update alone" and "iteration" shows
what the other parts add on the device and on the host. Random frames; shapes and settings from
a shipped config plus overrides.

    python benchmarks/loop_parts.py --set agent.bf16_encoder=true            # 256x256, 16 envs
    python benchmarks/loop_parts.py --config sac_vector_easy.yaml --set train.n_envs=16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def timed(fn, iters: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` calls (after 3 warm-up calls); a ``fn`` that
    returns a float has timed itself (seconds)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        own = fn()
        times.append(own if isinstance(own, float) else time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sac_topdown_seed256_easy.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--capacity", type=int, default=20_000,
                        help="replay capacity (the gather cost does not depend on it)")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    import gymnasium
    import jax

    from dodgerl.agents import sac
    from dodgerl.config import apply_overrides, config_from_dict, read_yaml
    from dodgerl.replay.buffer import ReplayBuffer
    from dodgerl.replay.mirror import DeviceMirror, gather_batch

    raw = apply_overrides(read_yaml(CONFIGS / args.config),
                          ["train.n_envs=16", *args.overrides])
    config = config_from_dict(raw)
    ec, tc = config.env, config.train
    n = tc.n_envs
    k = tc.utd * n * tc.update_every
    if ec.obs_mode == "vector":
        shape, dtype = (65,), np.float32
        space = gymnasium.spaces.Box(-1.0, 1.0, shape, dtype)
    else:
        shape, dtype = (ec.image_size, ec.image_size, 3), np.uint8
        space = gymnasium.spaces.Box(0, 255, shape, dtype)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    from dodgerl.envs.make import observation_structure

    agent_config = sac.with_observation_structure(config.agent, observation_structure(ec))
    agent = sac.create(jax.random.key(0), space, action_space, agent_config)
    rng = np.random.default_rng(0)

    def frames(count: int) -> np.ndarray:
        if dtype == np.uint8:
            return rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        return rng.uniform(-1, 1, (count, *shape)).astype(np.float32)

    pool = [frames(n) for _ in range(4)]
    actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    zeros = np.zeros(n, bool)
    with tempfile.TemporaryDirectory() as tmp:
        replay = ReplayBuffer(Path(tmp) / "replay", capacity=args.capacity, observation_shape=shape,
                              observation_dtype=dtype, action_dim=2, n_envs=n)
        def add(i: int) -> None:
            replay.add(pool[i % 4], actions, np.ones(n, np.float32), pool[(i + 1) % 4], zeros, zeros)

        fill = min(args.capacity, 4 * k * config.agent.batch_size) // n + 8
        for i in range(fill):
            add(i)
        mirror = DeviceMirror(replay)
        b = config.agent.batch_size
        state = {"agent": agent, "key": jax.random.key(1), "i": 0, "metrics": None}

        def insert() -> None:
            state["i"] += 1
            add(state["i"])
            mirror.sync()

        def sample():
            return mirror.sample_indices(b, k)

        def act() -> np.ndarray:
            state["key"], sub = jax.random.split(state["key"])
            return np.asarray(state["agent"].act(pool[state["i"] % 4], sub))

        def dispatch_update(indices) -> None:
            state["key"], sub = jax.random.split(state["key"])
            state["agent"], state["metrics"] = state["agent"].update_from(
                mirror.frames, indices, sub, gather_batch)

        fixed = sample()

        def update_alone() -> None:
            dispatch_update(fixed)
            jax.block_until_ready(state["metrics"])

        def update_dispatch() -> float:
            # How long the host is held by the call itself, the device idle before it: if this
            # is near "update alone", launching the program's kernels is what bounds the loop.
            jax.block_until_ready(state["metrics"])
            t0 = time.perf_counter()
            dispatch_update(fixed)
            held = time.perf_counter() - t0
            jax.block_until_ready(state["metrics"])
            return held

        def add_alone() -> float:
            # replay.add alone (the frames written to the replay file); the mirror then syncs
            # untimed so that the next part starts from the same state
            state["i"] += 1
            t0 = time.perf_counter()
            add(state["i"])
            held = time.perf_counter() - t0
            mirror.sync()
            jax.block_until_ready(mirror.frames)
            return held

        def take_alone() -> float:
            # mirror.take alone: the new frames read back from the replay for the upload
            state["i"] += 1
            add(state["i"])
            t0 = time.perf_counter()
            chunks = mirror.take()
            held = time.perf_counter() - t0
            mirror.upload(chunks)
            jax.block_until_ready(mirror.frames)
            return held

        def sample_block() -> None:
            jax.block_until_ready(sample())

        def insert_block() -> None:
            insert()
            jax.block_until_ready(mirror.frames)

        def iteration_serial() -> None:
            insert_block()
            act()
            dispatch_update(sample())
            jax.block_until_ready(state["metrics"])

        def iteration_overlapped(with_act: bool = True) -> None:
            # the loop's order: update in flight while the host inserts, acts and samples
            indices = sample()
            if state["metrics"] is not None:
                jax.block_until_ready(state["metrics"])
            dispatch_update(indices)
            insert()
            if with_act:
                act()

        parts = {
            "update alone (update_from, K = utd x n_envs)": update_alone,
            "update dispatch (host held by the call, device idle before)": update_dispatch,
            "insert (replay.add + mirror.sync)": insert_block,
            "  of which replay.add (host)": add_alone,
            "  of which mirror.take (host read-back of the new frames)": take_alone,
            "sample (host draw + upload)": sample_block,
            "act (n_envs obs, actions fetched)": act,
            "serial iteration (insert, act, sample, update; each waited for)": iteration_serial,
            "overlapped iteration (update in flight during insert + act)": iteration_overlapped,
            "overlapped iteration without act": lambda: iteration_overlapped(with_act=False),
        }
        rows = {}
        for name, fn in parts.items():
            rows[name] = timed(fn, args.iters) * 1e3
            jax.block_until_ready(state["metrics"])
            print(f"{name}: {rows[name]:.2f} ms", flush=True)
        mirror.close()
        replay.close()

    dev = jax.devices()[0]
    result = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "jax": jax.__version__,
              "config": args.config, "overrides": args.overrides, "n_envs": n, "k": k,
              "ms_per_iteration": rows,
              "env_steps_per_s_if_envs_were_free": {name: round(n / (ms / 1e3), 1)
                                                    for name, ms in rows.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
