"""Animated GIFs of evaluation episodes, and a process that encodes them away from the loop.

Encoding a GIF (Pillow quantises every frame) takes ~1 s at 256x256 and holds the interpreter
lock for much of it: on the 2-core CPU box a busy Python thread ran at 40% of its speed while 400
frames were encoded beside it. In its own process it takes nothing from the training loop's
threads but the hand-off of the frames (on the H200 the kilostep after a new best stayed slow
either way, 669 vs 710 env steps/s: best/'s save, not the GIF, is most of that row;
docs/perf_notes.md v18). This module imports only numpy and Pillow, so the process starts
without JAX.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

GIF_NICENESS = 15
"""How much lower the encoding process's scheduling priority is than the training process's."""


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 30, max_frames: int = 400) -> None:
    """Write an animated GIF (every n-th frame so that at most ``max_frames`` are kept)."""
    from PIL import Image  # Pillow: installed with matplotlib, a core dependency

    stride = max(1, math.ceil(len(frames) / max_frames))
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames[::stride]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 * stride / fps), loop=0)
    os.replace(tmp, path)


def write_gif_or_warn(frames: list[np.ndarray], path: Path) -> None:
    try:
        write_gif(frames, path)
    except Exception as e:  # a missing GIF must not stop the evaluations, let alone training
        print(f"could not write the GIF {path}: {e!r}", file=sys.stderr, flush=True)


def _lower_priority() -> None:
    try:
        os.nice(GIF_NICENESS)
    except (AttributeError, OSError):  # refused (a sandbox): the normal priority
        pass


class GifProcess:
    """Encodes GIFs in order in one spawned process, started at the first GIF asked for (a run
    whose best never improves starts none). ``close`` waits for every GIF asked for; a GIF that
    cannot be written is reported on stderr, not raised."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future] = []

    def submit(self, frames: list[np.ndarray], path: Path) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_lower_priority)
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._pool.submit(write_gif_or_warn, frames, path))

    def close(self) -> None:
        if self._pool is None:
            return
        for future in self._futures:
            try:
                future.result()
            except Exception as e:  # the process itself died (write errors are reported there)
                print(f"could not write a GIF: {e!r}", file=sys.stderr, flush=True)
        self._pool.shutdown(wait=True)
        self._pool = None
