"""What each suite measures and with which budgets: one frozen dataclass per suite.

``tiny`` is for the tests (seconds, numbers meaningless), ``quick`` is a smoke-level comparison
that finishes in under 15 minutes on a 2-core CPU, ``full`` is meant for a GPU machine with the
budgets of the shipped configs (100K env steps from state, 84x84 and 256x256 images).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ObsSetting:
    """One observation type with the agent it is trained with."""

    label: str
    """Row name in the report, e.g. ``vector``, ``image 84x84``."""
    obs_mode: str
    """``vector`` or ``topdown``."""
    image_size: int = 256
    """Image side (ignored for vector)."""
    batch_size: int = 256
    """SAC batch size (the configured sizes: 256 for vector, 64 for images)."""
    agent: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """Extra ``agent.*`` config keys (e.g. a tiny network for CPU smoke runs)."""
    env: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """Extra ``env.*`` config keys of the training and eval envs (e.g. ``frame_stack``)."""

    @property
    def update_case(self) -> str:
        """The matching case name of ``benchmarks/update_throughput.py``."""
        return "vector" if self.obs_mode == "vector" else f"img{self.image_size}"


@dataclasses.dataclass(frozen=True)
class TrainBudget:
    """A short real ``dodgerl.train.train`` run."""

    total_timesteps: int
    learning_starts: int
    eval_freq: int
    eval_episodes: int
    buffer_size: int
    log_freq: int = 100


VECTOR = ObsSetting("vector", "vector", 256, 256)
IMG84 = ObsSetting("image 84x84", "topdown", 84, 64)
IMG256 = ObsSetting("image 256x256", "topdown", 256, 64)
IMG84_DRQ = ObsSetting("image 84x84, 3 frames + shift", "topdown", 84, 64, {"augmentation": True},
                       {"frame_stack": 3})
"""configs/sac_topdown_drq84_easy.yaml's frame stack and shift on top of any config (the shipped
pixel configs have both since 2026-12-07)."""
TINY_NET = {"net_arch": [64, 64], "encoder_features": 64}
IMG64_TINY = ObsSetting("image 64x64 (tiny net)", "topdown", 64, 32, TINY_NET)
VECTOR_TINY = ObsSetting("vector (tiny net)", "vector", 256, 64, {"net_arch": [64, 64]})


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    name: str
    purpose: str
    # 1. env throughput
    env_obs: tuple[ObsSetting, ...]
    """Observation types whose env step rate is measured (one core and parallel)."""
    env_steps: int
    """Timed random-action steps per single-env measurement (images: a third of it, >= 300)."""
    env_repeats: int
    """Best of this many single-env measurements (the machine is shared)."""
    parallel_workers: tuple[int, ...]
    """AsyncVectorEnv sizes (subprocess workers)."""
    parallel_steps: int
    """Timed vector-env steps (each steps every worker) per parallel measurement."""
    render_frames: int
    """Frames drawn by the render-only loop (rasterizer alone) per image size."""
    # 2. update throughput
    update_obs: tuple[ObsSetting, ...]
    update_min_steps: dict[str, int] = dataclasses.field(hash=False)
    """Gradient steps per timed repeat, per update case (vector, img84, img256)."""
    update_repeats: int = 3
    # 3. end-to-end training throughput
    e2e_obs: tuple[ObsSetting, ...] = ()
    e2e_budget: dict[str, TrainBudget] = dataclasses.field(default_factory=dict, hash=False)
    """Budget per obs label."""
    e2e_in_process: bool = False
    """Run the end-to-end runs in the suite process (faster; memory peaks no longer per run)."""
    # 4. learning
    learning_obs: tuple[ObsSetting, ...] = ()
    learning_budget: dict[str, TrainBudget] = dataclasses.field(default_factory=dict, hash=False)
    levels: tuple[int, ...] = (1, 2)
    seeds: int = 2
    reference_episodes: int = 10
    """Episodes of the random and heuristic policies per level (seeds eval_seed + i)."""
    bootstrap_reps: int = 2000
    peer_steps: int | None = None
    """Cap on the stable-baselines3 peer's env steps per observation type (None: the learning
    budget). Below the budget the peer row measures throughput; its return is not comparable."""


TINY = SuiteSettings(
    name="tiny",
    purpose="test fixture: every row runs, in seconds; the numbers mean nothing",
    env_obs=(VECTOR, ObsSetting("image 64x64", "topdown", 64, 32)),
    env_steps=200, env_repeats=1, parallel_workers=(2,), parallel_steps=30, render_frames=50,
    update_obs=(VECTOR_TINY,), update_min_steps={"vector": 4}, update_repeats=1,
    e2e_obs=(VECTOR_TINY,),
    e2e_budget={VECTOR_TINY.label: TrainBudget(100, 50, 0, 1, 500, log_freq=10)},
    e2e_in_process=True,
    learning_obs=(VECTOR_TINY,),
    learning_budget={VECTOR_TINY.label: TrainBudget(80, 40, 40, 1, 500, log_freq=40)},
    levels=(1, 2), seeds=2, reference_episodes=2, bootstrap_reps=200,
)

QUICK = SuiteSettings(
    name="quick",
    purpose=("smoke-level comparison on a CPU in under 15 minutes: full-size throughput rows, "
             "but learning budgets of a few thousand steps from state and a few hundred from "
             "64x64 images with a tiny network; not a measure of final performance"),
    env_obs=(VECTOR, IMG84, IMG256),
    env_steps=6000, env_repeats=2, parallel_workers=(2,), parallel_steps=1000, render_frames=1000,
    update_obs=(VECTOR, IMG84, IMG256),
    update_min_steps={"vector": 100, "img84": 6, "img256": 1}, update_repeats=1,
    e2e_obs=(VECTOR, IMG84, IMG256),
    e2e_budget={
        VECTOR.label: TrainBudget(1500, 500, 0, 2, 5000),
        IMG84.label: TrainBudget(116, 100, 0, 1, 1000, log_freq=4),
        # 4 update calls, so that the steady window (second to last row after the first update)
        # holds two (measure.steady_window)
        IMG256.label: TrainBudget(68, 64, 0, 1, 500, log_freq=1),
    },
    learning_obs=(VECTOR, IMG64_TINY),
    learning_budget={
        VECTOR.label: TrainBudget(2000, 500, 250, 5, 10_000),
        IMG64_TINY.label: TrainBudget(450, 250, 50, 2, 2000, log_freq=50),
    },
    levels=(1, 2), seeds=2, reference_episodes=20, bootstrap_reps=2000,
)

FULL = SuiteSettings(
    name="full",
    purpose=("the real comparison, meant for a GPU machine: the shipped configs of levels 1-3 "
             "from state, 84x84 and 256x256 images (the pixel recipe at either side), 300K env "
             "steps, 5 seeds per setting"),
    env_obs=(VECTOR, IMG84, IMG256),
    env_steps=30_000, env_repeats=3, parallel_workers=(2, 4, 8), parallel_steps=5000,
    render_frames=5000,
    update_obs=(VECTOR, IMG84, IMG256),
    update_min_steps={"vector": 1000, "img84": 200, "img256": 100}, update_repeats=5,
    e2e_obs=(VECTOR, IMG84, IMG256),
    e2e_budget={
        VECTOR.label: TrainBudget(20_000, 5000, 0, 10, 100_000, log_freq=1000),
        IMG84.label: TrainBudget(10_000, 2000, 0, 10, 100_000, log_freq=500),
        IMG256.label: TrainBudget(10_000, 2000, 0, 10, 100_000, log_freq=500),
    },
    learning_obs=(VECTOR, IMG84, IMG256),
    learning_budget={
        VECTOR.label: TrainBudget(300_000, 5000, 10_000, 10, 100_000, log_freq=1000),
        IMG84.label: TrainBudget(300_000, 5000, 10_000, 10, 100_000, log_freq=1000),
        IMG256.label: TrainBudget(300_000, 5000, 10_000, 10, 100_000, log_freq=1000),
    },
    levels=(1, 2, 3), seeds=5, reference_episodes=100, bootstrap_reps=5000,
)

FULL_10MIN = SuiteSettings(
    name="full-10min",
    purpose=("every row of `full` cut to what one 10-minute command on one GPU can run (the device "
             "tool's limit per command): full-size throughput rows, learning on level 1 only with 2 "
             "seeds and 12K (vector) / 5K (images) env steps; a measure of cost, not of final "
             "performance"),
    env_obs=(VECTOR, IMG84, IMG256),
    env_steps=9000, env_repeats=2, parallel_workers=(4, 16), parallel_steps=1000,
    render_frames=2000,
    update_obs=(VECTOR, IMG84, IMG256),
    update_min_steps={"vector": 500, "img84": 100, "img256": 50}, update_repeats=3,
    e2e_obs=(VECTOR, IMG84, IMG256),
    e2e_budget={
        VECTOR.label: TrainBudget(8000, 3000, 0, 10, 100_000, log_freq=500),
        IMG84.label: TrainBudget(4000, 1500, 0, 10, 100_000, log_freq=250),
        IMG256.label: TrainBudget(3000, 1500, 0, 10, 100_000, log_freq=250),
    },
    e2e_in_process=True,
    learning_obs=(VECTOR, IMG84, IMG256),
    learning_budget={
        VECTOR.label: TrainBudget(12_000, 3000, 1500, 10, 100_000, log_freq=500),
        IMG84.label: TrainBudget(5000, 2000, 1000, 10, 100_000, log_freq=500),
        IMG256.label: TrainBudget(5000, 2000, 1000, 10, 100_000, log_freq=500),
    },
    levels=(1,), seeds=2, reference_episodes=100, bootstrap_reps=5000,
    peer_steps=1500,  # SB3 runs 30-150 env steps/s here: its full learning budgets take ~7 min
)

SUITES = {s.name: s for s in (TINY, QUICK, FULL, FULL_10MIN)}
