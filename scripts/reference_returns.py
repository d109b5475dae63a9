"""Reference returns: random, heuristic and lookahead policies, mean/std of return and episode length per level.

    python scripts/reference_returns.py [--episodes 100] [--action-space-type basic] [--json out.json]

Episode i uses env seed i (and random-policy seed i), so the table is
reproducible. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402

from dodgerl.envs.dodge_env import DodgeEnv  # noqa: E402
from dodgerl.envs.levels import LEVELS  # noqa: E402
from dodgerl.envs.policies import HeuristicPolicy, LookaheadPolicy, RandomPolicy, run_episode  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--action-space-type", default="basic", choices=["basic", "dash"])
    parser.add_argument("--max-episode-steps", type=int, default=1000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for level in sorted(LEVELS):
        env = DodgeEnv(level=level, action_space_type=args.action_space_type, max_episode_steps=args.max_episode_steps)
        policies = {"random": lambda i: RandomPolicy(env, seed=i), "heuristic": lambda i: HeuristicPolicy(env)}
        if args.action_space_type == "basic":  # LookaheadPolicy plans 2-dim actions only
            policies["lookahead"] = lambda i: LookaheadPolicy(env)
        for name, make_policy in policies.items():
            results = [run_episode(env, make_policy(i), seed=i) for i in range(args.episodes)]
            r = np.array(results, dtype=np.float64)
            rows.append({
                "level": level, "policy": name, "episodes": args.episodes,
                "return_mean": r[:, 0].mean(), "return_std": r[:, 0].std(),
                "length_mean": r[:, 1].mean(), "length_std": r[:, 1].std(),
                "truncated_frac": float((r[:, 0] == r[:, 1]).mean()),  # return == length iff never hit
            })
    print(f"Reference returns, {args.episodes} episodes per row (seeds 0..{args.episodes - 1}), "
          f"'{args.action_space_type}' actions, max {args.max_episode_steps} steps "
          f"({time.perf_counter() - start:.0f} s)\n")
    print("| level | policy | return mean | return std | length mean | length std | survived to truncation |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['level']} ({LEVELS[r['level']].name}) | {r['policy']} | {r['return_mean']:.1f} | "
              f"{r['return_std']:.1f} | {r['length_mean']:.1f} | {r['length_std']:.1f} | {r['truncated_frac']:.0%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
