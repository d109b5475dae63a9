"""Logs of a run: progress.csv and eval.csv (append-only, rewound on resume; their rows also as
TensorBoard scalars), the progress bar
with an ETA from the recent rate, and the pace notice of a pixel run on a machine without an
accelerator."""

from __future__ import annotations

import collections
import csv
import numbers
import os
import struct
import time
from pathlib import Path
from typing import Any

PROGRESS_FIELDS = (
    "step", "episodes", "updates", "train_return", "train_length", "critic_loss", "actor_loss",
    "temperature", "entropy", "q_mean", "env_steps_per_s", "wall_time_s",
    "time_act_s", "time_env_s", "time_insert_s", "time_sample_s", "time_update_s", "time_eval_s",
    "time_checkpoint_s", "time_compile_s",
)
EVAL_FIELDS = (
    "step", "mean_return", "std_return", "min_return", "max_return", "mean_length",
    "episodes", "wall_time_s",
)
METRIC_FIELDS = ("critic_loss", "actor_loss", "temperature", "entropy", "q_mean")
TIMED_PHASES = ("act", "env", "insert", "sample", "update", "eval", "checkpoint", "compile")
"""Cumulative wall-clock seconds of the loop's thread per phase. ``update`` is the update's
dispatch plus the time spent waiting for the device to finish it (with overlap, only the part
the env step did not hide); ``compile`` is the first update call (tracing, compilation, one
run)."""


TENSORBOARD_FLUSH_S = 10
"""Seconds between the event writer's flushes: a kill -9 loses at most these of TensorBoard's
rows (progress.csv and eval.csv flush every row)."""


class CsvLog:
    """An append-only CSV that, on resume, drops rows written after the restored step.

    With ``tensorboard`` (the run's TensorBoard directory), every row written also goes to an
    event file in ``tensorboard/<csv stem>/`` (``progress``, ``eval``: one TensorBoard run
    each), its numbers as scalars ``<stem>/<field>`` at the row's step. On resume the event
    file starts with a purge at the restored step + 1, so TensorBoard drops, as the CSV does,
    what was written after it."""

    def __init__(self, path: Path, fields: tuple[str, ...], resume_step: int | None,
                 tensorboard: Path | None = None) -> None:
        self.path = path
        self.fields = fields
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [  # a row cut short by a crash has missing fields: drop it
                    r for r in csv.DictReader(f)
                    if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= resume_step
                ]
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)
        elif not path.exists():
            with path.open("w", newline="") as f:
                csv.DictWriter(f, fields).writeheader()
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fields)
        self._tensorboard = None
        if tensorboard is not None:
            from tensorboardX import SummaryWriter

            # tensorboardX names a file by the second and the host: a resume within the same
            # second would overwrite the file before it. The nanoseconds make it a new one.
            self._tensorboard = SummaryWriter(
                str(Path(tensorboard) / path.stem), flush_secs=TENSORBOARD_FLUSH_S,
                purge_step=None if resume_step is None else resume_step + 1,
                filename_suffix=f".{time.time_ns()}")

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: row.get(k, "") for k in self.fields})
        self._file.flush()
        if self._tensorboard is not None:
            from tensorboardX.proto.summary_pb2 import Summary

            # One event per row, not one per field as add_scalar writes: a tenth of the cost.
            stem = self.path.stem
            values = [Summary.Value(tag=f"{stem}/{k}", simple_value=float(row[k]))
                      for k in self.fields if k != "step" and _is_number(row.get(k))]
            self._tensorboard.file_writer.add_summary(Summary(value=values), int(row["step"]))

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_tensorboard(directory: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files under ``directory`` (``tag -> [(step, value), ...]`` in
    the order written), with each file's purge applied as TensorBoard applies it (a resumed
    run's restart drops the earlier values of its steps and later). Reads the TFRecord framing
    and checks its CRCs itself; the events are parsed with tensorboardX's protobuf classes."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list[tuple[int, float]]] = {}
    for run in sorted({p.parent for p in Path(directory).rglob("events.out.tfevents.*")}):
        # In the order the run wrote them: by the second in the name, then CsvLog's nanoseconds.
        for path in sorted(run.glob("events.out.tfevents.*"), key=_event_file_order):
            data, offset = path.read_bytes(), 0
            while offset + 12 <= len(data):
                header = data[offset:offset + 8]
                (length,) = struct.unpack("<Q", header)
                (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
                body = data[offset + 12:offset + 12 + length]
                footer = data[offset + 12 + length:offset + 16 + length]
                if header_crc != masked_crc32c(header) or len(footer) < 4:
                    break  # a record cut short by a kill: the rest of the file is unreadable
                if struct.unpack("<I", footer)[0] != masked_crc32c(body):
                    break
                offset += 16 + length
                event = Event.FromString(body)
                if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                    for values in scalars.values():
                        values[:] = [(s, v) for s, v in values if s < event.step]
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _event_file_order(path: Path) -> tuple[int, int]:
    parts = path.name.split(".")  # events.out.tfevents.<seconds>.<host>[.<nanoseconds>]
    return (int(parts[3]) if parts[3].isdigit() else 0, int(parts[-1]) if parts[-1].isdigit() else 0)


def progress_row(state: Any, steps_per_s: float, now: float, timings: dict[str, float],
                 metrics: dict[str, Any], episode_stats: dict[str, Any]) -> dict[str, Any]:
    """A progress.csv row: counters, the latest update's metrics, rate and time split."""
    return {
        "step": state.step, "episodes": state.episodes, "updates": state.updates,
        **episode_stats,
        "env_steps_per_s": round(steps_per_s, 1),
        "wall_time_s": round(state.wall_time(now), 3),
        **{f"time_{k}_s": round(v, 3) for k, v in timings.items()},
        **{k: float(metrics[k]) for k in METRIC_FIELDS if k in metrics},
    }


def eval_log_has(path: Path, step: int) -> bool:
    """Whether eval.csv at ``path`` has a row of ``step``."""
    with Path(path).open(newline="") as f:
        return any(int(r["step"]) == step for r in csv.DictReader(f))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_duration(seconds: float) -> str:
    """``3d 4h``, ``5h 12m``, ``7m 30s``, ``45s``."""
    seconds = max(0.0, seconds)
    days, rest = divmod(int(round(seconds)), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class RecentRate:
    """Env steps per second over about the last ``window_s`` seconds of samples."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, step: int) -> None:
        self._samples.append((now, step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None


class ProgressBar:
    """A tqdm bar of env steps whose rate and ETA come from about the last 30 s, not from tqdm's
    running average (which, after a fast warm-up, promises far too much); refreshed at most every
    ``refresh_s`` seconds."""

    def __init__(self, total: int, initial: int, refresh_s: float = 1.0) -> None:
        from tqdm import tqdm

        self.total = total
        self.refresh_s = refresh_s
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self._postfix: dict[str, str] = {}
        self._rate = RecentRate()
        self._step = initial
        self._last_refresh = 0.0

    def update(self, n: int) -> None:
        self._step += n
        now = time.perf_counter()
        self._rate.add(now, self._step)
        if now - self._last_refresh >= self.refresh_s:
            self._last_refresh = now
            self._set_rate()
            self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(n)

    def _set_rate(self) -> None:
        rate = self._rate.rate()
        if rate is not None:
            self._postfix["sps"] = f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"
            if rate > 0:
                self._postfix["eta"] = format_duration((self.total - self._step) / rate)

    def show(self, eval_return: float | None) -> None:
        """Set the last evaluation's return."""
        self._postfix["eval"] = fmt(eval_return)
        self._bar.set_postfix(self._postfix, refresh=False)

    def close(self) -> None:
        self._bar.close()


class PaceNotice:
    """On a machine without an accelerator, a pixel run prints once, after its first update
    calls, the gradient steps per second it measured and what the whole budget will take at
    that rate, and names what fits this machine instead."""

    MIN_SECONDS = 20.0
    """Update time measured before the notice is printed."""

    def __init__(self, applies: bool, total_timesteps: int) -> None:
        self.pending = applies
        self.total_timesteps = total_timesteps
        self._start: tuple[float, int, int] | None = None  # (time, updates, step) after the compile

    def observe(self, step: int, updates: int, compiled: bool) -> str | None:
        """Called after each update call; returns the notice once it has been measured."""
        if not self.pending or not compiled:
            return None
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, updates, step)
            return None
        t0, updates0, step0 = self._start
        if now - t0 < self.MIN_SECONDS or updates <= updates0:
            return None
        self.pending = False
        grad_per_s = (updates - updates0) / (now - t0)
        env_per_s = (step - step0) / (now - t0)
        remaining = max(self.total_timesteps - step, 0)
        return (f"note: this machine has no accelerator; this pixel run makes {grad_per_s:.2f} "
                f"gradient steps/s ({env_per_s:.2f} env steps/s), so the remaining {remaining:,} "
                f"env steps would take about {format_duration(remaining / max(env_per_s, 1e-9))}. "
                "What fits here: the state-vector configs (experiments/vector_sac.py), a smaller "
                "image (--set env.image_size=64), or a GPU (pip install -e '.[gpu]').")
