"""Env throughput on one CPU core: steps/s for vector observations and for images at 256/128/84/64.

Random actions (drawn up front, so the sampler is not timed), resets included,
physics + observation + Python overhead all counted. Prints a markdown table;
``--json PATH`` also writes the numbers and the machine description.

    python benchmarks/env_throughput.py [--level 1] [--steps 30000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# (label, obs_mode, image_size, target steps/s or None)
CONFIGS = [
    ("vector", "vector", 256, 20_000),
    ("topdown 256x256", "topdown", 256, 4_000),
    ("topdown 128x128", "topdown", 128, None),
    ("topdown 84x84", "topdown", 84, 10_000),
    ("topdown 64x64", "topdown", 64, None),
]


def machine() -> dict[str, str]:
    import pygame
    import pymunk

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_visible": str(os.cpu_count()),
        "python": platform.python_version(),
        "pymunk": pymunk.version,
        "pygame": pygame.version.ver,
        "numpy": np.__version__,
    }


def measure(make_env, steps: int, seed: int = 0) -> tuple[float, int]:
    """Steps per second over ``steps`` random-action steps (after a short warm-up); returns (steps/s, episodes)."""
    env = make_env()
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, env.action_space.shape[0])).astype(np.float32)
    env.reset(seed=seed)
    for a in actions[: min(1000, steps)]:  # warm-up
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    env.reset(seed=seed)
    episodes = 0
    step = env.step
    reset = env.reset
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
            episodes += 1
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed, episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30_000, help="timed steps per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (the machine is shared)")
    parser.add_argument("--json", type=str, default=None, help="also write results to this JSON file")
    args = parser.parse_args(argv)

    pinned = False
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        pinned = True

    import gymnasium

    import dodgerl  # noqa: F401
    from dodgerl.envs.dodge_env import DodgeEnv

    rows = []
    for label, obs_mode, size, target in CONFIGS:
        steps = args.steps if obs_mode == "vector" else max(1000, args.steps // 3)
        runs = [
            measure(lambda: DodgeEnv(level=args.level, obs_mode=obs_mode, image_size=size), steps)
            for _ in range(args.repeats)
        ]
        best = max(r[0] for r in runs)
        rows.append({"config": label, "steps_per_s": best, "us_per_step": 1e6 / best, "episodes": runs[0][1],
                     "target": target, "meets_target": None if target is None else best >= target})
    made = max(
        measure(lambda: gymnasium.make("dodgerl/Dodge-v0", level=args.level), args.steps)[0] for _ in range(args.repeats)
    )
    rows.append({"config": "vector via gymnasium.make (checker + order wrappers)", "steps_per_s": made,
                 "us_per_step": 1e6 / made, "episodes": None, "target": None, "meets_target": None})

    info = machine()
    print(f"Env throughput, level {args.level}, one core (pinned: {pinned}), random actions, resets included, "
          f"best of {args.repeats}")
    print(f"Machine: {info['cpu']} ({info['cores_visible']} cores visible); Python {info['python']}, "
          f"pymunk {info['pymunk']}, pygame {info['pygame']}, numpy {info['numpy']}\n")
    print("| observation | steps/s | us/step | target | meets |")
    print("| --- | ---: | ---: | ---: | --- |")
    for r in rows:
        target = f"{r['target']:,}" if r["target"] else "-"
        meets = "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        print(f"| {r['config']} | {r['steps_per_s']:,.0f} | {r['us_per_step']:.1f} | {target} | {meets} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"level": args.level, "pinned_one_core": pinned, "machine": info, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
