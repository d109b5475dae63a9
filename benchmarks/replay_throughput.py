"""Replay buffer benchmark: disk bytes per transition, reopen time, sampling and device-feed rates.

    python benchmarks/replay_throughput.py [--dir /tmp/replay_bench] [--json out.json] [--quick]

(a) fills a 256x256x3 buffer and reports allocated (st_blocks) and apparent bytes per stored
    transition against one frame (196,608 B);
(b) times the reopen of a 100K-slot buffer (``--reopen-shape``, 256x256x3 by default: ~20 GB,
    preallocated) declared full (its metadata filled as if by adds, frames left as allocated
    zeros) and committed: reopen verifies every file against the header and checks every
    chunk's CRC32, so it reads every committed byte, the frames included (from the page cache
    when they are still there: ``reopen_cold_s`` is a reopen after the files were evicted with
    ``posix_fadvise(DONTNEED)``, ~ a reopen after a reboot);
(c) batches/s of ``buf.sample`` on the host, and of ``DeviceSampler`` delivering (K, B, ...)
    batches to ``jax.devices()[0]`` for K=1 and K=8, i.e. the update rate the sampler keeps fed;
(d) the training loop's insert: ``add`` of one step of 16 envs' 256x256 frames into a fresh
    preallocated buffer, frames written with ``os.pwrite`` (the default) against through the
    memory mapping (the peer, same run, alternating rounds), ms per add;
(e) ``--only-sustained``: the same add, sustained: ``--sustained-adds`` adds paced by
    ``--sustained-pause-ms`` (the rest of a loop iteration), with the background writeback
    (``writeback_s=2``, the training loop's setting) and without, ms per add in buckets of 150
    adds, beside the disk's own sequential write rate (1 MiB blocks, fdatasync) measured in the
    same run. At 256x256 the loop writes 196,608 B per env step: 1,000 env steps/s is ~197 MB/s
    of frames, which the disk has to absorb once the page cache's dirty limits are reached.
(f) ``--only-checksum``: the loop's inserts and commits, ``--checksum-adds`` adds of 16 envs'
    256x256 frames with a commit every ``--checksum-commit-every`` adds, writeback on
    (``writeback_s=2``), in alternating rounds of the same run: the chunks' CRC32s hashed ahead
    by the background thread (the default), all hashed inside ``commit`` (the background hasher
    stopped, as with ``writeback_s=None``), and no checksums (the step skipped): env steps/s of
    the adding thread over adds + commits, ms per commit, the hashing done inside ``commit``, and
    the hasher thread's CPU time (on a machine with few cores it competes with the adds).
    ``--checksum-pause-ms`` paces the adds like the rest of a loop iteration would.
Everything is written under --dir and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dodgerl.replay import DeviceSampler, ReplayBuffer  # noqa: E402
from dodgerl.replay.buffer import START, VALID  # noqa: E402

FRAME_256 = 256 * 256 * 3


def dir_bytes(directory: Path) -> tuple[int, int]:
    """(allocated, apparent) bytes of every file in directory."""
    allocated = apparent = 0
    for p in directory.iterdir():
        st = p.stat()
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent


def fill(buf: ReplayBuffer, n_frames: int, episode_length: int, pool: np.ndarray) -> None:
    """Add transitions until n_frames frames are written per env (episodes of episode_length)."""
    n = buf.n_envs
    actions = np.zeros((n, buf.action_dim), np.float32)
    rewards = np.ones(n, np.float32)
    t, i = 0, 0
    no = np.zeros(n, bool)
    while buf.frames_written.min() < n_frames:
        t += 1
        done = np.full(n, t % episode_length == 0)
        obs, nxt = pool[i % len(pool)], pool[(i + 1) % len(pool)]
        buf.add(obs, actions, rewards, nxt, no, done)
        i += 1
        if i % 2000 == 0:
            buf.commit()
    buf.commit()


def bench_disk(root: Path, n_frames: int, episode_length: int) -> tuple[dict, ReplayBuffer]:
    directory = root / "disk"
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(8, 1, 256, 256, 3), dtype=np.uint8)
    buf = ReplayBuffer(directory, capacity=n_frames, observation_shape=(256, 256, 3),
                       action_dim=2, n_envs=1)
    t0 = time.perf_counter()
    fill(buf, n_frames, episode_length, pool)
    fill_s = time.perf_counter() - t0
    allocated, apparent = dir_bytes(directory)
    stored = len(buf)
    return {
        "frames": n_frames, "episode_length": episode_length, "transitions": stored,
        "allocated_bytes": allocated, "apparent_bytes": apparent,
        "allocated_per_transition": allocated / stored,
        "apparent_per_transition": apparent / stored,
        "ratio_to_frame": allocated / stored / FRAME_256,
        "fill_transitions_per_s": stored / fill_s,
    }, buf


def _evict(directory: Path) -> None:
    """Drop the directory's files from the page cache (they are on disk: commit flushed them)."""
    for p in directory.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_reopen(root: Path, capacity: int, shape: tuple[int, ...] = (256, 256, 3),
                 repeats: int = 5) -> dict:
    directory = root / "reopen"
    kw = dict(capacity=capacity, observation_shape=shape, action_dim=2, n_envs=1, writeback_s=None)
    t0 = time.perf_counter()
    buf = ReplayBuffer(directory, **kw)
    create_s = time.perf_counter() - t0
    # Declare the buffer full: one truncated episode of 1000 steps after another. Frames stay the
    # allocated zeros (the checksums of commit and reopen read them all the same).
    arr = buf._arrays
    frames = np.arange(capacity, dtype=np.int64)
    starts = frames - frames % 1001
    arr["frame_index"][0] = frames
    arr["episode_start_index"][0] = starts
    arr["flags"][0] = np.where(frames == starts, START, 0) | np.where(
        (frames + 1) % 1001 != 0, VALID, 0)
    arr["flags"][0, -1] &= ~VALID
    buf._frames_written[:] = capacity
    buf._ok = buf._scan_sampleable()  # add() keeps this set; the flags above bypassed add()
    buf._version += 1
    buf.commit()
    n = len(buf)
    buf.close()
    del buf, arr
    times, first_sample = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf = ReplayBuffer(directory, **kw)
        times.append(time.perf_counter() - t0)
        assert len(buf) == n
        t0 = time.perf_counter()
        buf.sample(64)
        first_sample.append(time.perf_counter() - t0)
        buf.close()
        del buf
    cold = []
    for _ in range(2):
        _evict(directory)
        t0 = time.perf_counter()
        buf = ReplayBuffer(directory, **kw)
        cold.append(time.perf_counter() - t0)
        buf.close(commit=False)
        del buf
    allocated, apparent = dir_bytes(directory)
    shutil.rmtree(directory)
    return {"capacity": capacity, "shape": list(shape), "transitions": n, "apparent_bytes": apparent,
            "reopen_cold_s": statistics.median(cold),
            "allocated_bytes": allocated, "create_s": create_s,
            "reopen_s_median": statistics.median(times), "reopen_s_max": max(times),
            "first_sample_s_median": statistics.median(first_sample)}


def _random_frames(seed: int, count: int, n_envs: int) -> list[np.ndarray]:
    """``count`` adds' worth of random 256x256 frames, (n_envs, 256, 256, 3) each."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(n_envs, 256, 256, 3), dtype=np.uint8) for _ in range(count)]


def _small_fields(n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actions, rewards and a terminated/truncated flag array of one add."""
    return np.zeros((n_envs, 2), np.float32), np.ones(n_envs, np.float32), np.zeros(n_envs, bool)


def _frame_buffer(directory: Path, adds: int, n_envs: int, writeback_s: float | None) -> ReplayBuffer:
    """A fresh 256x256 buffer with room for ``adds`` adds of ``n_envs`` (and a little more)."""
    return ReplayBuffer(directory, capacity=(adds + 2) * n_envs, observation_shape=(256, 256, 3),
                        action_dim=2, n_envs=n_envs, writeback_s=writeback_s)


def bench_insert(root: Path, adds: int, rounds: int = 3, n_envs: int = 16) -> dict:
    """ms per ``add`` of n_envs 256x256 frames into fresh pages: pwrite vs the mapping."""
    from dodgerl.replay import buffer as buffer_module

    frames, = _random_frames(2, 1, n_envs)
    actions, rewards, no = _small_fields(n_envs)
    default_min = buffer_module._PWRITE_MIN_FRAME_BYTES
    out: dict[str, list[float]] = {"pwrite": [], "mapping": []}
    try:
        for r in range(rounds):
            for path in ("pwrite", "mapping"):
                buffer_module._PWRITE_MIN_FRAME_BYTES = default_min if path == "pwrite" else 1 << 62
                directory = root / f"insert_{path}_{r}"
                buf = _frame_buffer(directory, adds, n_envs, writeback_s=None)
                t0 = time.perf_counter()
                for _ in range(adds):
                    buf.add(frames, actions, rewards, frames, no, no)
                out[path].append((time.perf_counter() - t0) / adds * 1e3)
                buf.close()
                shutil.rmtree(directory)
    finally:
        buffer_module._PWRITE_MIN_FRAME_BYTES = default_min
    return {"adds": adds, "n_envs": n_envs, "rounds": rounds,
            "ms_per_add_pwrite": statistics.median(out["pwrite"]),
            "ms_per_add_mapping": statistics.median(out["mapping"]), "all": out}


CHECKSUM_MODES = ("background", "commit", "none")
"""(f)'s cases: CRC32s hashed ahead by the background thread (the default), all at commit (the
background hasher stopped: what writeback_s=None does), no checksums (the step skipped)."""


def _checksum_round(directory: Path, mode: str, frames: list[np.ndarray], adds: int,
                    commit_every: int, n_envs: int, pause_ms: float) -> dict:
    """One round of (f): adds + commits into a fresh buffer in ``mode``."""
    actions, rewards, no = _small_fields(n_envs)
    original = ReplayBuffer._updated_checksums
    spent = [0.0]

    def timed(self, w):
        t0 = time.perf_counter()
        try:
            return original(self, w) if mode != "none" else {}
        finally:
            spent[0] += time.perf_counter() - t0

    ReplayBuffer._updated_checksums = timed
    try:
        buf = _frame_buffer(directory, adds, n_envs, writeback_s=2.0)
        if mode != "background":  # a private hook of this benchmark: stop the hasher only
            buf._hasher.stop()
            buf._hasher = None
        commit_s = 0.0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(adds):
            f = frames[i % len(frames)]
            buf.add(f, actions, rewards, f, no, no)
            if pause_ms:
                time.sleep(pause_ms / 1e3)  # the rest of a loop iteration
            if (i + 1) % commit_every == 0:
                t1 = time.perf_counter()
                buf.commit()
                commit_s += time.perf_counter() - t1
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        hasher = buf._hasher
        if hasher is not None:
            hasher.stop()  # close() would; read its CPU time first
        buf.close()
    finally:
        ReplayBuffer._updated_checksums = original
    commits = adds // commit_every
    return {"env_steps_per_s": adds * n_envs / total,
            "ms_per_commit": commit_s / max(commits, 1) * 1e3,
            "checksum_at_commit_s": spent[0] if mode != "none" else 0.0,
            "hasher_cpu_s": hasher.cpu_s if hasher is not None else 0.0,
            "process_cpu_s": cpu, "total_s": total}


def bench_checksum(root: Path, adds: int, commit_every: int, pause_ms: float = 0.0, rounds: int = 3,
                   n_envs: int = 16) -> dict:
    """Env steps/s of adds + commits of n_envs 256x256 frames, checksums hashed in the background,
    at commit, or not at all (alternating rounds, fresh buffers), and the time the hashing took
    (at commit, on the adding thread; the hasher thread's CPU time)."""
    frames = _random_frames(3, 4, n_envs)
    out: dict[str, list[dict]] = {mode: [] for mode in CHECKSUM_MODES}
    for r in range(rounds):
        for mode in CHECKSUM_MODES:
            directory = root / f"checksum_{mode}_{r}"
            out[mode].append(_checksum_round(directory, mode, frames, adds, commit_every, n_envs,
                                             pause_ms))
            shutil.rmtree(directory)

    def med(mode: str, key: str) -> float:
        return statistics.median(row[key] for row in out[mode])

    keys = ("env_steps_per_s", "ms_per_commit", "checksum_at_commit_s", "hasher_cpu_s",
            "process_cpu_s", "total_s")
    return {"adds": adds, "n_envs": n_envs, "commit_every": commit_every, "rounds": rounds,
            "frames_per_commit": commit_every * n_envs, "pause_ms": pause_ms,
            **{f"{key}_{mode}": med(mode, key) for mode in out for key in keys}, "all": out}


def disk_write_mb_s(root: Path, mib: int = 2048) -> float:
    """Sequential write rate of the disk under ``root``: ``mib`` MiB in 1 MiB blocks, then
    fdatasync (the page cache does not flatter it)."""
    path = root / "seq_write.bin"
    block = os.urandom(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(mib):
            os.write(fd, block)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return mib * (1 << 20) / seconds / 1e6


def bench_sustained(root: Path, adds: int, pause_ms: float, writeback_s: float | None,
                    n_envs: int = 16, bucket: int = 150) -> dict:
    """ms per add of n_envs 256x256 frames, sustained over ``adds`` adds paced by ``pause_ms``."""
    pool = _random_frames(3, 4, n_envs)
    actions, rewards, no = _small_fields(n_envs)
    directory = root / f"sustained_{writeback_s}"
    buf = _frame_buffer(directory, adds, n_envs, writeback_s)
    times = []
    t_start = time.perf_counter()
    for i in range(adds):
        t0 = time.perf_counter()
        buf.add(pool[i % 4], actions, rewards, pool[(i + 1) % 4], no, no)
        times.append((time.perf_counter() - t0) * 1e3)
        time.sleep(pause_ms / 1e3)
    elapsed = time.perf_counter() - t_start
    buf.close(commit=False)
    shutil.rmtree(directory)
    buckets = [(lo, statistics.median(times[lo:lo + bucket]),
                float(np.percentile(times[lo:lo + bucket], 90))) for lo in range(0, adds, bucket)]
    return {"writeback_s": writeback_s, "adds": adds, "pause_ms": pause_ms,
            "offered_mb_s": adds * n_envs * FRAME_256 / elapsed / 1e6,
            "median_ms": statistics.median(times), "buckets": buckets}


def rate(fn, seconds: float, min_calls: int = 5) -> float:
    fn()  # warm-up (compiles nothing, but faults pages and spins up threads)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - t0)


WORKERS: list[int] = [1]  # DeviceSampler worker counts to measure (--workers)


def bench_sampling(buf: ReplayBuffer, label: str, batch: int, seconds: float) -> list[dict]:
    import jax

    rows = [{"case": label, "path": "buf.sample (host numpy)", "K": 1, "batch": batch,
             "calls_per_s": rate(lambda: buf.sample(batch), seconds)}]
    for k, workers in [(1, 1), (8, 1)] + [(1, w) for w in WORKERS if w > 1]:
        with DeviceSampler(buf, batch_size=batch, steps_per_call=k, prefetch=2,
                           workers=workers) as sampler:
            def pull():
                jax.block_until_ready(next(sampler))
            path = f"DeviceSampler -> {jax.devices()[0].platform}"
            if workers > 1:
                path += f", {workers} workers"
            rows.append({"case": label, "path": path,
                         "K": k, "batch": batch, "calls_per_s": rate(pull, seconds)})
    for r in rows:
        r["updates_fed_per_s"] = r["calls_per_s"] * r["K"]
        r["transitions_per_s"] = r["updates_fed_per_s"] * batch
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (deleted after)")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--frames", type=int, default=20_000, help="256x256 frames to fill in (a)")
    parser.add_argument("--episode-length", type=int, default=1000, help="steps per episode in (a)")
    parser.add_argument("--reopen-capacity", type=int, default=100_000)
    parser.add_argument("--reopen-shape", type=str, default="256,256,3",
                        help="frame shape of the buffer reopened in (b), e.g. 84,84,3")
    parser.add_argument("--only-reopen", action="store_true", help="run (b) only")
    parser.add_argument("--frames-84", type=int, default=50_000, help="84x84 frames for (c)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    parser.add_argument("--insert-adds", type=int, default=300, help="adds of 16 frames per round in (d)")
    parser.add_argument("--only-insert", action="store_true", help="run (d) only")
    parser.add_argument("--only-sustained", action="store_true", help="run (e) only")
    parser.add_argument("--sustained-adds", type=int, default=2400, help="adds of 16 frames in (e)")
    parser.add_argument("--sustained-pause-ms", type=float, default=10.0,
                        help="pause after each add in (e): the rest of a loop iteration")
    parser.add_argument("--only-checksum", action="store_true", help="run (f) only")
    parser.add_argument("--checksum-adds", type=int, default=200, help="adds of 16 frames per round in (f)")
    parser.add_argument("--checksum-commit-every", type=int, default=50, help="adds between commits in (f)")
    parser.add_argument("--checksum-pause-ms", type=float, default=0.0,
                        help="pause after each add in (f): the rest of a loop iteration")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--workers", type=str, default="1",
                        help="comma-separated DeviceSampler worker counts for extra K=1 rows")
    args = parser.parse_args()
    WORKERS[:] = [int(w) for w in args.workers.split(",")]
    reopen_shape = tuple(int(d) for d in args.reopen_shape.split(","))
    if args.quick:
        args.frames, args.reopen_capacity, args.frames_84, args.seconds = 2000, 5000, 2000, 0.5
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="replay_bench_", dir=args.dir))
    import jax

    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "jax": jax.__version__, "device": str(jax.devices()[0])}}
    if args.quick:
        args.insert_adds = 20
    try:
        if args.only_sustained:
            mem = {k: open(f"/proc/sys/vm/{k}").read().strip() for k in
                   ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes")
                   if os.path.exists(f"/proc/sys/vm/{k}")}
            total = next((line.split()[1] for line in open("/proc/meminfo")
                          if line.startswith("MemTotal")), "?") if os.path.exists("/proc/meminfo") else "?"
            results["vm"] = {**mem, "mem_total_kb": total}
            results["disk_seq_write_mb_s"] = disk_write_mb_s(root)
            results["sustained"] = [bench_sustained(root, args.sustained_adds, args.sustained_pause_ms, wb)
                                    for wb in (2.0, None)]
            print(f"disk: sequential write {results['disk_seq_write_mb_s']:.0f} MB/s; vm {results['vm']}")
            for r in results["sustained"]:
                print(f"\nwriteback_s={r['writeback_s']}: {r['adds']} adds of 16 256x256 frames, "
                      f"{r['pause_ms']:g} ms apart, {r['offered_mb_s']:.0f} MB/s of frames offered, "
                      f"median {r['median_ms']:.2f} ms per add")
                print("| adds | median ms | p90 ms |\n| --- | --- | --- |")
                for lo, med, p90 in r["buckets"]:
                    print(f"| {lo}-{lo + 150} | {med:.2f} | {p90:.2f} |")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
            return
        if args.only_reopen:
            r = results["reopen"] = bench_reopen(root, args.reopen_capacity, reopen_shape)
            print(f"reopen of a verified {r['transitions']:,}-transition buffer of "
                  f"{'x'.join(map(str, r['shape']))} frames ({r['apparent_bytes'] / 1e9:.2f} GB): "
                  f"{r['reopen_s_median']:.2f} s median, {r['reopen_s_max']:.2f} s max (page cache "
                  f"warm), {r['reopen_cold_s']:.2f} s cold (files evicted); create "
                  f"{r['create_s']:.2f} s; first sample {r['first_sample_s_median'] * 1e3:.1f} ms")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
            return
        if args.only_checksum:
            c = results["checksum"] = bench_checksum(root, args.checksum_adds, args.checksum_commit_every,
                                                      args.checksum_pause_ms)
            print(f"## Replay commit checksums, 256x256x3 ({results['machine']['device']}, "
                  f"{os.cpu_count()} CPUs)\n")
            print(f"{c['adds']} adds of {c['n_envs']} envs, a commit every {c['commit_every']} adds "
                  f"({c['frames_per_commit']} frames, {c['frames_per_commit'] * FRAME_256 / 1e6:.0f} MB), "
                  f"{c['pause_ms']:g} ms pause after each add, "
                  f"median of {c['rounds']} alternating rounds\n")
            print("| checksums | env steps/s (adds + commits) | ms per commit | hashing at commit, "
                  "s per round | hasher thread CPU, s per round | process CPU, s per round |")
            print("| --- | --- | --- | --- | --- | --- |")
            for mode in CHECKSUM_MODES:
                print(f"| {mode} | {c[f'env_steps_per_s_{mode}']:,.0f} | "
                      f"{c[f'ms_per_commit_{mode}']:,.1f} | {c[f'checksum_at_commit_s_{mode}']:.3f} | "
                      f"{c[f'hasher_cpu_s_{mode}']:.3f} | {c[f'process_cpu_s_{mode}']:.2f} |")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
            return
        results["insert"] = bench_insert(root, args.insert_adds)
        if args.only_insert:
            i = results["insert"]
            print(f"insert, {i['n_envs']} envs x 256x256x3 per add, fresh pages, median of {i['rounds']} "
                  f"rounds of {i['adds']} adds: pwrite {i['ms_per_add_pwrite']:.2f} ms, mapping "
                  f"{i['ms_per_add_mapping']:.2f} ms per add ({i['ms_per_add_mapping'] / i['ms_per_add_pwrite']:.1f}x)")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
            return
        disk, buf256 = bench_disk(root, args.frames, args.episode_length)
        results["disk"] = disk
        results["reopen"] = bench_reopen(root, args.reopen_capacity, reopen_shape)
        rows = bench_sampling(buf256, "256x256x3, stack 1", 64, args.seconds)
        buf256.close()
        shutil.rmtree(root / "disk")
        pool = np.random.default_rng(1).integers(0, 256, (8, 1, 84, 84, 3), dtype=np.uint8)
        for stack in (1, 3):
            buf84 = ReplayBuffer(root / f"r84_{stack}", capacity=args.frames_84,
                                 observation_shape=(84, 84, 3), action_dim=2, n_envs=1,
                                 frame_stack=stack)
            fill(buf84, args.frames_84, args.episode_length, pool)
            rows += bench_sampling(buf84, f"84x84x3, stack {stack}", 256, args.seconds)
            buf84.close()
        results["sampling"] = rows
    finally:
        shutil.rmtree(root, ignore_errors=True)

    d, r = results["disk"], results["reopen"]
    print(f"## Replay benchmark ({results['machine']['device']}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__})\n")
    print("| disk use, 256x256x3 | value |\n| --- | --- |")
    print(f"| transitions stored (episodes of {d['episode_length']}) | {d['transitions']:,} |")
    print(f"| allocated bytes / transition (st_blocks) | {d['allocated_per_transition']:,.0f} "
          f"({d['ratio_to_frame']:.4f} x 196,608) |")
    print(f"| apparent bytes / transition | {d['apparent_per_transition']:,.0f} |")
    print(f"| fill rate (add, single thread, incl. commits) | "
          f"{d['fill_transitions_per_s']:,.0f} transitions/s |")
    print(f"| reopen {r['capacity']:,}-slot buffer ({r['apparent_bytes'] / 1e9:.1f} GB, verified) | "
          f"{r['reopen_s_median'] * 1e3:.1f} ms median, {r['reopen_s_max'] * 1e3:.1f} ms max, "
          f"{r['reopen_cold_s'] * 1e3:.1f} ms cold |")
    print(f"| create (preallocate) that buffer | {r['create_s']:.2f} s |")
    i = results["insert"]
    print(f"| insert: add of {i['n_envs']} 256x256x3 frames into fresh pages, pwrite / through the "
          f"mapping (same run) | {i['ms_per_add_pwrite']:.2f} / {i['ms_per_add_mapping']:.2f} ms |\n")
    print("| case | path | K | batch | calls/s | updates fed/s | transitions/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in results["sampling"]:
        print(f"| {row['case']} | {row['path']} | {row['K']} | {row['batch']} | "
              f"{row['calls_per_s']:,.1f} | {row['updates_fed_per_s']:,.0f} | "
              f"{row['transitions_per_s']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
