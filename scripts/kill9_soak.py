"""Soak test of crash recovery: one tiny run, killed with SIGKILL at random moments (start-up,
training, a save, the exit) and resumed each time, until it reaches its budget.

    python scripts/kill9_soak.py --kills 20 --out /tmp/soak        # prints one line per kill

Each resume must succeed; at the end the run must hold its whole budget, progress.csv and
eval.csv in step order without duplicates, a complete final checkpoint, and a replay buffer
that reopens verified. The figures go to the closing note of whoever runs it.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dodgerl.checkpoint import complete_checkpoints  # noqa: E402
from dodgerl.replay import ReplayBuffer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RAW = {
    "experiment": "soak", "seed": 7,
    "env": {"level": 2, "obs_mode": "vector", "max_episode_steps": 60},
    "agent": {"batch_size": 16, "net_arch": [32, 32]},
    "replay": {"buffer_size": 4000},
    "train": {"total_timesteps": 3000, "learning_starts": 200, "n_envs": 2, "eval_freq": 400,
              "eval_episodes": 2, "checkpoint_freq": 200, "keep_checkpoints": 2, "log_freq": 100,
              "progress_bar": False},
}


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / "vector_sac.py"), *args],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def steps_of(path: Path) -> list[int]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill9_soak"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay-s", type=float, default=12.0)
    parser.add_argument("--total", type=int, default=RAW["train"]["total_timesteps"],
                        help="the run's budget in env steps")
    args = parser.parse_args()
    RAW["train"]["total_timesteps"] = args.total
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "config.yaml"
    config.write_text(yaml.safe_dump(RAW))
    log = args.out / "runs.log"
    results = args.out / "results"
    total = RAW["train"]["total_timesteps"]
    run_dir: Path | None = None
    kills = resumes = 0
    t0 = time.time()

    def start() -> subprocess.Popen:
        """Resume the run if it saved a checkpoint, else start it (again) from scratch."""
        nonlocal resumes
        if run_dir is not None and complete_checkpoints(run_dir / "checkpoints"):
            resumes += 1
            return launch(["--resume", str(run_dir)], log)
        if run_dir is not None:
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
        return launch(["--config", str(config), "--results-dir", str(results)], log)

    proc = start()
    while True:
        if kills < args.kills:
            delay = rng.uniform(0.5, args.max_delay_s)
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                run_dir = next((p for p in results.glob("soak/*") if p.is_dir()), None)
                progress = steps_of(run_dir / "progress.csv") if run_dir else []
                print(f"kill {kills}: after {delay:.1f} s, progress at step "
                      f"{progress[-1] if progress else 0}", flush=True)
                proc = start()
                continue
        else:
            code = proc.wait()
        if code != 0:
            print(f"FAILED: exit code {code}; see {log}", flush=True)
            return 1
        run_dir = next(p for p in results.glob("soak/*") if p.is_dir())
        if steps_of(run_dir / "progress.csv")[-1:] == [total]:
            break
        proc = start()
    progress, evals = steps_of(run_dir / "progress.csv"), steps_of(run_dir / "eval.csv")
    final = [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")]
    ReplayBuffer(run_dir / "replay", capacity=RAW["replay"]["buffer_size"], observation_shape=(65,),
                 observation_dtype="float32", action_dim=2, n_envs=RAW["train"]["n_envs"]).close()
    ok = (progress == sorted(set(progress)) and progress[-1] == total
          and evals == sorted(set(evals)) and final[-1] == total)
    print(f"{kills} kills, {resumes} resumes, {time.time() - t0:.0f} s; progress rows "
          f"{len(progress)} (last {progress[-1]}), eval rows at {evals}, checkpoints {final}, "
          f"replay reopens verified; in order without duplicates: {ok}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
