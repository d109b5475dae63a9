"""Training diagnostics of runs at fixed budgets: for each group of runs, the IQM over its seeds
(95% bootstrap CI) of progress.csv columns (critic loss, temperature, ...), each run's value the
mean of its rows in the window (step - window, step].

    python benchmarks/progress_table.py --label pixels84 RUN_DIR... --label state RUN_DIR... \
        --keys critic_loss,temperature,q_mean --steps 20000,50000,80000

A RUN_DIR is a directory holding progress.csv (a group's seedN/ directories are runs). Prints a
markdown table: one row per label and key, one column per step ("-" where no run has rows).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.seeds_learning import read_rows  # noqa: E402
from benchmarks.suite.stats import bootstrap_ci  # noqa: E402


def window_mean(rows: list[dict[str, str]], key: str, step: int, window: int,
                source: Path | str = "progress.csv") -> float:
    """Mean of ``key`` over the progress.csv ``rows`` (read from ``source``) with step in
    (step - window, step]; NaN if none (empty cells, as before the first update, are skipped)."""
    if rows and key not in rows[0]:
        raise ValueError(f"{source}: no column {key!r} (columns: {', '.join(rows[0])})")
    values = [float(r[key]) for r in rows if r[key] not in ("", None) and step - window < int(r["step"]) <= step]
    return float(np.mean(values)) if values else math.nan


def table(groups: dict[str, list[Path]], keys: list[str], steps: list[int], window: int) -> str:
    lines = ["| runs | seeds | column | " + " | ".join(f"{s:,}" for s in steps) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for label, runs in groups.items():
        progress = {run: read_rows(run / "progress.csv") for run in runs}  # each file read once
        for key in keys:
            cells = []
            for step in steps:
                values = np.array([window_mean(progress[r], key, step, window, r / "progress.csv")
                                   for r in runs])
                values = values[np.isfinite(values)]
                if len(values) == 0:
                    cells.append("-")
                    continue
                point, low, high = bootstrap_ci(values)
                cells.append(f"{point:.3g} [{low:.3g}, {high:.3g}]" if len(values) > 1 else f"{point:.3g}")
            lines.append(f"| {label} | {len(runs)} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", action="append", nargs="+", required=True, metavar=("LABEL", "RUN_DIR"),
                        help="a label and its run directories (repeatable)")
    parser.add_argument("--keys", default="critic_loss,temperature,entropy,q_mean")
    parser.add_argument("--steps", default="20000,50000,80000")
    parser.add_argument("--window", type=int, default=5000, help="env steps averaged before each step")
    args = parser.parse_args(argv)
    groups = {}
    for label, *dirs in args.label:
        if not dirs:
            parser.error(f"--label {label}: no run directories")
        missing = [d for d in dirs if not (Path(d) / "progress.csv").is_file()]
        if missing:
            parser.error(f"--label {label}: no progress.csv in {', '.join(missing)}")
        groups[label] = [Path(d) for d in dirs]
    print(table(groups, args.keys.split(","), [int(s) for s in args.steps.split(",")], args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
