"""The measurements of the suite, one function per report row; each returns plain JSON data.

Component benchmarks are imported from the standalone scripts (``benchmarks/env_throughput.py``,
``benchmarks/update_throughput.py``) rather than copied. Training rows run the real
``dodgerl.train.train`` and read its ``progress.csv`` / ``eval.csv`` / ``TrainResult.timings``.
"""

from __future__ import annotations

import csv
import importlib.util
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.settings import ObsSetting, SuiteSettings, TrainBudget

PHASES = ("act", "env", "insert", "sample", "update", "eval")


def log(message: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", flush=True)


def env_config(obs: ObsSetting, level: int = 1):
    from dodgerl.config import EnvConfig

    return EnvConfig(level=level, obs_mode=obs.obs_mode, image_size=obs.image_size, **obs.env)


# ----------------------------------------------------------------------------------------------
# 1. env throughput


def env_throughput(settings: SuiteSettings) -> dict[str, Any]:
    """Single-env steps/s (best of repeats, via ``env_throughput.measure``), AsyncVectorEnv steps/s
    with n subprocess workers, and a render-only loop of the rasterizer for image sizes."""
    from benchmarks.env_throughput import measure as single_env_rate
    from dodgerl.envs.dodge_env import DodgeEnv

    rows = []
    for obs in settings.env_obs:
        steps = settings.env_steps if obs.obs_mode == "vector" else max(300, settings.env_steps // 3)
        make = lambda obs=obs: DodgeEnv(level=1, obs_mode=obs.obs_mode, image_size=obs.image_size)
        best = max(single_env_rate(make, steps)[0] for _ in range(settings.env_repeats))
        rows.append({"obs": obs.label, "mode": "1 env, in process", "workers": 1,
                     "steps_per_s": best, "timed_steps": steps})
        log(f"env {obs.label}: {best:,.0f} steps/s (one env)")
        for n in settings.parallel_workers:
            rate = parallel_env_rate(obs, n, settings.parallel_steps)
            rows.append({"obs": obs.label, "mode": f"AsyncVectorEnv, {n} workers", "workers": n,
                         "steps_per_s": rate, "timed_steps": n * settings.parallel_steps})
            log(f"env {obs.label}: {rate:,.0f} steps/s ({n} async workers)")
    render = []
    for obs in settings.env_obs:
        if obs.obs_mode == "topdown":
            rate = render_rate(obs.image_size, settings.render_frames)
            render.append({"obs": obs.label, "image_size": obs.image_size, "frames_per_s": rate,
                           "frames": settings.render_frames})
            log(f"render-only {obs.label}: {rate:,.0f} frames/s")
    return {"level": 1, "rows": rows, "render_only": render}


def parallel_env_rate(obs: ObsSetting, n: int, steps: int, seed: int = 0) -> float:
    """Env steps/s summed over ``n`` envs of a gymnasium AsyncVectorEnv (random actions)."""
    import functools

    import gymnasium

    from dodgerl.envs.make import make_env

    # As dodgerl.envs.make.make_vector_env, but workers are spawned, not forked: this process has
    # JAX's threads running, and fork() under threads can deadlock.
    envs = gymnasium.vector.AsyncVectorEnv(
        [functools.partial(make_env, env_config(obs))] * n, context="spawn",
        autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)
    try:
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1, 1, size=(steps, *envs.action_space.shape)).astype(np.float32)
        envs.reset(seed=seed)
        for a in actions[: min(50, steps)]:  # warm-up: workers started, first frames drawn
            envs.step(a)
        start = time.perf_counter()
        for a in actions:
            envs.step(a)
        return n * steps / (time.perf_counter() - start)
    finally:
        envs.close()


def render_rate(image_size: int, frames: int, seed: int = 0) -> float:
    """Frames/s of ``Rasterizer.draw`` alone, on world states recorded from a level-1 episode."""
    from dodgerl.envs.dodge_env import DodgeEnv
    from dodgerl.envs.rasterizer import Rasterizer

    env = DodgeEnv(level=1, obs_mode="vector")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    states = []
    for _ in range(min(frames, 500)):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        s = env.state()
        states.append((np.array(s["player_pos"]), np.array(s["projectile_pos"])))
        if terminated or truncated:
            env.reset()
    raster = Rasterizer(image_size, env.spec_level.projectile_radius)
    for p, q in states[:20]:
        raster.draw(p, q)
    start = time.perf_counter()
    for i in range(frames):
        p, q = states[i % len(states)]
        raster.draw(p, q)
    return frames / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# 2. update throughput


def _agent_overrides(obs: ObsSetting) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obs.agent.items()}


def update_throughput(settings: SuiteSettings) -> list[dict[str, Any]]:
    """Gradient steps/s of one-step (K=1, as at UTD 1 with one env) fp32 updates, through
    ``benchmarks/update_throughput.measure`` at its configured batch sizes (vector 256, images 64)."""
    from benchmarks.update_throughput import measure as update_rate

    rows = []
    for obs in settings.update_obs:
        case = obs.update_case
        r = update_rate(case, 1, False, settings.update_repeats, settings.update_min_steps[case],
                        _agent_overrides(obs))
        r["obs"] = obs.label
        r["agent_overrides"] = obs.agent
        rows.append(r)
        log(f"update {obs.label}: {r['grad_steps_per_s']:.2f} grad steps/s "
            f"(batch {r['batch_size']}, first call {r['first_call_s']:.1f} s)")
    return rows


# ----------------------------------------------------------------------------------------------
# training runs (3. end to end, 4. learning, 5. cost)


def shipped_config(obs_mode: str, level: int) -> dict[str, Any]:
    """The raw config ``experiments/{vector,topdown}_sac.py --level LEVEL`` trains
    (``dodgerl.cli.default_config``)."""
    from dodgerl.cli import default_config
    from dodgerl.config import read_yaml

    return read_yaml(default_config(obs_mode, level))


SHIPPED_TRAIN_KEYS = ("n_envs", "utd", "update_every")
"""What a learning row keeps of the shipped config's ``train`` section (the rest is its budget's)."""


def run_config(obs: ObsSetting, budget: TrainBudget, level: int, seed: int, experiment: str,
               shipped: bool = False):
    """A run of ``obs`` with ``budget``. Without ``shipped``: SACConfig's defaults, one env. With
    it: the shipped config for this level and observation (its env, agent and replay sections
    and its ``SHIPPED_TRAIN_KEYS``: frame stack, n-step returns, parallel envs), at the setting's
    image side. ``obs.batch_size``, ``obs.env`` and ``obs.agent`` go on top of either, and the
    budget sets the steps, the buffer and the evaluations."""
    from dodgerl.config import config_from_dict

    base = shipped_config(obs.obs_mode, level) if shipped else {}
    train = {k: v for k, v in (base.get("train") or {}).items() if k in SHIPPED_TRAIN_KEYS}
    return config_from_dict({
        "experiment": experiment,
        "seed": seed,
        "env": {**(base.get("env") or {}), "level": level, "obs_mode": obs.obs_mode,
                "image_size": obs.image_size, **obs.env},
        "agent": {**(base.get("agent") or {}), "batch_size": obs.batch_size, **obs.agent},
        "replay": {**(base.get("replay") or {}), "buffer_size": budget.buffer_size},
        "train": {
            **train,
            "total_timesteps": budget.total_timesteps, "learning_starts": budget.learning_starts,
            "eval_freq": budget.eval_freq, "eval_episodes": budget.eval_episodes,
            "log_freq": budget.log_freq, "checkpoint_freq": max(budget.total_timesteps, 1),
            "keep_checkpoints": 1, "video": False, "progress_bar": False,
        },
    })


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def du_bytes(path: Path) -> int:
    """Allocated bytes (st_blocks) of every file under ``path``, like ``du -s``."""
    total = 0
    for p in [path, *path.rglob("*")] if path.exists() else []:
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_blocks * 512
    return total


def device_peak_bytes() -> int | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats raise or return None
        stats = None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def steady_window(progress: list[dict[str, float]],
                  phases: tuple[str, ...] = PHASES) -> dict[str, Any] | None:
    """Env steps/s and per-phase seconds between the second and the last progress rows that come
    after the first gradient step, so the update's compilation (billed to the first update) is
    left out. ``phases``: which ``time_<phase>_s`` columns to split the window into (the rest is
    other).

    A row is written once its step's update call is dispatched, not finished: one call runs past
    it (the first, which compiles, is waited for). From the second row on every row has the same
    call in flight, so the window's time covers exactly the calls of its steps; starting at the
    first row would leave the last call out, which in a window of one or two calls (small
    budgets on a CPU) overstates the rate several-fold."""
    rows = [r for r in progress if (r.get("updates") or 0) > 0][1:]
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    wall = b["wall_time_s"] - a["wall_time_s"]
    steps = b["step"] - a["step"]
    split = {p: b[f"time_{p}_s"] - a[f"time_{p}_s"] for p in phases}
    return {"from_step": a["step"], "to_step": b["step"], "steps": steps, "wall_s": wall,
            "env_steps_per_s": steps / wall if wall > 0 else None,
            "updates": b["updates"] - a["updates"], "phases_s": split,
            "other_s": wall - sum(split.values())}


def train_once(config, results_dir: Path) -> dict[str, Any]:
    """One real training run; returns its timings, logs and on-disk sizes."""
    from dodgerl.train import train

    start = time.perf_counter()
    result = train(config, results_dir=results_dir)
    wall = time.perf_counter() - start
    run_dir = Path(result.run_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("*"), key=lambda p: p.name)
    replay_bytes = du_bytes(run_dir / "replay")
    return {
        **run_record(result, config.seed, config.env.level, wall),
        "replay_bytes": replay_bytes, "replay_capacity": config.replay.buffer_size,
        "checkpoint_bytes": du_bytes(ckpts[-1]) if ckpts else None,
        "checkpoint_step": ckpts[-1].name if ckpts else None,
    }


def _e2e_worker(obs: ObsSetting, budget: TrainBudget, queue) -> None:
    """Runs in a fresh (spawned) process so that peak host and device memory are this run's own."""
    try:
        with tempfile.TemporaryDirectory(prefix="dodgerl_bench_") as tmp:
            out = train_once(run_config(obs, budget, 1, 0, "e2e"), Path(tmp))
        out["peak_rss_bytes"] = process_peak_rss_bytes()
        out["device_peak_bytes"] = device_peak_bytes()
        queue.put(out)
    except BaseException:  # noqa: BLE001 - reported by the parent
        queue.put({"error": traceback.format_exc()})


class _ListQueue(list):
    put = list.append


def end_to_end(settings: SuiteSettings) -> list[dict[str, Any]]:
    """A short real training run per obs type (level 1, UTD 1, one env), each in its own process
    (``settings.e2e_in_process``: in this one, so memory peaks are the suite process's)."""
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for obs in settings.e2e_obs:
        budget = settings.e2e_budget[obs.label]
        if settings.e2e_in_process:
            queue = _ListQueue()
            _e2e_worker(obs, budget, queue)
            out = queue[0]
        else:
            queue = ctx.Queue()
            proc = ctx.Process(target=_e2e_worker, args=(obs, budget, queue))
            proc.start()
            out = queue.get()
            proc.join()
        out["own_process"] = not settings.e2e_in_process
        out.update({"obs": obs.label, "batch_size": obs.batch_size, "budget": vars(budget),
                    "agent_overrides": obs.agent})
        if "error" not in out:
            out["steady"] = steady_window(out["progress"])
            frame = (65 * 4) if obs.obs_mode == "vector" else obs.image_size ** 2 * 3
            out["observation_bytes"] = frame
            out["replay_bytes_per_transition"] = out["replay_bytes"] / out["replay_capacity"]
            s = out["steady"]
            log(f"e2e {obs.label}: {out['steps']} steps in {out['wall_s']:.1f} s; steady "
                f"{s['env_steps_per_s'] if s else float('nan'):.2f} env steps/s")
        else:
            log(f"e2e {obs.label} FAILED:\n{out['error']}")
        rows.append(out)
    return rows


def train_seeds_once(config, seeds: list[int], results_dir: Path) -> list[dict[str, Any]]:
    """The seeds of ``config`` trained together in this process (``dodgerl.train.train_seeds``:
    one stacked update, one env pool); per seed what ``train_once`` returns, ``wall_s`` being
    the group's."""
    from dodgerl.train import train_seeds

    start = time.perf_counter()
    group = train_seeds(config, seeds, results_dir=results_dir)
    wall = time.perf_counter() - start
    return [{**run_record(result, seed, config.env.level, wall), "seeds_in_process": len(seeds)}
            for seed, result in zip(seeds, group.runs)]


def run_record(result, seed: int, level: int, wall_s: float) -> dict[str, Any]:
    """What the suite keeps of one finished run: counters, time split, eval and progress rows."""
    run_dir = Path(result.run_dir)
    return {
        "seed": seed, "level": level, "steps": result.step, "updates": result.updates,
        "episodes": result.episodes, "wall_s": wall_s, "timings": result.timings,
        "eval": read_csv(run_dir / "eval.csv"), "progress": read_csv(run_dir / "progress.csv"),
    }


def learning(settings: SuiteSettings, scratch: Path) -> list[dict[str, Any]]:
    """``seeds`` runs per (obs type, level), the seeds of each trained together in one process
    (``train_seeds``); eval curves kept. Each run is the shipped config for its level and
    observation (what ``experiments/*_sac.py --level L`` trains, ``run_config(shipped=True)``),
    at the setting's image side and with its overrides on top."""
    from dodgerl.cli import default_config

    runs = []
    for obs in settings.learning_obs:
        budget = settings.learning_budget[obs.label]
        for level in settings.levels:
            config = run_config(obs, budget, level, 0, "learning", shipped=True)
            outs = train_seeds_once(config, list(range(settings.seeds)), scratch)
            shutil.rmtree(scratch / "learning", ignore_errors=True)
            for seed, out in enumerate(outs):
                out.pop("progress")
                out.update({"obs": obs.label, "budget": vars(budget), "batch_size": obs.batch_size,
                            "agent_overrides": obs.agent,
                            "agent_config": default_config(obs.obs_mode, level).name,
                            "agent": config.agent.to_dict()})
                last = out["eval"][-1]["mean_return"] if out["eval"] else float("nan")
                log(f"learning {obs.label} level {level} seed {seed}: final eval {last:.1f} "
                    f"after {out['steps']} steps, {out['wall_s']:.1f} s ({len(outs)} seeds at once)")
                runs.append(out)
    return runs


def reference_returns(settings: SuiteSettings, eval_seed: int = 1_000_000) -> list[dict[str, Any]]:
    """Random and heuristic policies on each level, episodes on the evaluation seeds."""
    from dodgerl.envs.policies import HeuristicPolicy, RandomPolicy, run_episode
    from dodgerl.envs.make import make_env

    from benchmarks.suite.settings import VECTOR

    rows = []
    for level in settings.levels:
        for name in ("random", "heuristic"):
            env = make_env(env_config(VECTOR, level))
            policy = RandomPolicy(env, seed=0) if name == "random" else HeuristicPolicy(env)
            returns = [run_episode(env, policy, seed=eval_seed + i)[0]
                       for i in range(settings.reference_episodes)]
            env.close()
            rows.append({"level": level, "policy": name, "returns": returns,
                         "mean": float(np.mean(returns)), "episodes": len(returns)})
            log(f"reference level {level} {name}: mean {np.mean(returns):.1f}")
    return rows


# ----------------------------------------------------------------------------------------------
# peer row: stable-baselines3 SAC, when installed


def peer_sb3(settings: SuiteSettings, device: str, ours: list[dict[str, Any]]) -> dict[str, Any]:
    """SB3 SAC on the same env, budget and device as our learning runs (level 1, seed 0)."""
    if importlib.util.find_spec("stable_baselines3") is None:
        return {"available": False,
                "note": "stable-baselines3 is not installed here; the peer row was skipped "
                        "(pip install stable-baselines3 to include it)."}
    try:
        from stable_baselines3 import SAC

        from dodgerl.envs.make import make_env

        rows = []
        for obs in settings.learning_obs:
            budget = settings.learning_budget[obs.label]
            steps = budget.total_timesteps
            if settings.peer_steps is not None:
                steps = min(steps, settings.peer_steps)
            env = make_env(env_config(obs, 1))
            model = SAC("MlpPolicy" if obs.obs_mode == "vector" else "CnnPolicy", env,
                        batch_size=obs.batch_size, buffer_size=budget.buffer_size,
                        # the same warm-up fraction as our run, so the rates are comparable
                        learning_starts=max(1, budget.learning_starts * steps
                                            // budget.total_timesteps), train_freq=1,
                        gradient_steps=1, device="cuda" if device == "gpu" else "cpu", seed=0,
                        verbose=0)
            start = time.perf_counter()
            model.learn(total_timesteps=steps)
            wall = time.perf_counter() - start
            eval_env = make_env(env_config(obs, 1))
            returns = []
            for i in range(budget.eval_episodes):
                o, _ = eval_env.reset(seed=1_000_000 + i)
                total, done = 0.0, False
                while not done:
                    a, _ = model.predict(o, deterministic=True)
                    o, r, term, trunc, _ = eval_env.step(a)
                    total += r
                    done = term or trunc
                returns.append(total)
            mine = [r for r in ours if r["obs"] == obs.label and r["level"] == 1 and r["seed"] == 0]
            our_sps = mine[0]["steps"] / mine[0]["wall_s"] if mine else None
            our_ret = mine[0]["eval"][-1]["mean_return"] if mine and mine[0]["eval"] else None
            sb3_sps = steps / wall
            rows.append({"obs": obs.label, "steps": steps,
                         "dodgerl_steps": mine[0]["steps"] if mine else None, "sb3_wall_s": wall,
                         "sb3_steps_per_s": sb3_sps, "dodgerl_steps_per_s": our_sps,
                         "throughput_ratio": our_sps / sb3_sps if our_sps else None,
                         "sb3_return": float(np.mean(returns)), "dodgerl_return": our_ret})
            log(f"peer SB3 {obs.label}: {sb3_sps:.1f} steps/s, return {np.mean(returns):.1f}")
        import stable_baselines3

        return {"available": True, "version": stable_baselines3.__version__, "rows": rows}
    except Exception:  # noqa: BLE001 - the peer row must never sink the suite
        return {"available": False, "note": "stable-baselines3 run failed: " + traceback.format_exc()}


def host_peak_rss_bytes() -> int:
    """``ru_maxrss`` of this process, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_peak_rss_bytes() -> int:
    """Peak resident memory of this process's own address space: ``VmHWM`` of
    /proc/self/status where there is one, else ``ru_maxrss``. In a spawned worker ``ru_maxrss``
    would report the parent's peak (Linux carries it over fork and exec); VmHWM starts afresh
    at exec, so it is the run's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return host_peak_rss_bytes()
