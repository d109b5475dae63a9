"""Learning curves of several seed groups trained at once, summarised with IQM and bootstrap CIs.

    python benchmarks/seeds_learning.py --out results/benchmarks/seeds_learning --time-limit-s 480 \\
        --run "vector=experiments/vector_sac.py --level 1 --seeds 0-4 --total-timesteps 100000" \\
        --run "drq84=experiments/topdown_sac.py --level 1 --config configs/sac_topdown_drq84_easy.yaml --seeds 0-4"

Each ``LABEL=COMMAND`` runs as its own process (``--results-dir OUT/runs/LABEL`` is appended), all
at once; those still going after ``--time-limit-s`` get SIGTERM (they checkpoint and stop), so their
curves end where they were. Then, per label, every seed's ``eval.csv`` (a group directory's seeds,
or every run directory found: a peer's or a single run's) goes into ``curves.json``, and
``report.md`` gets, per label: the IQM over seeds with a 95% stratified bootstrap CI at fixed
budgets, the final return (mean of each seed's last 5 evaluations), env steps to 900, and the
plots ``curves_steps.png`` and ``curves_wallclock.png``. With ``--reeval-episodes N`` each run's
kept best policy is then evaluated on N fresh episodes (``reeval.json``, a table of its own).
Replay buffers and checkpoints are deleted at the end (the logs and ``best/`` stay), so OUT stays
small.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.suite.stats import bootstrap_ci, curve_iqm_ci, iqm

ROOT = Path(__file__).resolve().parents[1]
FINAL_EVALS = 5
""""Final" return: the mean of a seed's last this many evaluations (not its best)."""


def run_all(runs: list[tuple[str, str]], out: Path, time_limit_s: float,
            grace_s: float = 120.0) -> dict:
    """Start every labelled command at once; SIGTERM those past the limit; their exit codes.
    Commands that share a label (the seeds of one setting run as separate processes) share its
    results directory; their logs are LABEL.log, LABEL.1.log, ..."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for label, command in runs:
        count = sum(1 for n in procs if n == label or n.startswith(label + "."))
        name = label if count == 0 else f"{label}.{count}"
        argv = shlex.split(command)
        if argv[0].endswith(".py"):
            argv = [sys.executable, str(ROOT / argv[0]) if not Path(argv[0]).is_absolute() else argv[0], *argv[1:]]
        argv += ["--results-dir", str(out / "runs" / label)]
        log = (out / "logs" / f"{name}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"{name}: {' '.join(argv)}", flush=True)
        procs[name] = subprocess.Popen(argv, stdout=log.open("a"), stderr=subprocess.STDOUT,
                                        env=env, cwd=ROOT)
    start = time.perf_counter()
    while any(p.poll() is None for p in procs.values()):
        if time.perf_counter() - start > time_limit_s:
            for label, p in procs.items():
                if p.poll() is None:
                    print(f"{label}: time limit, SIGTERM", flush=True)
                    p.send_signal(signal.SIGTERM)
            stop_by = time.perf_counter() + grace_s
            while any(p.poll() is None for p in procs.values()) and time.perf_counter() < stop_by:
                time.sleep(1)
            for label, p in procs.items():
                if p.poll() is None:
                    print(f"{label}: still going {grace_s:.0f} s after SIGTERM, killed", flush=True)
                    p.kill()
            break
        time.sleep(2)
    return {label: p.wait() for label, p in procs.items()}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def collect(out: Path, labels: list[str]) -> dict:
    """Per label, per seed: the eval curve [(step, mean_return)], wall-clock of each evaluation,
    and the steps reached."""
    curves: dict = {}
    for label in labels:
        for eval_csv in sorted((out / "runs" / label).rglob("eval.csv")):
            run_dir = eval_csv.parent
            config = run_dir / "config.yaml"
            seed = run_dir.name
            if config.is_file():
                import yaml

                seed = str(yaml.safe_load(config.read_text()).get("seed", seed))
            rows = read_rows(eval_csv)
            progress = read_rows(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
            curves.setdefault(label, {})[seed] = {
                "eval": [(int(r["step"]), float(r["mean_return"])) for r in rows],
                "wall_s": [float(r["wall_time_s"]) for r in rows if r.get("wall_time_s")],
                "steps_reached": int(progress[-1]["step"]) if progress else (int(rows[-1]["step"]) if rows else 0),
            }
    return curves


FRESH_SEED = 2_000_000
"""Re-evaluation episode i resets with seed FRESH_SEED + i: episodes the run never evaluated
(its evaluations use eval_seed 1,000,000 + i, its training envs seeds from the run's seed)."""


def reevaluate_best(out: Path, labels: list[str], episodes: int, seed: int = FRESH_SEED,
                    processes: int | None = None) -> dict:
    """Per label, per seed: each run's kept best policy (``best/``) evaluated on ``episodes``
    fresh deterministic episodes (``dodgerl.evaluate``), with the step and the logged 10-episode
    return it was kept for. Runs without a best policy are left out. The episodes step in
    ``processes`` subprocesses (default: one per CPU core; 0: in this process), which changes
    how long it takes, not what it measures."""
    if processes is None:
        processes = os.cpu_count() or 1
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from dodgerl.checkpoint import CheckpointError
    from dodgerl.evaluate import evaluate, load_agent

    found: dict = {}
    for label in labels:
        for config in sorted((out / "runs" / label).rglob("config.yaml")):
            run_dir = config.parent
            if not (run_dir / "best").is_dir():
                continue
            try:
                loaded = load_agent(run_dir, "best")
            except CheckpointError as err:
                print(f"{label}: {run_dir}: no best policy to re-evaluate ({err})", flush=True)
                continue
            result = evaluate(loaded.agent, loaded.config.env, episodes, seed, processes=processes)
            found.setdefault(label, {})[str(loaded.config.seed)] = {
                "step": int(loaded.meta["step"]), "logged_best": loaded.meta.get("best_eval"),
                "episodes": episodes, "episode_seeds": [seed, seed + episodes - 1],
                "mean_return": float(result.returns.mean()),
                "std_return": float(result.returns.std()),
            }
            print(f"{label} seed {loaded.config.seed}: best policy (step {loaded.meta['step']}) on "
                  f"{episodes} fresh episodes: {result.returns.mean():.1f}", flush=True)
    return found


def reeval_table(reeval: dict) -> str:
    """The kept best policies on fresh episodes: IQM over seeds with a 95% bootstrap CI."""
    lines = ["| run | seeds | episodes each | logged best (10 eval episodes), IQM | best policy on fresh "
             "episodes, IQM [95% CI] | per seed (step: return) |", "| --- " * 6 + "|"]
    for label, per_seed in reeval.items():
        fresh = np.array([r["mean_return"] for r in per_seed.values()])
        logged = np.array([r["logged_best"] for r in per_seed.values() if r["logged_best"] is not None])
        point = bootstrap_ci(fresh, iqm)
        episodes = sorted({r["episodes"] for r in per_seed.values()})
        lines.append(f"| {label} | {len(per_seed)} | {', '.join(map(str, episodes))} | "
                     f"{iqm(logged):.0f} | {point[0]:.0f} [{point[1]:.0f}, {point[2]:.0f}] | "
                     + ", ".join(f"{r['step'] // 1000}K: {r['mean_return']:.0f}" for r in per_seed.values())
                     + " |")
    return "\n".join(lines)


def common_points(per_seed: dict) -> tuple[list[int], np.ndarray]:
    """The eval steps every seed has, and the (seeds, points) returns at them."""
    steps = None
    for c in per_seed.values():
        have = {s for s, _ in c["eval"]}
        steps = have if steps is None else steps & have
    steps = sorted(steps or [])
    table = np.array([[dict(c["eval"])[s] for s in steps] for c in per_seed.values()])
    return steps, table


def summarise(curves: dict, budgets: list[int]) -> tuple[str, dict]:
    lines = ["| run | seeds | steps reached (min) | final IQM [95% CI] | "
             + " | ".join(f"IQM at {b:,}" for b in budgets) + " | env steps to 900, per seed |",
             "| --- " * (5 + len(budgets)) + "|"]
    summary = {}
    for label, per_seed in curves.items():
        finals = [float(np.mean([r for _, r in c["eval"][-FINAL_EVALS:]])) for c in per_seed.values() if c["eval"]]
        final = bootstrap_ci(np.array(finals), iqm) if finals else (np.nan, np.nan, np.nan)
        steps, table = common_points(per_seed)
        at = []
        for b in budgets:
            cols = [i for i, s in enumerate(steps) if s <= b]
            if not cols or steps[cols[-1]] < b:
                at.append("-")
                continue
            point = bootstrap_ci(table[:, cols[-1]], iqm)
            at.append(f"{point[0]:.0f} [{point[1]:.0f}, {point[2]:.0f}]")
        to_900 = [next((s for s, r in c["eval"] if r >= 900), None) for c in per_seed.values()]
        reached = min(c["steps_reached"] for c in per_seed.values())
        lines.append(f"| {label} | {len(per_seed)} | {reached:,} | {final[0]:.0f} [{final[1]:.0f}, {final[2]:.0f}] | "
                     + " | ".join(at) + " | "
                     + ", ".join("-" if s is None else f"{s // 1000}K" for s in to_900) + " |")
        summary[label] = {"final_per_seed": finals, "final_iqm_ci": list(map(float, final)),
                          "steps_to_900": to_900, "steps_reached_min": reached}
    return "\n".join(lines), summary


def plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for xkey, name, xlabel in (("steps", "curves_steps.png", "env steps"),
                               ("wall", "curves_wallclock.png", "wall-clock s (mean over seeds)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, per_seed in curves.items():
            steps, table = common_points(per_seed)
            if not steps:
                continue
            mid, lo, hi = curve_iqm_ci(table)
            x = np.array(steps, float)
            if xkey == "wall":
                walls = [dict(zip([s for s, _ in c["eval"]], c["wall_s"])) for c in per_seed.values()]
                if not all(len(c["wall_s"]) == len(c["eval"]) for c in per_seed.values()):
                    continue
                x = np.array([np.mean([w[s] for w in walls]) for s in steps])
            line, = ax.plot(x, mid, label=f"{label} (IQM, {len(per_seed)} seeds)")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
            for c in per_seed.values():  # each seed, thin
                xs = [s for s, _ in c["eval"]] if xkey == "steps" else c["wall_s"]
                if len(xs) == len(c["eval"]):
                    ax.plot(xs, [r for _, r in c["eval"]], color=line.get_color(), lw=0.5, alpha=0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval return (10 episodes)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=COMMAND")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/seeds_learning"))
    parser.add_argument("--time-limit-s", type=float, default=None)
    parser.add_argument("--budgets", default="50000,100000,200000,300000",
                        help="env steps at which the report gives the IQM")
    parser.add_argument("--summarise-only", action="store_true",
                        help="only read OUT/runs again and rewrite the report")
    parser.add_argument("--keep-replay", action="store_true")
    parser.add_argument("--reeval-episodes", type=int, default=0, metavar="N",
                        help="after the runs, evaluate each run's kept best policy on N fresh "
                             "deterministic episodes (seeds 2,000,000 + i) into OUT/reeval.json "
                             "and the report (0: no; the report keeps an earlier reeval.json)")
    parser.add_argument("--reeval-processes", type=int, default=None, metavar="N",
                        help="subprocesses that step the re-evaluation episodes (default: one "
                             "per CPU core; 0: in this process); the results are the same")
    args = parser.parse_args(argv)
    if args.reeval_episodes < 0:
        parser.error("--reeval-episodes must be >= 0")
    if args.reeval_processes is not None and args.reeval_processes < 0:
        parser.error("--reeval-processes must be >= 0")
    runs = [tuple(r.split("=", 1)) for r in args.run]
    args.out.mkdir(parents=True, exist_ok=True)
    codes = {}
    if not args.summarise_only:
        codes = run_all(runs, args.out, args.time_limit_s or float("inf"))
    labels = (list(dict.fromkeys(label for label, _ in runs))
              or sorted(p.name for p in (args.out / "runs").iterdir()))
    curves = collect(args.out, labels)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    table, summary = summarise(curves, budgets)
    (args.out / "curves.json").write_text(json.dumps({"runs": [list(r) for r in runs], "exit": codes, "curves": curves,
                                                      "summary": summary}, indent=1))
    plot(curves, args.out)
    reeval_path = args.out / "reeval.json"
    if args.reeval_episodes:
        reeval_path.write_text(json.dumps(reevaluate_best(args.out, labels, args.reeval_episodes,
                                                              processes=args.reeval_processes), indent=1))
    reeval = json.loads(reeval_path.read_text()) if reeval_path.is_file() else {}
    reeval = {label: r for label, r in reeval.items() if label in labels and r}
    report = ["# Learning curves, seeds trained together", "",
              f"Command: `python benchmarks/seeds_learning.py {' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}`",
              "", f"Final: the mean of each seed's last {FINAL_EVALS} evaluations; IQM over seeds with a "
              "95% stratified percentile bootstrap CI.", "", table, "",
              "![vs env steps](curves_steps.png) ![vs wall-clock](curves_wallclock.png)", ""]
    if reeval:
        report += ["Each run's kept best policy (`best/`), re-evaluated on fresh deterministic "
                   f"episodes (seeds {FRESH_SEED:,} + i, never evaluated during the run; "
                   "`reeval.json`):", "", reeval_table(reeval), ""]
    (args.out / "report.md").write_text("\n".join(report))
    print("\n".join(report), flush=True)
    if not args.keep_replay:
        for label in labels:
            for big in [*(args.out / "runs" / label).rglob("replay"), *(args.out / "runs" / label).rglob("checkpoints"),
                        *(args.out / "runs" / label).rglob("abandoned")]:
                shutil.rmtree(big, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
