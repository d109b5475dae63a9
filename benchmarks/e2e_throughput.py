"""End-to-end training throughput: env steps/s of whole ``dodgerl.train`` runs, with a breakdown.

Each case is a real training run (``dodgerl.train.train``, the code behind
``experiments/*_sac.py``) of a shipped config plus the overrides the case names: parallel envs,
the device replay mirror, the overlapped update, evaluation every 10K steps, checkpoints, the
GIF of the best policy. The rate is counted from the first progress row after the first update
call (so compile time, reported apart, and the random warm-up are excluded) to the last row:

* ``steps/s``: all of it, evaluation and checkpoints included;
* ``steps/s excl. eval+ckpt``: the same window minus the time spent evaluating and checkpointing.

The breakdown (ms per 1000 env steps over the same window) comes from the loop's own timers:
act (fetching the actions from the device), env (``envs.step``), insert (replay add + mirror
sync), sample (drawing indices / taking a prefetched batch), update (dispatch + waiting for the
device beyond what the env step hid), eval, checkpoint. With ``perf.dispatch_thread`` (on for
images on an accelerator) the device calls are made by a background thread: insert and update
then count only the loop thread's part (reading the new frames, submitting, waiting).

The ``sb3_*`` cases run Stable-Baselines3's SAC (when installed) on the same env, image size and
batch, 1 env, UTD 1, and the report gives our rate over theirs, measured in the same run.

    # the headline issue-7 rows on an H200, 4.2 minutes (benchmarks/reports/e2e_h200/run16):
    python benchmarks/e2e_throughput.py --cases sb3_vector,sb3_img256,vector_256envs_evalproc,img256_bf16 \
        --steps 50000 --sb3-steps 1000 --budget-s 200
    # every issue-7 figure in one run (6.3 minutes on an H200: benchmarks/reports/e2e_h200/run31):
    python benchmarks/e2e_throughput.py --cases img256_bf16_evalbg,sb3_img256,vector_64envs_evalproc,sb3_vector,\
        img84_bf16_evalproc_32envs,sb3_img84,vector_256envs_evalproc,img256_bf16 --steps 50000 --sb3-steps 1000 \
        --budget-s 470
    # the same with 84x84 fp32 16 envs (run21, run24: 6.2-6.6 minutes): img84_evalproc for the fifth case
    # 84x84 bf16 with 32 and 64 envs, one process per case (e2e_h200/run32):
    python benchmarks/e2e_throughput.py --cases img84_bf16_evalproc_32envs --steps 50000 --out DIR
    # the same before the v11 checkpoint/evaluation changes, SB3 peers first (e2e_h200/run18):
    python benchmarks/e2e_throughput.py --cases sb3_vector,sb3_img84,sb3_img256,vector_32envs_evalproc,\
        vector_64envs_evalproc,img256_bf16,img84_evalproc,vector_256envs_evalproc --steps 50000 --sb3-steps 1000 --budget-s 430
    # the dispatch thread against the loop's thread, same run (e2e_h200/v10_dispatch_thread):
    python benchmarks/e2e_throughput.py --cases img84_evalproc_nothread,img84_evalproc,img256_bf16_nothread,\
        img256_bf16,vector_256envs_evalproc_nothread,vector_256envs_evalproc --steps 15000
    # earlier H100 figures, runs of 3-7 minutes (benchmarks/reports/e2e_h100/run9, run13):
    python benchmarks/e2e_throughput.py --cases img256_bf16,img84,sb3_img256,sb3_img84 \
        --steps 50000 --sb3-steps 1000 --budget-s 545
    python benchmarks/e2e_throughput.py --cases vector_256envs_evalproc,sb3_vector,vector_256envs_grouped,\
        vector_128envs_evalproc,vector_64envs_evalproc --steps 50000 --sb3-steps 1000 --budget-s 470   # run13
    # how 64 / 128 / 256 envs learn (benchmarks/reports/e2e_h100/learning_n_envs), per mode:
    python benchmarks/e2e_throughput.py --cases "" --learning-seeds 0,1,2,3,4,5,6,7,8,9 \
        --learning-modes fast256 --learning-steps 100000 --learning-eval-freq 10000 --learning-parallel 5
    # does the 84x84 fast setting learn like the shipped DrQ-style config? (e2e_h200/learning_img84)
    python benchmarks/e2e_throughput.py --cases "" --learning-seeds 0,1,2 --learning-modes drq84,drq84_fast32 \
        --learning-steps 150000 --learning-eval-freq 10000 --learning-parallel 6 --learning-timeout-s 420
    python benchmarks/e2e_throughput.py --cases img256,img84,vector --steps 50000 --out DIR
    python benchmarks/e2e_throughput.py --cases cpu_vector --steps 20000       # 2-core CPU

Run directories are deleted after each case (a 256x256 buffer is 19.7 GB); their
``progress.csv`` and ``eval.csv`` are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # update_throughput
from benchmarks.suite.measure import read_csv, steady_window  # noqa: E402
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST_IMG = ["train.n_envs=16", "perf.async_envs=true", "perf.overlap=true"]
# 84x84 with the evaluation in 5 background processes (CPU JAX), the base of the img84_evalproc* cases.
IMG84_EVALPROC = FAST_IMG + ["env.image_size=84", "perf.eval_workers=5", "perf.eval_in_background=true"]
# Vector cases with envs in subprocesses (groups of envs_per_worker), evaluation episodes too,
# evaluations of a CPU copy of the agent in a background thread.
FAST_VEC = ["perf.async_envs=true", "perf.overlap=true", "perf.eval_async_envs=true",
            "perf.eval_in_background=true"]
FAST_VEC_PROC = ["perf.async_envs=true", "perf.overlap=true", "perf.eval_in_background=true"]


def utd1_unless_set(overrides: list[str]) -> list[str]:
    """``overrides`` with ``train.update_every=1`` (an update call per vector-env step) in front,
    unless they set ``train.update_every`` themselves."""
    if any(o.startswith("train.update_every=") for o in overrides):
        return list(overrides)
    return ["train.update_every=1", *overrides]


def envs_in_workers(n_envs: int, envs_per_worker: int) -> list[str]:
    """Overrides for ``n_envs`` training envs stepped by subprocesses of ``envs_per_worker``."""
    return [f"train.n_envs={n_envs}", f"perf.envs_per_worker={envs_per_worker}"]


def fast_vec_proc(n_envs: int, envs_per_worker: int, eval_workers: int = 2) -> list[str]:
    """Overrides of the fastest vector setting: ``n_envs`` envs in subprocesses of
    ``envs_per_worker``, the evaluation in ``eval_workers`` background processes."""
    return FAST_VEC_PROC + envs_in_workers(n_envs, envs_per_worker) + [f"perf.eval_workers={eval_workers}"]


# name: (config file, overrides, description)
CASES: dict[str, tuple[str, list[str], str]] = {
    # Learning keys only: every speed setting is the execution plan's (dodgerl/train/plan.py).
    "img256_plan": ("sac_topdown_seed256_easy.yaml", ["train.n_envs=16", "agent.bf16_encoder=true"],
                    "256x256, 16 envs, bf16 encoder; the machine's plan, no perf override"),
    "img84_plan_32envs": ("sac_topdown_seed256_easy.yaml",
                          ["env.image_size=84", "train.n_envs=32", "agent.bf16_encoder=true"],
                          "84x84, 32 envs, bf16 encoder; the machine's plan, no perf override"),
    "vector_plan_64envs": ("sac_vector_easy.yaml", ["train.n_envs=64"],
                           "65-dim state, batch 256, 64 envs; the machine's plan, no perf override"),
    "img256": ("sac_topdown_seed256_easy.yaml", FAST_IMG,
               "256x256, default config, 16 async envs, overlap, mirror auto"),
    "img256_bf16": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["agent.bf16_encoder=true"],
                    "as img256, bf16 encoder compute"),
    "img256_bf16_nothread": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["agent.bf16_encoder=true", "perf.dispatch_thread=false"],
                             "as img256_bf16, device calls from the loop's thread (before v10)"),
    "img256_bf16_if1": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["agent.bf16_encoder=true", "perf.updates_in_flight=1"],
                        "as img256_bf16, one update in flight (wait for it before queuing the next)"),
    "img256_bf16_evalbg": ("sac_topdown_seed256_easy.yaml",
                           FAST_IMG + ["agent.bf16_encoder=true", "perf.eval_in_background=true",
                                       "perf.eval_on_device=true", "perf.eval_async_envs=true"],
                           "as img256_bf16, evaluations of a device copy in a background thread, episodes "
                           "in subprocesses"),
    "img256_bf16_evalbg_nowb": ("sac_topdown_seed256_easy.yaml",
                                FAST_IMG + ["agent.bf16_encoder=true", "perf.eval_in_background=true",
                                            "perf.eval_on_device=true", "perf.eval_async_envs=true",
                                            "perf.writeback_s=0"],
                                "as img256_bf16_evalbg, without the replay's background writeback"),
    "img256_utd2": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["agent.bf16_encoder=true", "train.utd=2"],
                    "as img256_bf16, UTD 2"),
    "img256_utd2_evalbg": ("sac_topdown_seed256_easy.yaml",
                           FAST_IMG + ["agent.bf16_encoder=true", "perf.eval_in_background=true",
                                       "perf.eval_on_device=true", "perf.eval_async_envs=true", "train.utd=2"],
                           "as img256_bf16_evalbg, UTD 2 (the issue's stretch)"),
    "img84": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["env.image_size=84"],
              "84x84, default config otherwise, 16 async envs, overlap"),
    "img84_evalproc": ("sac_topdown_seed256_easy.yaml", IMG84_EVALPROC,
                       "as img84, the evaluation in 5 background processes of 2 episodes (CPU JAX)"),
    "img84_evalproc_conv": ("sac_topdown_seed256_easy.yaml", IMG84_EVALPROC + ["agent.impl.conv_gemm=false"],
                            "as img84_evalproc, the convs as cuDNN convolutions (before v15)"),
    "img84_evalproc_nothread": ("sac_topdown_seed256_easy.yaml", IMG84_EVALPROC + ["perf.dispatch_thread=false"],
                                "as img84_evalproc, device calls from the loop's thread (before v10)"),
    "img84_bf16": ("sac_topdown_seed256_easy.yaml", FAST_IMG + ["env.image_size=84", "agent.bf16_encoder=true"],
                   "as img84, bf16 encoder compute"),
    "img84_bf16_evalproc": ("sac_topdown_seed256_easy.yaml", IMG84_EVALPROC + ["agent.bf16_encoder=true"],
                            "as img84_evalproc, bf16 encoder compute"),
    "img84_bf16_evalproc_32envs": ("sac_topdown_seed256_easy.yaml",
                                   IMG84_EVALPROC + ["agent.bf16_encoder=true", *envs_in_workers(32, 2)],
                                   "as img84_bf16_evalproc, 32 envs in 16 processes of 2 (32 gradient steps per call)"),
    "img84_bf16_evalproc_64envs": ("sac_topdown_seed256_easy.yaml",
                                   IMG84_EVALPROC + ["agent.bf16_encoder=true", *envs_in_workers(64, 4)],
                                   "as img84_bf16_evalproc, 64 envs in 16 processes of 4 (64 gradient steps per call)"),
    "img84_evalproc_32envs": ("sac_topdown_seed256_easy.yaml", IMG84_EVALPROC + envs_in_workers(32, 2),
                              "as img84_evalproc, 32 envs in 16 processes of 2 (32 gradient steps per call)"),
    "vector": ("sac_vector_easy.yaml", ["train.n_envs=16", "perf.overlap=true", "perf.eval_async_envs=true"],
               "65-dim state, batch 256, 16 in-process envs, overlap"),
    "vector_64envs": ("sac_vector_easy.yaml", ["train.n_envs=64", "perf.overlap=true", "perf.eval_async_envs=true"],
                      "65-dim state, batch 256, 64 in-process envs (64 gradient steps per call), overlap"),
    "vector_128envs": ("sac_vector_easy.yaml", ["train.n_envs=128", "perf.overlap=true", "perf.eval_async_envs=true"],
                       "65-dim state, batch 256, 128 in-process envs (128 gradient steps per call), overlap"),
    "vector_128envs_grouped": ("sac_vector_easy.yaml", FAST_VEC + ["train.n_envs=128", "perf.envs_per_worker=8"],
                               "65-dim state, batch 256, 128 envs in 16 subprocesses of 8 (128 gradient "
                               "steps per call), overlap"),
    "vector_256envs_grouped": ("sac_vector_easy.yaml", FAST_VEC + ["train.n_envs=256", "perf.envs_per_worker=16"],
                               "65-dim state, batch 256, 256 envs in 16 subprocesses of 16 (256 gradient "
                               "steps per call), overlap"),
    "vector_256envs_grouped_eval_here": (
        "sac_vector_easy.yaml", FAST_VEC + ["train.n_envs=256", "perf.envs_per_worker=16",
                                            "perf.eval_async_envs=false"],
        "as vector_256envs_grouped, the background evaluation's episodes stepped in its thread"),
    # Evaluation in its own processes (each a CPU JAX runtime) in the background: no GIL shared
    # with the loop. Workers split the 10 episodes.
    "vector_256envs_evalproc": ("sac_vector_easy.yaml", fast_vec_proc(256, 16),
                                "as vector_256envs_grouped, the background evaluation in 2 processes of 5 episodes"),
    "vector_256envs_evalproc_nothread": ("sac_vector_easy.yaml", fast_vec_proc(256, 16) + ["perf.dispatch_thread=false"],
                                         "as vector_256envs_evalproc, device calls from the loop's thread (before v10)"),
    "vector_256envs_evalproc5": ("sac_vector_easy.yaml", fast_vec_proc(256, 16, eval_workers=5),
                                 "as vector_256envs_grouped, the background evaluation in 5 processes of 2 episodes"),
    "vector_128envs_evalproc": ("sac_vector_easy.yaml", fast_vec_proc(128, 8),
                                "as vector_128envs_grouped, the background evaluation in 2 processes of 5 episodes"),
    "vector_64envs_evalproc": ("sac_vector_easy.yaml", fast_vec_proc(64, 4),
                               "65-dim state, batch 256, 64 envs in 16 subprocesses of 4, the background "
                               "evaluation in 2 processes of 5 episodes"),
    "vector_32envs_evalproc": ("sac_vector_easy.yaml", fast_vec_proc(32, 2),
                               "65-dim state, batch 256, 32 envs in 16 subprocesses of 2, the background "
                               "evaluation in 2 processes of 5 episodes"),
    "vector_16envs_evalproc": ("sac_vector_easy.yaml", fast_vec_proc(16, 1),
                               "65-dim state, batch 256, 16 envs in 16 subprocesses, the background "
                               "evaluation in 2 processes of 5 episodes"),
    "img256_plain": ("sac_topdown_seed256_easy.yaml",
                     ["train.n_envs=1", "perf.overlap=false", "perf.device_mirror=false"],
                     "256x256, default config, the plain loop: 1 env, no overlap, host sampler"),
    "cpu_vector": ("sac_vector_easy.yaml", ["train.n_envs=1", "train.update_every=8", "perf.overlap=true"],
                   "65-dim state, batch 256, 1 env, 8 env steps per 8-step update call"),
    "cpu_vector_plain": ("sac_vector_easy.yaml", ["train.n_envs=1", "perf.overlap=false"],
                         "65-dim state, batch 256, the plain loop: 1 env, an update call per step"),
}
# Many seeds in one process (dodgerl.train.train_seeds) against one seed alone: the same config,
# 16 envs per seed; a case's figure is the env steps/s summed over its seeds.
SEED_CASES: dict[str, int] = {}
for _base, _file, _overrides, _text, _counts in (
        ("img84_drq", "sac_topdown_drq84_easy.yaml", [],
         "84x84, 3 frames + shift (the drq84 config), 16 envs per seed", (1, 5)),
        ("img256", "sac_topdown_seed256_easy.yaml", ["train.n_envs=16", "agent.bf16_encoder=true"],
         "256x256, 16 envs per seed, bf16 encoder", (1, 3)),
        ("vector", "sac_vector_easy.yaml", ["train.n_envs=16"],
         "65-dim state, set encoder, batch 256, 16 envs per seed, update_every 8", (1, 10)),
        ("shipped256", "sac_topdown_cnn_easy.yaml", [],
         "the main command's config: 256x256 pooled by 3 in the network, 3 frames + shift, "
         "LayerNorm-tanh trunk of 50, 3-step returns, 16 envs per seed", (1, 3)),
        ("shipped84", "sac_topdown_cnn_easy.yaml", ["env.image_size=84"],
         "the main command's config at 84x84, 16 envs per seed", (1, 5))):
    for _n in _counts:
        SEED_CASES[f"{_base}_seeds{_n}"] = _n
        CASES[f"{_base}_seeds{_n}"] = (_file, _overrides, f"{_text}; {_n} seed(s) in one process")

# The vector cases measure the MLP agent, one update call per vector-env step unless they say
# otherwise: the network of SB3's MlpPolicy peer and the settings of every published figure
# (sac_vector_easy.yaml has since moved to the set encoder, which learns the dodge levels faster
# and updates slower on a CPU, and to update_every 8).
for _name, (_file, _overrides, _text) in list(CASES.items()):
    if _file == "sac_vector_easy.yaml" and _name not in SEED_CASES:
        CASES[_name] = (_file, ["agent.vector_encoder=mlp", *utd1_unless_set(_overrides)], _text)


# Peer cases: Stable-Baselines3 SAC on the same env, image size and batch, 1 env, UTD 1
# (train_freq 1, gradient_steps 1), its own defaults otherwise (CnnPolicy: one encoder per network).
# name: (config file whose env and batch size it takes, env overrides, description)
SB3_CASES: dict[str, tuple[str, list[str], str]] = {
    "sb3_img256": ("sac_topdown_seed256_easy.yaml", [], "Stable-Baselines3 SAC CnnPolicy, 256x256, batch 64, 1 env"),
    "sb3_img84": ("sac_topdown_seed256_easy.yaml", ["env.image_size=84"],
                  "Stable-Baselines3 SAC CnnPolicy, 84x84, batch 64, 1 env"),
    "sb3_vector": ("sac_vector_easy.yaml", [], "Stable-Baselines3 SAC MlpPolicy, vector, batch 256, 1 env"),
    "sb3_img84_drq": ("sac_topdown_drq84_easy.yaml", [],
                      "Stable-Baselines3 SAC CnnPolicy, 84x84, 3 stacked frames, batch 64, 1 env"),
    "sb3_shipped256": ("sac_topdown_cnn_easy.yaml", [],
                       "Stable-Baselines3 SAC CnnPolicy on the main command's env: 256x256, 3 stacked frames, batch 64, 1 env"),
    "sb3_shipped84": ("sac_topdown_cnn_easy.yaml", ["env.image_size=84"],
                      "Stable-Baselines3 SAC CnnPolicy on the main command's env at 84x84: 3 stacked frames, batch 64, 1 env"),
}


def _env_and_batch(config_file: str, overrides: list[str]) -> tuple[str, list[str]]:
    """What a case and a peer must share to be compared: the config file and the overrides of
    its env and batch size."""
    return config_file, sorted(o for o in overrides if o.startswith(("env.", "agent.batch_size=")))


def peer_compares(case: str, peer: str) -> bool:
    """Whether our case ``case`` runs on the env, image size and batch of the SB3 peer ``peer``
    (derived from both cases' configs, so a new case is compared without being listed)."""
    file, overrides, _ = CASES[case]
    peer_file, peer_overrides, _ = SB3_CASES[peer]
    return _env_and_batch(file, overrides) == _env_and_batch(peer_file, peer_overrides)


# The loop's timers split into the breakdown columns (the suite's phases plus checkpoints).
E2E_PHASES = ("act", "env", "insert", "sample", "update", "eval", "checkpoint")


def window_row(progress: list[dict], step: float) -> float:
    """The wall_time_s of the progress row of ``step``."""
    return next(float(r["wall_time_s"]) for r in progress if float(r["step"]) == float(step))


class GpuBusy:
    """``nvidia-smi``'s utilization.gpu (the share of the sample period in which a kernel ran),
    sampled every 200 ms while the case runs; None without nvidia-smi. A coarse figure: a
    kernel that keeps few SMs busy counts as busy."""

    def __enter__(self) -> GpuBusy:
        import subprocess

        self.samples: list[tuple[float, float]] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
            import threading

            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def mean(self, t0: float, t1: float) -> float | None:
        """Mean utilization (0..1) of the samples between ``t0`` and ``t1`` (perf_counter)."""
        inside = [u for t, u in self.samples if t0 <= t <= t1]
        return round(sum(inside) / len(inside) / 100, 3) if inside else None


def measure(name: str, steps: int, workdir: Path, out: Path, extra: list[str]) -> dict:
    from dodgerl.config import apply_overrides, config_from_dict, read_yaml
    from dodgerl.train import train

    config_file, overrides, description = CASES[name]
    raw = read_yaml(CONFIGS / config_file)
    raw["experiment"] = f"e2e_{name}"
    overrides = overrides + ["train.progress_bar=false", "train.log_freq=1000"] + extra
    config = config_from_dict(apply_overrides(raw, overrides))
    total = config.train.learning_starts + steps
    n_seeds = SEED_CASES.get(name)
    t0 = time.perf_counter()
    with GpuBusy() as busy:
        if n_seeds is None:
            result = train(config, results_dir=workdir, total_timesteps=total)
        else:  # seed 0's run directory: every seed's rows are those of the same steps and times
            from dodgerl.train import train_seeds

            group = train_seeds(config, list(range(n_seeds)), results_dir=workdir,
                                total_timesteps=total)
            result = group.runs[0]
    wall = time.perf_counter() - t0
    ceiling = update_ceiling(config)
    plan = json.loads((result.run_dir / "plan.json").read_text())
    progress = read_csv(result.run_dir / "progress.csv")
    evals = read_csv(result.run_dir / "eval.csv")
    case_out = out / name
    case_out.mkdir(parents=True, exist_ok=True)
    for f in ("progress.csv", "eval.csv", "config.yaml", "plan.json"):
        shutil.copy(result.run_dir / f, case_out / f)
    shutil.rmtree(result.run_dir if n_seeds is None else group.group_dir, ignore_errors=True)

    window = steady_window(progress, E2E_PHASES)
    if window is None:
        raise SystemExit(f"{name}: fewer than 2 progress rows after the first update; "
                         "give more --steps (rows are written every 1000 env steps)")
    n, wall_window = int(window["steps"]), window["wall_s"]
    run_start = result.started_at  # rows record wall time since then (a new run: no offset)
    eval_ckpt = window["phases_s"]["eval"] + window["phases_s"]["checkpoint"]
    per_k = {k: round(1000 * 1000 * v / n, 1) for k, v in window["phases_s"].items()}
    seeds = n_seeds or 1
    return {
        "case": name,
        "seeds": seeds,
        "env_steps_per_s_per_seed": round(n / wall_window, 1),
        "description": description,
        "config": config_file,
        "overrides": overrides,
        "impl_options": dataclasses.asdict(config.agent.impl),
        "plan": plan,
        "env_steps_timed": n,
        "window_s": round(wall_window, 2),
        "env_steps_per_s": round(seeds * n / wall_window, 1),
        "env_steps_per_s_excl_eval_ckpt": round(seeds * n / (wall_window - eval_ckpt), 1),
        "compile_s": round(progress[-1]["time_compile_s"], 2),
        "warmup_steps": config.train.learning_starts,
        "gradient_steps": int(progress[-1]["updates"]),
        "ms_per_1000_steps": per_k,
        "ms_per_1000_steps_other": round(1000 * 1000 * window["other_s"] / n, 1),
        "run_wall_s": round(wall, 1),
        "update_only_steps_per_s": ceiling,
        "fraction_of_update_ceiling": (round(n / wall_window * config.train.utd / ceiling, 3)
                                       if ceiling and seeds == 1 else None),
        "gpu_busy": busy.mean(run_start + window_row(progress, window["from_step"]),
                              run_start + window_row(progress, window["to_step"])),
        "eval": [(int(r["step"]), float(r["mean_return"])) for r in evals],
    }


def measure_sb3(name: str, steps: int, out: Path, warmup: int = 1000) -> dict:
    """Env steps/s of Stable-Baselines3 SAC learning on the same env: ``warmup`` random steps, then
    ``steps`` steps with one gradient step each, timed by a callback from the first update on.
    The replay buffer holds ``warmup + steps`` transitions (its size does not change the rate)."""
    import stable_baselines3
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from dodgerl.config import apply_overrides, config_from_dict, read_yaml
    from dodgerl.envs.make import make_env

    config_file, overrides, description = SB3_CASES[name]
    config = config_from_dict(apply_overrides(read_yaml(CONFIGS / config_file), overrides))
    image = config.env.obs_mode != "vector"

    class Clock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            if self.num_timesteps >= warmup and self.num_timesteps % 100 == 0:
                self.marks.append((self.num_timesteps, time.perf_counter()))
            return True

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SAC("CnnPolicy" if image else "MlpPolicy", make_env(config.env),
                batch_size=config.agent.batch_size, buffer_size=warmup + steps + 1,
                learning_starts=warmup, train_freq=1, gradient_steps=1,
                policy_kwargs={"net_arch": list(config.agent.net_arch)},
                device=device, seed=0, verbose=0)
    clock = Clock()
    t0 = time.perf_counter()
    model.learn(total_timesteps=warmup + steps, callback=clock)
    wall = time.perf_counter() - t0
    (first_step, first_t), (last_step, last_t) = clock.marks[1], clock.marks[-1]
    rate = (last_step - first_step) / (last_t - first_t)
    result = {"case": name, "description": description, "config": config_file,
              "overrides": overrides, "sb3": stable_baselines3.__version__,
              "torch": torch.__version__, "device": device,
              "env_steps_timed": last_step - first_step, "window_s": round(last_t - first_t, 2),
              "env_steps_per_s": round(rate, 2), "run_wall_s": round(wall, 1)}
    case_out = out / name
    case_out.mkdir(parents=True, exist_ok=True)
    (case_out / "sb3.json").write_text(json.dumps(result, indent=1))
    return result


def sb3_table(peers: list[dict], by_name: dict[str, dict]) -> str:
    lines = ["| peer | SB3 env steps/s | timed steps | ours | our env steps/s | ratio (ours / SB3) |",
             "| --- " * 6 + "|"]
    for p in peers:
        # One row per case of ours on the same env, image size and batch that this run measured.
        for mine in [r for c, r in by_name.items() if peer_compares(c, p["case"])] or [None]:
            ratio = f"**{mine['env_steps_per_s'] / p['env_steps_per_s']:.0f}x**" if mine else "-"
            lines.append(f"| {p['case']} (SB3 {p['sb3']}, torch {p['torch']}, {p['device']}) "
                         f"| {p['env_steps_per_s']:.1f} | {p['env_steps_timed']} "
                         f"| {mine['case'] if mine else '-'} | {mine['env_steps_per_s'] if mine else '-'} | {ratio} |")
    return "\n".join(lines)


# 1 env with the plain loop's data: overlap, an update call every 8 env steps, the device mirror.
FAST_1ENV = ["perf.overlap=true", "train.update_every=8", "perf.device_mirror=true"]

LEARNING_MODES = {
    # Same config (sac_vector_easy.yaml, n_envs 1), same seeds; only the loop's fast-path switches differ.
    "plain": ["perf.overlap=false", "train.update_every=1", "perf.device_mirror=false"],
    "fast": FAST_1ENV,
    # The fastest vector setting (case vector_256envs_evalproc): 256 envs, still UTD 1, so 256
    # gradient steps per call and every env only ~400 steps into its episodes after 100K steps.
    "fast256": ["perf.device_mirror=true", *fast_vec_proc(256, 16)],
    "fast128": ["perf.device_mirror=true", *fast_vec_proc(128, 8)],
    # 1 env, but the update schedule of 256 envs: 256 gradient steps every 256 env steps (the same
    # policy lag, full-depth episodes): tells the lag apart from the many-envs data.
    "lag256": ["perf.overlap=true", "perf.device_mirror=true", "train.update_every=256"],
    "fast64": ["perf.device_mirror=true", *fast_vec_proc(64, 4)],
    "fast32": ["perf.device_mirror=true", *fast_vec_proc(32, 2)],
    # Level-2 exploration (the shipped config's learning is far from issue 5's target there): the
    # "fast" loop (1 env, the plain loop's data) with n-step returns and/or two gradient steps
    # per env step.
    "fast_nstep3": [*FAST_1ENV, "replay.n_step=3"],
    "fast_utd2": [*FAST_1ENV, "train.utd=2"],
    "fast_nstep3_utd2": [*FAST_1ENV, "replay.n_step=3", "train.utd=2"],
}
# Modes that do not name an update schedule make an update call per vector-env step (UTD 1).
LEARNING_MODES = {mode: utd1_unless_set(overrides) for mode, overrides in LEARNING_MODES.items()}

# Pixel modes: experiments/topdown_sac.py with ``--config`` this file (under configs/) plus the
# overrides; the modes above run experiments/vector_sac.py with its default config for the level.
# The DrQ-style config already makes an update call per vector-env step (UTD 1, update_every 1).
# name: (config file, overrides)
IMAGE_LEARNING_MODES: dict[str, tuple[str, list[str]]] = {
    # The shipped 84x84 config as is: 3 stacked frames, random shifts, 16 envs in 16 subprocesses,
    # fp32, the evaluation in the loop.
    "drq84": ("sac_topdown_drq84_easy.yaml", []),
    # The same + the 84x84 fast setting (case img84_bf16_evalproc_32envs): 32 envs in 16
    # subprocesses of 2 (32 gradient steps per update call), the evaluation in 5 background
    # processes (CPU JAX), bf16 encoder compute.
    "drq84_fast32": ("sac_topdown_drq84_easy.yaml",
                     [*envs_in_workers(32, 2), "perf.eval_workers=5", "perf.eval_in_background=true",
                      "agent.bf16_encoder=true"]),
    # Its two parts apart, to tell which (if either) changes learning: bf16 alone (16 envs, the
    # evaluation in the loop, as shipped), and 32 envs with background evaluation in fp32.
    "drq84_bf16": ("sac_topdown_drq84_easy.yaml", ["agent.bf16_encoder=true"]),
    "drq84_32envs": ("sac_topdown_drq84_easy.yaml",
                     [*envs_in_workers(32, 2), "perf.eval_workers=5", "perf.eval_in_background=true"]),
}
LEARNING_MODES.update({mode: overrides for mode, (_, overrides) in IMAGE_LEARNING_MODES.items()})


LEARNING_COLORS = {"plain": "tab:blue", "fast": "tab:orange", "fast256": "tab:green", "fast128": "tab:purple",
                   "fast64": "tab:red", "lag256": "tab:brown", "fast32": "tab:pink",
                   "drq84": "tab:blue", "drq84_fast32": "tab:red", "drq84_bf16": "tab:olive",
                   "drq84_32envs": "tab:cyan",
                   "drq84_h100": "tab:gray"}  # earlier drq84 runs, for reference (e2e_h200/learning_img84)
# Drawn dashed in the per-seed plot: the shipped settings the other modes are compared with.
LEARNING_BASELINES = ("plain", "drq84")


def learning_obs(modes) -> str:
    """What the learning modes ``modes`` observe, for plot titles (a mode named after a pixel
    mode, e.g. drq84_h100 for earlier drq84 runs drawn for reference, observes pixels too)."""
    image = [any(m == i or m.startswith(f"{i}_") for i in IMAGE_LEARNING_MODES) for m in modes]
    return "84x84 pixels" if all(image) else "vector obs" if not any(image) else "vector obs and pixels"


def learning_command(mode: str, seed: int, steps: int, results: Path, level: int = 1,
                     eval_freq: int = 5000, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line of one learning run: experiments/vector_sac.py (the level's default
    config) for the vector modes, experiments/topdown_sac.py with the mode's config file for the
    pixel modes; then the mode's overrides and ``extra`` (e.g. a short smoke run's)."""
    root = Path(__file__).resolve().parents[1]
    image = IMAGE_LEARNING_MODES.get(mode)
    cmd = [sys.executable, str(root / "experiments" / ("topdown_sac.py" if image else "vector_sac.py")),
           "--level", str(level), "--seed", str(seed), "--total-timesteps", str(steps),
           "--results-dir", str(results)]
    if image:
        cmd += ["--config", str(CONFIGS / image[0])]
    cmd += ["--set", "train.progress_bar=false", "--set", f"train.eval_freq={eval_freq}",
            "--set", "train.video=false"]
    for o in [*LEARNING_MODES[mode], *extra]:
        cmd += ["--set", o]
    return cmd


def learning(out: Path, seeds: list[int], steps: int, level: int = 1, modes: list[str] | None = None,
             eval_freq: int = 5000, parallel: int | None = None, timeout_s: float | None = None,
             extra: list[str] | tuple[str, ...] = (), grace_s: float = 90.0) -> dict:
    """Eval curves of the learning modes (the plain loop and the fast path(s), vector obs or
    pixels: ``learning_command``), runs in parallel processes (at most ``parallel`` at a time),
    ``extra`` overrides for every run. Runs still going ``timeout_s`` after the start get SIGTERM
    (they checkpoint and stop): their curves end where they were (``steps_reached``); one still
    going ``grace_s`` after that is killed, so learning.json is always written."""
    import signal
    import subprocess

    t_start = time.perf_counter()

    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    modes = list(LEARNING_MODES) if modes is None else modes
    procs = []
    for mode in modes:
        for seed in seeds:
            while parallel is not None and sum(p[3].poll() is None for p in procs) >= parallel:
                time.sleep(1)
            results = out / "learning" / mode / f"seed{seed}"
            cmd = learning_command(mode, seed, steps, results, level=level, eval_freq=eval_freq, extra=extra)
            log = (out / "learning" / f"{mode}_seed{seed}.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            procs.append((mode, seed, results, subprocess.Popen(cmd, stdout=log.open("w"),
                                                               stderr=subprocess.STDOUT, env=env)))
    while timeout_s is not None and any(p[3].poll() is None for p in procs):
        if time.perf_counter() - t_start > timeout_s:
            for p in procs:
                if p[3].poll() is None:
                    p[3].send_signal(signal.SIGTERM)
            stop_by = time.perf_counter() + grace_s
            while any(p[3].poll() is None for p in procs) and time.perf_counter() < stop_by:
                time.sleep(1)
            for p in procs:
                if p[3].poll() is None:
                    print(f"{p[0]} seed {p[1]}: still going {grace_s:.0f} s after SIGTERM, killed", flush=True)
                    p[3].kill()
            break
        time.sleep(1)
    curves: dict = {}
    for mode, seed, results, proc in procs:
        rc = proc.wait()
        runs = sorted(results.glob("*/*/eval.csv"))
        if not runs or (rc != 0 and timeout_s is None):
            curves.setdefault(mode, {})[seed] = {"error": f"exit {rc}"}
            continue
        rows = read_csv(runs[-1])
        prog = read_csv(runs[-1].parent / "progress.csv")
        # Env steps done: the last progress row, or the checkpoint a stopped run saved after it.
        reached = [int(prog[-1]["step"])] if prog else []
        reached += [int(d.name) for d in runs[-1].parent.glob("checkpoints/*") if d.name.isdigit()]
        curves.setdefault(mode, {})[seed] = {
            "eval": [(int(r["step"]), float(r["mean_return"])) for r in rows],
            "wall_s": float(prog[-1]["wall_time_s"]) if prog else None,
            "steps_reached": max(reached, default=None),
            "exit": rc,
        }
        for big in runs[-1].parent.glob("replay"):
            shutil.rmtree(big, ignore_errors=True)
    configs = {m: IMAGE_LEARNING_MODES[m][0] if m in IMAGE_LEARNING_MODES else f"vector_sac.py level {level}"
               for m in modes}
    (out / "learning.json").write_text(json.dumps({"modes": {m: LEARNING_MODES[m] for m in modes}, "configs": configs,
                                                   "extra": list(extra), "level": level,
                                                   "steps": steps, "curves": curves}, indent=1))
    return curves


def plot_learning(json_path: Path, png: Path) -> str:
    """Eval return vs env steps of both modes, every seed drawn; returns a markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = LEARNING_COLORS
    curves = {mode: {seed: c for seed, c in per_seed.items() if "eval" in c}
              for mode, per_seed in data["curves"].items()}
    # Columns: the evaluations of the longest run (runs stopped by --learning-timeout-s end early).
    first = max((c for per_seed in curves.values() for c in per_seed.values()), key=lambda c: len(c["eval"]))
    rows = ["| mode | seed | " + " | ".join(str(s) for s, _ in first["eval"]) + " | wall s |"]
    rows.append("| --- " * (len(rows[0].split("|")) - 2) + "|")
    for mode, per_seed in curves.items():
        for seed, c in sorted(per_seed.items()):
            steps, rets = zip(*c["eval"])
            ax.plot(steps, rets, color=colors.get(mode), alpha=0.8, marker="o", ms=3,
                    label=f"{mode} (seed {seed})", linestyle="--" if mode in LEARNING_BASELINES else "-")
            cells = [f"{r:.0f}" for r in rets] + ["-"] * (len(first["eval"]) - len(rets))
            rows.append(f"| {mode} | {seed} | " + " | ".join(cells) + f" | {c['wall_s']:.0f} |")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval mean return (10 episodes)")
    ax.set_title(f"{learning_obs(curves)}, level {data['level']}: {' vs '.join(curves)}, same config and seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return "\n".join(rows)


def best_by(runs: list[list[tuple[int, float]]], step: int, freq: int) -> list[float]:
    """The best eval return up to ``step`` of each run that got there, best first. An evaluation
    counts as at ``step`` within half the eval frequency ``freq`` of it (runs with many envs
    evaluate at the first log after each multiple of the frequency)."""
    return sorted((max(ret for s, ret in r if s <= step + freq / 2) for r in runs
                   if r and r[-1][0] >= step - freq / 2), reverse=True)


def plot_learning_summary(json_paths: list[Path], png: Path,
                          by_steps: tuple[int, ...] = ()) -> str:
    """Several learning.json files (one per mode, e.g. plain and fast256) on one plot: each mode's
    median eval return over its runs that got to each point, with the min-max band; returns a
    markdown table of the best eval of each run over the steps all of the mode's runs reached,
    how many reach 900, and the median curve; then, with ``by_steps``, a table of each mode's
    best evals by each of those steps, over the runs that got there (modes whose runs stopped at
    different points are compared at equal steps there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = LEARNING_COLORS
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = ["| mode | runs | best eval per run (sorted) | median best | runs >= 900 | median curve at 10K, 20K, ... |",
            "| --- | --- | --- | --- | --- | --- |"]
    by_rows = ["| mode | " + " | ".join(f"best by {b // 1000}K: runs, sorted (median)" for b in by_steps) + " |",
               "| --- |" + " --- |" * len(by_steps)]
    level, modes = None, []
    for path in json_paths:
        data = json.loads(Path(path).read_text())
        level = data["level"]
        for mode, per_seed in data["curves"].items():
            modes.append(mode)
            runs = [c["eval"] for c in per_seed.values() if "eval" in c]
            # Evaluations fall on the first log after each multiple of the eval frequency: bucket
            # them by that multiple so runs with different env counts share an x axis.
            freq = min(b[0] - a[0] for a, b in zip(runs[0], runs[0][1:]))
            n = min(len(r) for r in runs)
            grid = np.array([[ret for _, ret in r[:n]] for r in runs])
            # The curve: at each point, the median (and min-max) of the runs that got there.
            at: dict[int, list[float]] = {}
            for r in runs:
                for step, ret in r:
                    at.setdefault(freq * round(step / freq), []).append(ret)
            steps = np.array(sorted(at))
            med = np.array([np.median(at[x]) for x in steps])
            label = f"{mode} (median of {len(runs)})" if all(len(r) == n for r in runs) else \
                f"{mode} (median of the {len(runs)} runs, of those still running after {steps[n - 1] // 1000}K)"
            ax.plot(steps, med, color=colors.get(mode), marker="o", ms=3, label=label)
            ax.fill_between(steps, [min(at[x]) for x in steps], [max(at[x]) for x in steps],
                            color=colors.get(mode), alpha=0.12)
            best = sorted((float(g.max()) for g in grid), reverse=True)
            rows.append(f"| {mode} | {len(runs)} | {', '.join(f'{b:.0f}' for b in best)} | {np.median(best):.0f} "
                        f"| {sum(b >= 900 for b in best)} | {' '.join(f'{m:.0f}' for m in med)} |")
            cells = []
            for b in by_steps:
                got = best_by(runs, b, freq)
                cells.append(f"{len(got)}: {', '.join(f'{x:.0f}' for x in got)} ({np.median(got):.0f})"
                             if got else "0: -")
            by_rows.append(f"| {mode} | " + " | ".join(cells) + " |")
    ax.axhline(900, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval mean return (10 episodes)")
    ax.set_title(f"{learning_obs(modes)}, level {level}: median over seeds, min-max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return "\n".join(rows + ([""] + by_rows if by_steps else []))


def update_ceiling(config) -> float | None:
    """Gradient steps/s of the update alone with this run's shapes and K, batches already on the
    device (``benchmarks/update_throughput.py``'s ``measure``): what the loop could reach at best."""
    import update_throughput

    ec, tc = config.env, config.train
    if ec.obs_mode == "vector":
        case = "vector"
    elif ec.frame_stack == 1 and f"img{ec.image_size}" in update_throughput.CASES:
        case = f"img{ec.image_size}"
    else:
        return None
    agent = config.agent
    k = tc.utd * tc.n_envs * tc.update_every
    overrides = {f: getattr(agent, f) for f in ("net_arch", "n_critics", "encoder_sharing",
                                               "augmentation", "encoder_features", "impl")}
    out = update_throughput.measure(case, k, agent.bf16_encoder, repeats=3,
                                    min_steps=max(8 * k, 200 if case == "vector" else 64),
                                    config_overrides=overrides)
    return round(out["grad_steps_per_s"], 1)


def machine() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {"python": platform.python_version(), "jax": jax.__version__,
            "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
            "host_cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import flax
        import optax

        info["flax"], info["optax"] = flax.__version__, optax.__version__
    except ImportError:
        pass
    return info


def table(results: list[dict]) -> str:
    lines = [
        "| case | env steps/s | excl. eval+ckpt | update alone, steps/s | e2e / update alone "
        "| timed steps | compile s | act | env | insert | sample | update | eval | ckpt | other "
        "| last eval |",
        "| --- " * 16 + "|",
    ]
    for r in results:
        t = r["ms_per_1000_steps"]
        last_eval = f"{r['eval'][-1][1]:.1f} @ {r['eval'][-1][0]}" if r["eval"] else "-"
        lines.append(
            f"| {r['case']} | **{r['env_steps_per_s']:.0f}** | {r['env_steps_per_s_excl_eval_ckpt']:.0f} "
            f"| {r.get('update_only_steps_per_s') or '-'} | {r.get('fraction_of_update_ceiling') or '-'} "
            f"| {r['env_steps_timed']} | {r['compile_s']:.1f} | {t['act']:.0f} | {t['env']:.0f} "
            f"| {t['insert']:.0f} | {t['sample']:.0f} | {t['update']:.0f} | {t['eval']:.0f} "
            f"| {t['checkpoint']:.0f} | {r['ms_per_1000_steps_other']:.0f} | {last_eval} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", default="img256,img84,vector",
                        help=f"comma-separated, from: {', '.join(CASES)}; Stable-Baselines3 "
                        f"peers: {', '.join(SB3_CASES)}")
    parser.add_argument("--steps", type=int, default=50_000,
                        help="env steps after the warm-up, per case")
    parser.add_argument("--plain-steps", type=int, default=5_000,
                        help="env steps after the warm-up for the *_plain cases (slow)")
    parser.add_argument("--sb3-steps", type=int, default=1_000,
                        help="env steps after a 1000-step warm-up for the sb3_* peer cases")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra override for every case, e.g. train.eval_freq=0")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/e2e"))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the runs go while they run (default: OUT/runs)")
    parser.add_argument("--learning-seeds", default="",
                        help="comma-separated seeds: also run the learning comparison of "
                        "--learning-modes (vector or pixel), in parallel, before the throughput cases")
    parser.add_argument("--learning-steps", type=int, default=60_000)
    parser.add_argument("--learning-modes", default=",".join(LEARNING_MODES),
                        help=f"comma-separated, from: {', '.join(LEARNING_MODES)}")
    parser.add_argument("--learning-eval-freq", type=int, default=5000)
    parser.add_argument("--learning-level", type=int, default=1, choices=(1, 2, 3),
                        help="level of the learning runs (vector modes: vector_sac.py's config for "
                        "it; pixel modes: their own config file, with env.level set to it)")
    parser.add_argument("--learning-set", dest="learning_extra", action="append", default=[],
                        help="extra override for every learning run, after the mode's, e.g. "
                        "train.learning_starts=500 for a smoke run")
    parser.add_argument("--learning-timeout-s", type=float, default=None,
                        help="SIGTERM learning runs still going after this many seconds")
    parser.add_argument("--learning-parallel", type=int, default=None,
                        help="at most this many learning runs at a time (default: all at once)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the remaining cases once this many seconds have passed")
    parser.add_argument("--plot-learning", type=Path, default=None, metavar="JSON",
                        help="only draw learning.json (from --learning-seeds) as a PNG beside it")
    parser.add_argument("--plot-learning-summary", default="", metavar="JSON,JSON,...",
                        help="only draw the median curve of each mode of these learning.json files "
                        "(summary.png beside the first) and print a table of best evals")
    parser.add_argument("--best-by", default="", metavar="STEP,STEP,...",
                        help="with --plot-learning-summary: also each mode's best evals by these env steps, "
                        "over its runs that got there")
    args = parser.parse_args(argv)
    if args.plot_learning is not None:
        print(plot_learning(args.plot_learning, args.plot_learning.with_suffix(".png")))
        return 0
    if args.plot_learning_summary:
        paths = [Path(p) for p in args.plot_learning_summary.split(",")]
        by_steps = tuple(int(x) for x in args.best_by.split(",") if x)
        print(plot_learning_summary(paths, paths[0].parent / "summary.png", by_steps))
        return 0
    names = [c for c in args.cases.split(",") if c]
    seeds = [int(x) for x in args.learning_seeds.split(",") if x]
    learning_modes = [m for m in args.learning_modes.split(",") if m]
    if any(m not in LEARNING_MODES for m in learning_modes):
        parser.error(f"unknown learning mode in {args.learning_modes!r}; known: {', '.join(LEARNING_MODES)}")
    unknown = [c for c in names if c not in CASES and c not in SB3_CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; known: {', '.join([*CASES, *SB3_CASES])}")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or args.out / "runs"
    info = machine()
    print(json.dumps(info), flush=True)
    results: list[dict] = []
    peers: list[dict] = []
    t_start = time.perf_counter()
    if seeds:
        print(f"== learning: {','.join(learning_modes)}, {learning_obs(learning_modes)}, level "
              f"{args.learning_level}, seeds {seeds}", flush=True)
        curves = learning(args.out, seeds, args.learning_steps, level=args.learning_level,
                          modes=learning_modes, eval_freq=args.learning_eval_freq,
                          parallel=args.learning_parallel, timeout_s=args.learning_timeout_s,
                          extra=args.learning_extra)
        for mode, per_seed in curves.items():
            for seed, c in per_seed.items():
                print(mode, seed, c, flush=True)
    for name in names:
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: skipping {name}", flush=True)
            continue
        if name in SB3_CASES:
            print(f"== {name}: {SB3_CASES[name][2]} ({args.sb3_steps} steps after warm-up)", flush=True)
            peers.append(measure_sb3(name, args.sb3_steps, args.out))
            print(json.dumps(peers[-1]), flush=True)
            (args.out / "sb3.json").write_text(json.dumps(peers, indent=1))
            continue
        steps = args.plain_steps if name.endswith("_plain") else args.steps
        print(f"== {name}: {CASES[name][2]} ({steps} steps after warm-up)", flush=True)
        results.append(measure(name, steps, workdir, args.out, args.extra))
        print(table(results[-1:]), flush=True)
        (args.out / "e2e.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    by_name = {r["case"]: r for r in results}
    report = [
        "# End-to-end training throughput", "",
        f"Command: `python benchmarks/e2e_throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        "Env steps/s after the warm-up, compile excluded; breakdown in ms per 1000 env steps "
        "(see the script's docstring).", "",
        table(results), "",
    ]
    for name, n in SEED_CASES.items():
        one = name.rsplit("_seeds", 1)[0] + "_seeds1"
        if n > 1 and name in by_name and one in by_name:
            ratio = by_name[name]["env_steps_per_s"] / by_name[one]["env_steps_per_s"]
            report.append(f"- {name} / {one}: **{ratio:.2f}x** env steps/s summed over seeds "
                          f"({by_name[name]['env_steps_per_s']:.0f} vs {by_name[one]['env_steps_per_s']:.0f}; same run)")
    for fast, plain in (("img256", "img256_plain"), ("img256_bf16", "img256_plain"),
                        ("cpu_vector", "cpu_vector_plain")):
        if fast in by_name and plain in by_name:
            ratio = by_name[fast]["env_steps_per_s"] / by_name[plain]["env_steps_per_s"]
            report.append(f"- {fast} / {plain}: **{ratio:.1f}x** env steps/s (same run)")
    if peers:
        report += ["", "Stable-Baselines3 SAC on the same env, image size and batch, 1 env, UTD 1, "
                   "same machine, same run (its defaults otherwise: CnnPolicy gives actor and "
                   "critics their own encoder):", "", sb3_table(peers, by_name)]
    report += ["", "Cases:", ""] + [
        f"- `{r['case']}`: {r['description']}; `{r['config']}` + `{' '.join(r['overrides'])}`"
        for r in results]
    (args.out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
