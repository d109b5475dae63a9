"""What encoding an evaluation's GIF in a thread costs a busy thread beside it (the training loop
encodes the best policy's GIF in a thread; docs/perf_notes.md v18).

A thread spins on a fixed piece of work for ``--seconds`` alone, then again while another thread
encodes a GIF of ``--frames`` 256x256 frames with ``dodgerl.train.write_gif``; the ratio of the
two rates is printed, with the GIF's time in the thread and alone. Work kinds: pure interpreter
work, and small numpy calls (like the loop's host side).

    python benchmarks/gif_beside_loop.py [--frames 400] [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dodgerl.train import write_gif  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    frames = arena_like_frames(args.frames)
    small = np.ones(64, np.float32)

    def python_work() -> None:
        s = 0
        for i in range(50):
            s += i

    def numpy_work() -> None:
        (small * 2.0 + 1.0).sum()

    with tempfile.TemporaryDirectory() as d:
        gif = Path(d) / "x.gif"
        print("| busy thread's work | its rate beside the GIF / alone | GIF encoding s, beside the busy thread |")
        print("| --- | --- | --- |")
        for name, work in (("pure interpreter", python_work), ("small numpy calls", numpy_work)):
            done = [False]
            threading.Timer(args.seconds, lambda: done.__setitem__(0, True)).start()
            alone = spin(done, work)
            done, took = [False], {}

            def encode() -> None:
                t = time.perf_counter()
                write_gif(frames, gif)
                took["s"] = time.perf_counter() - t
                done[0] = True

            threading.Thread(target=encode).start()
            beside = spin(done, work)
            print(f"| {name} | {beside / alone:.2f} | {took['s']:.1f} |")
        t = time.perf_counter()
        write_gif(frames, gif)
        print(f"\nGIF of {args.frames} frames encoded alone: {time.perf_counter() - t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
