"""The background writeback: a thread that writes the buffer files' dirty pages ahead of commit."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


class Writeback:
    """Writes the buffer files' dirty pages to disk every ``interval_s`` seconds (``os.fsync`` on a
    descriptor of each file, which writes a shared mapping's dirty pages and releases the GIL), in
    a daemon thread, whenever something was added since the last time (``version()`` changed).

    Without it, what the loop wrote since the last commit stays in the page cache until the
    kernel's own writeback (30 s by default, or a dirty-memory threshold), so ``commit``'s flush
    writes it all at once while the loop waits: at 256x256 a checkpoint every 25K env steps
    flushes ~4.9 GB of frames. Durability is unchanged: only ``commit`` declares data in the
    header, after its own flush."""

    def __init__(self, paths: list[Path], interval_s: float, version: Any) -> None:
        self._fds = [os.open(p, os.O_RDONLY) for p in paths]
        self._interval = interval_s
        self._version = version
        self._stopped = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._run, name=f"replay-writeback {paths[0].parent}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            seen = self._version()
            while not self._stopped.wait(self._interval):
                now = self._version()
                if now is None:
                    return  # the buffer was dropped without close()
                if now == seen:
                    continue
                seen = now
                synced = 0
                for fd in self._fds:
                    if self._stopped.is_set():
                        return
                    try:
                        os.fsync(fd)
                        synced += 1
                    except OSError:
                        pass  # commit's own flush reports a failing disk; this is only a head start
                if synced == len(self._fds):
                    self.count += 1
        finally:
            for fd in self._fds:
                os.close(fd)

    def stop(self) -> None:
        """Stop the thread (after the fsync it is in, if any); it closes the descriptors."""
        self._stopped.set()
        self._thread.join()
