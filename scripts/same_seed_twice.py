"""Train the same config twice with the same seed and say where the two runs differ.

    python scripts/same_seed_twice.py --kind vector --set train.total_timesteps=3000 --out /tmp/twice

Compares progress.csv (counters, returns, losses) and eval.csv (returns) row by row and prints
the first differing value of each, or that they are identical. On the CPU the runs are
bit-identical (tests/test_run_failures.py); this script is how a GPU is checked.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dodgerl.cli import build_parser, config_from_args  # noqa: E402
from dodgerl.train import train  # noqa: E402

COMPARED = {"progress.csv": ("step", "episodes", "updates", "train_return", "train_length",
                             "critic_loss", "actor_loss", "temperature", "entropy", "q_mean"),
            "eval.csv": ("step", "mean_return", "std_return", "min_return", "max_return",
                         "mean_length")}


def first_difference(a: Path, b: Path, fields: tuple[str, ...]) -> str:
    with a.open(newline="") as f, b.open(newline="") as g:
        rows_a, rows_b = list(csv.DictReader(f)), list(csv.DictReader(g))
    for ra, rb in zip(rows_a, rows_b):
        for key in fields:
            if ra[key] != rb[key]:
                return f"first difference at step {ra['step']}, {key}: {ra[key]} vs {rb[key]}"
    if len(rows_a) != len(rows_b):
        return f"{len(rows_a)} vs {len(rows_b)} rows"
    return f"identical ({len(rows_a)} rows)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("topdown", "vector"), default="vector")
    parser.add_argument("--out", type=Path, default=Path("/tmp/same_seed_twice"))
    args, rest = parser.parse_known_args()
    run_args = build_parser("").parse_args(rest)
    config = config_from_args(args.kind, run_args)
    runs = [train(config, results_dir=args.out / f"run{i}").run_dir for i in (1, 2)]
    for log, fields in COMPARED.items():
        print(f"{args.kind} {log}: {first_difference(runs[0] / log, runs[1] / log, fields)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
