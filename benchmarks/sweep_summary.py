"""One row per training run found in run-directory archives or folders: its settings and how its
evaluations went (first evaluation >= a threshold, best, final), as CSV on stdout.

    python benchmarks/sweep_summary.py benchmarks/reports/train_vector_level2_gpu_symmetry/*/runs.tgz

A run directory is any folder holding config.yaml and eval.csv (seed_sweep.sh's runs, copied into
a .tgz by the device commands). Columns name the settings the sweeps vary.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
from pathlib import Path

import yaml

SETTINGS = [("level", "env.level"), ("seed", "seed"), ("vector_encoder", "agent.vector_encoder"),
            ("symmetry", "agent.symmetry"), ("set_encoder_arch", "agent.set_encoder_arch"),
            ("batch_size", "agent.batch_size"), ("target_entropy", "agent.target_entropy"),
            ("utd", "train.utd"), ("n_envs", "train.n_envs"), ("update_every", "train.update_every")]


def lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else {}
    return "" if config == {} else config


def runs(source: Path):
    """(name, config text, eval.csv text) of every run directory in an archive or a folder."""
    if source.is_dir():
        for config in sorted(source.rglob("config.yaml")):
            evals = config.with_name("eval.csv")
            if evals.exists():
                yield str(config.parent), config.read_text(), evals.read_text()
        return
    with tarfile.open(source) as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        for name in sorted(files):
            if name.endswith("config.yaml") and name[:-len("config.yaml")] + "eval.csv" in files:
                folder = name[:-len("config.yaml")]
                read = lambda n: tar.extractfile(files[n]).read().decode()
                yield f"{source}:{folder}", read(name), read(folder + "eval.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help=".tgz archives or folders of run directories")
    parser.add_argument("--threshold", type=float, default=900.0, help="eval mean return to reach")
    args = parser.parse_args()
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["run", *[name for name, _ in SETTINGS], "steps", f"first_{args.threshold:g}_at",
                  "best", "best_at", "final"])
    for source in args.sources:
        for name, config_text, eval_text in runs(source):
            config = yaml.safe_load(config_text)
            evals = [(int(r["step"]), float(r["mean_return"])) for r in csv.DictReader(io.StringIO(eval_text))]
            if not evals:
                continue
            first = next((s for s, m in evals if m >= args.threshold), "")
            best_at, best = max(evals, key=lambda e: e[1])
            out.writerow([name, *[lookup(config, key) for _, key in SETTINGS], evals[-1][0], first,
                          f"{best:.1f}", best_at, f"{evals[-1][1]:.1f}"])


if __name__ == "__main__":
    main()
