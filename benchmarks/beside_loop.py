"""What a job that the training loop runs in a thread beside itself costs a busy thread (the
loop's host side): encoding the best policy's GIF, or saving a checkpoint with Orbax
(docs/perf_notes.md v18, v19).

A thread spins on a fixed piece of work for ``--seconds`` alone, then again while another thread
does the job; the ratio of the two rates is printed, with the job's time beside the busy thread
and alone. Work kinds: pure interpreter work, and small numpy calls (like the loop's host side).
Jobs:

- ``gif``: ``dodgerl.episodes.write_gif`` of ``--frames`` 256x256 frames.
- ``checkpoint``: ``--saves`` saves of a SAC agent for ``--image-size`` images (0: the 65-dim
  vector) through ``dodgerl.checkpoint.RunCheckpoints``, as the loop's checkpoint thread makes
  them: ``save(wait=False)`` (Orbax copies the arrays to the host, then writes them in its own
  thread), the next save waiting for the previous one, the last waited for; and one
  ``save_best``. The busy thread's loss, in seconds, is (1 - ratio) times the job's time.

    python benchmarks/beside_loop.py [--job gif] [--frames 400] [--seconds 2]
    python benchmarks/beside_loop.py --job checkpoint [--image-size 84] [--saves 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def arena_like_frames(n: int, side: int = 256) -> list[np.ndarray]:
    """Mostly flat frames with a moving block and a moving line (the arena's look: few colours)."""
    base = np.full((side, side, 3), 30, np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        f[100 + i % 50:120 + i % 50, 50:70] = 200
        f[i % side, :, 1] = 120
        frames.append(f)
    return frames


def spin(done: list[bool], work) -> float:
    n, t = 0, time.perf_counter()
    while not done[0]:
        work()
        n += 1
    return n / (time.perf_counter() - t)


def gif_job(args: argparse.Namespace, workdir: Path) -> tuple[Callable[[], None], str]:
    from dodgerl.episodes import write_gif

    frames = arena_like_frames(args.frames)
    return (lambda: write_gif(frames, workdir / "x.gif")), f"GIF of {args.frames} 256x256 frames"


def checkpoint_job(args: argparse.Namespace, workdir: Path) -> tuple[Callable[[], None], str]:
    import gymnasium
    import jax

    from dodgerl.agents import sac
    from dodgerl.checkpoint import RunCheckpoints

    if args.image_size:
        obs_space = gymnasium.spaces.Box(0, 255, (args.image_size, args.image_size, 3), np.uint8)
    else:
        obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (65,), np.float32)
    agent = sac.create(jax.random.key(0), obs_space,
                       gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32))
    size_mb = sum(x.nbytes for x in jax.tree.leaves(agent)) / 1e6
    runs = [0]

    def job() -> None:
        runs[0] += 1
        checkpoints = RunCheckpoints(workdir / f"run{runs[0]}", keep=2)
        for i in range(args.saves):
            checkpoints.save(1000 * (i + 1), agent, {"step": 1000 * (i + 1)}, wait=False)
        checkpoints.save_best(1000 * args.saves, agent, {"step": 1000 * args.saves})
        checkpoints.close()  # waits for the background writes

    shape = f"{args.image_size}x{args.image_size} images" if args.image_size else "vector observations"
    return job, f"{args.saves} checkpoints + 1 best/ of a SAC agent for {shape} ({size_mb:.0f} MB of arrays)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("gif", "checkpoint"), default="gif")
    parser.add_argument("--frames", type=int, default=400, help="gif: frames encoded")
    parser.add_argument("--image-size", type=int, default=84, help="checkpoint: image side (0: vector)")
    parser.add_argument("--saves", type=int, default=3, help="checkpoint: latest checkpoints saved")
    parser.add_argument("--seconds", type=float, default=2.0, help="the busy thread's time alone")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.saves < 1 or args.image_size < 0 or args.seconds <= 0:
        parser.error("--frames and --saves must be >= 1, --image-size >= 0, --seconds > 0")
    small = np.ones(64, np.float32)

    def python_work() -> None:
        s = 0
        for i in range(50):
            s += i

    def numpy_work() -> None:
        (small * 2.0 + 1.0).sum()

    with tempfile.TemporaryDirectory() as d:
        run_job, what = {"gif": gif_job, "checkpoint": checkpoint_job}[args.job](args, Path(d))
        run_job()  # once before timing: imports, first-call setup
        print(f"job: {what}\n")
        print("| busy thread's work | its rate beside the job / alone | job s, beside the busy thread | busy thread's loss s |")
        print("| --- | --- | --- | --- |")
        for name, work in (("pure interpreter", python_work), ("small numpy calls", numpy_work)):
            done = [False]
            threading.Timer(args.seconds, lambda: done.__setitem__(0, True)).start()
            alone = spin(done, work)
            done, took = [False], {}

            def job() -> None:
                t = time.perf_counter()
                try:
                    run_job()
                finally:
                    took["s"] = time.perf_counter() - t
                    done[0] = True

            threading.Thread(target=job).start()
            beside = spin(done, work)
            ratio = beside / alone
            print(f"| {name} | {ratio:.2f} | {took['s']:.2f} | {(1 - ratio) * took['s']:.2f} |")
        t = time.perf_counter()
        run_job()
        print(f"\nthe job alone: {time.perf_counter() - t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
