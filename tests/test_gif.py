"""GIFs encoded in a process of their own (``dodgerl.gif.GifProcess``)."""

from __future__ import annotations

import numpy as np

from dodgerl.gif import GifProcess, write_gif


def frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = np.full((32, 32, 3), 20, np.uint8)
        y, x = rng.integers(0, 24, size=2)
        f[y:y + 8, x:x + 8] = (200, 40 + i, 90)
        out.append(f)
    return out


def test_gif_process_writes_what_write_gif_writes_and_reports_a_failure(tmp_path, capfd):
    here = tmp_path / "here.gif"
    write_gif(frames(12, 0), here)
    gifs = GifProcess()
    assert gifs._pool is None  # nothing asked for: no process
    blocked = tmp_path / "file"
    blocked.write_text("a file where a directory should be")
    gifs.submit(frames(12, 0), tmp_path / "videos" / "a.gif")
    gifs.submit(frames(5, 1), blocked / "b.gif")  # cannot be written: reported, not raised
    gifs.submit(frames(7, 2), tmp_path / "videos" / "c.gif")
    gifs.close()  # waits for every GIF asked for
    assert (tmp_path / "videos" / "a.gif").read_bytes() == here.read_bytes()
    write_gif(frames(7, 2), tmp_path / "c_here.gif")
    assert (tmp_path / "videos" / "c.gif").read_bytes() == (tmp_path / "c_here.gif").read_bytes()
    assert not (blocked / "b.gif").exists()
    assert "could not write the GIF" in capfd.readouterr().err
    gifs.close()  # idempotent
