"""Eval curves of several runs on one plot: eval mean return (with min-max band) vs env steps.

    python scripts/plot_eval.py "pixels=results/a/eval.csv" "state=results/b/eval.csv" --out curves.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=EVAL_CSV",
                        help="a label and the eval.csv of a run directory")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="eval mean return (10 deterministic episodes)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"expected LABEL=EVAL_CSV, got {spec!r}")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            parser.error(f"{path}: no evaluations")
        steps = [int(r["step"]) for r in rows]
        mean = [float(r["mean_return"]) for r in rows]
        line, = ax.plot(steps, mean, marker="o", ms=3, label=label)
        ax.fill_between(steps, [float(r["min_return"]) for r in rows],
                        [float(r["max_return"]) for r in rows], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
