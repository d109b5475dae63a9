"""Interquartile mean and stratified percentile-bootstrap confidence intervals, in numpy only.

Definitions follow rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical
Precipice"):

* **IQM** is the 25% trimmed mean of all runs pooled: sort the ``n`` scores, drop
  ``floor(0.25 * n)`` from each end, average the rest. This is exactly
  ``scipy.stats.trim_mean(x, 0.25)``, which rliable calls. *Fractional handling:* when ``n`` is
  not a multiple of 4 no fractional weight is given to the boundary scores; the cut is rounded
  down, so slightly more than the middle 50% is averaged (n=5: the middle 3; n=2 or 3: nothing is
  cut, the IQM is the plain mean). For n=8 (1..8) the cut is 2 per side: mean(3, 4, 5, 6) = 4.5.
* **Stratified bootstrap**: scores form a (runs, tasks) array; each replicate resamples the runs
  of every task (column) independently with replacement, keeping the number of runs per task,
  and recomputes the statistic on the resampled array. Here the tasks are levels (or a single
  column when one setting is summarised on its own: then it is the ordinary bootstrap of seeds).
* **Percentile interval**: the (alpha/2, 1 - alpha/2) percentiles of the replicate statistics
  (``numpy.percentile``, linear interpolation), alpha = 0.05 for a 95% interval.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def trim_count(n: int, proportion: float = 0.25) -> int:
    """How many scores IQM drops from each end of ``n`` sorted scores: ``floor(proportion * n)``."""
    return int(np.floor(proportion * n))


def iqm(scores: np.ndarray | list[float], axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean of ``scores`` (pooled when ``axis`` is None); see the module docstring.

    >>> iqm(range(1, 9))
    4.5
    """
    x = np.asarray(scores, dtype=np.float64)
    if axis is None:
        x = x.reshape(-1)
        axis = 0
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm of an empty set of scores")
    k = trim_count(n)
    kept = np.sort(x, axis=-1)[..., k:n - k]
    out = kept.mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def bootstrap_replicates(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Statistic of ``reps`` stratified resamples of ``scores`` (runs, tasks) (1-d: one task).

    All indices are drawn at once, ``idx = numpy.random.default_rng(seed).integers(0, n_runs,
    size=(reps, n_runs, n_tasks))``; replicate ``r`` is ``scores[idx[r, :, j], j]`` for every task
    ``j``. The resampling is fixed by ``seed`` and can be reproduced by hand (the tests do).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (runs,) or (runs, tasks) with runs >= 1, got {x.shape}")
    n_runs, n_tasks = x.shape
    idx = np.random.default_rng(seed).integers(0, n_runs, size=(reps, n_runs, n_tasks))
    samples = x[idx, np.arange(n_tasks)]  # (reps, n_runs, n_tasks)
    if statistic is iqm:  # vectorised: pooled IQM of each replicate
        return iqm(samples.reshape(reps, -1), axis=1)
    return np.array([statistic(samples[r]) for r in range(reps)])


def bootstrap_ci(
    scores: np.ndarray | list[float],
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point estimate, low, high): the statistic and its (1 - alpha) stratified percentile CI."""
    x = np.asarray(scores, dtype=np.float64)
    point = float(statistic(x if x.ndim == 2 else x[:, None]))
    reps_stat = bootstrap_replicates(x, statistic, reps, seed)
    low, high = np.percentile(reps_stat, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def curve_iqm_ci(curves: np.ndarray, reps: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM and CI at every eval point of ``curves`` (seeds, points): three (points,) arrays."""
    c = np.asarray(curves, dtype=np.float64)
    rows = [bootstrap_ci(c[:, t], iqm, reps, alpha, seed + t) for t in range(c.shape[1])]
    point, low, high = (np.array(v) for v in zip(*rows)) if rows else (np.zeros(0),) * 3
    return point, low, high
