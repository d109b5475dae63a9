"""Write docs/frame_level{1,2,3}.png: a 256x256 top-down frame of each level after some steps of the heuristic dodger.

    python scripts/render_frame.py [--out-dir docs] [--steps 45] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402

from dodgerl.envs.dodge_env import DodgeEnv  # noqa: E402
from dodgerl.envs.levels import LEVELS  # noqa: E402
from dodgerl.envs.policies import HeuristicPolicy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="docs")
    parser.add_argument("--steps", type=int, default=45, help="heuristic steps before the frame is taken")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for level in sorted(LEVELS):
        env = DodgeEnv(level=level, obs_mode="topdown", image_size=args.size)
        policy = HeuristicPolicy(env)
        obs, _ = env.reset(seed=args.seed)
        for _ in range(args.steps):
            obs, _, terminated, truncated, info = env.step(policy(obs))
            if terminated or truncated:
                break
        surface = pygame.image.frombuffer(obs.tobytes(), (args.size, args.size), "RGB")
        path = os.path.join(args.out_dir, f"frame_level{level}.png")
        pygame.image.save(surface, path)
        print(f"{path}: level {level}, step {info['steps']}, {info['projectiles']} projectiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
