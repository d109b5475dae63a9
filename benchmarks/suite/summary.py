"""Derived numbers of a suite run: learning curves as IQM + 95% CI, final returns, headlines."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.suite.stats import bootstrap_ci, curve_iqm_ci


def learning_curves(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (obs type, level): eval steps, mean wall-clock, IQM and CI at each point."""
    reps = results["settings"]["bootstrap_reps"]
    out = []
    order = list(dict.fromkeys(r["obs"] for r in results["learning"]))  # the suite's order
    keys = sorted({(r["obs"], r["level"]) for r in results["learning"]},
                  key=lambda k: (k[1], order.index(k[0])))
    for obs, level in keys:
        runs = [r for r in results["learning"] if r["obs"] == obs and r["level"] == level]
        steps_sets = [[int(e["step"]) for e in r["eval"]] for r in runs]
        common = sorted(set.intersection(*(set(s) for s in steps_sets)))
        curves = np.array([[next(e["mean_return"] for e in r["eval"] if int(e["step"]) == s)
                            for s in common] for r in runs])
        walls = np.array([[next(e["wall_time_s"] for e in r["eval"] if int(e["step"]) == s)
                           for s in common] for r in runs])
        point, low, high = curve_iqm_ci(curves, reps=reps)
        out.append({
            "obs": obs, "level": level, "seeds": len(runs), "steps": common,
            "wall_s_mean": walls.mean(axis=0).tolist(), "iqm": point.tolist(),
            "ci_low": low.tolist(), "ci_high": high.tolist(),
            "per_seed": curves.tolist(),
            "final": {"step": common[-1] if common else None,
                      "iqm": float(point[-1]) if common else None,
                      "ci": [float(low[-1]), float(high[-1])] if common else None,
                      "wall_s": float(walls[:, -1].mean()) if common else None},
        })
    return out


def aggregate_final(results: dict[str, Any], curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final eval return pooled over levels: IQM with a bootstrap stratified by level."""
    reps = results["settings"]["bootstrap_reps"]
    rows = []
    for obs in dict.fromkeys(c["obs"] for c in curves):
        cols = [np.array(c["per_seed"])[:, -1] for c in curves if c["obs"] == obs and c["steps"]]
        n = min(len(c) for c in cols)
        scores = np.stack([c[:n] for c in cols], axis=1)  # (seeds, levels)
        point, low, high = bootstrap_ci(scores, reps=reps)
        rows.append({"obs": obs, "levels": len(cols), "runs": int(scores.size),
                     "iqm": point, "ci": [low, high]})
    return rows


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    curves = learning_curves(results)
    env = {(r["obs"], r["workers"]): r["steps_per_s"] for r in results["env_throughput"]["rows"]}
    upd = {r["obs"]: r["grad_steps_per_s"] for r in results["update_throughput"]}
    e2e = {r["obs"]: (r.get("steady") or {}).get("env_steps_per_s") for r in results["end_to_end"]
           if "error" not in r}
    return {
        "learning_curves": curves,
        "final_pooled_over_levels": aggregate_final(results, curves) if curves else [],
        "headline": {
            "env_steps_per_s_one_env": {k[0]: v for k, v in env.items() if k[1] == 1},
            "env_steps_per_s_parallel": {f"{k[0]} x{k[1]}": v for k, v in env.items() if k[1] > 1},
            "grad_steps_per_s": upd,
            "train_env_steps_per_s_utd1": e2e,
        },
    }
