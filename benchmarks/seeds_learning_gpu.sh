#!/usr/bin/env bash
# One GPU job of learning curves, 5 seeds per group, every group at once (issues 29 and 31):
# level 1 from the state vector and from 84x84 pixels (drq84 config); MuJoCo HalfCheetah-v5 and
# Hopper-v5 (configs cite their source), and Stable-Baselines3 SAC on HalfCheetah-v5 seed 0 for
# the steps it reaches in the same job. Runs still going at LIMIT s are stopped with SIGTERM.
#   OUT=dir bash benchmarks/seeds_learning_gpu.sh
set -u
out=${OUT:-results/benchmarks}/learning
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
quiet="--set train.progress_bar=false --set train.video=false"
python benchmarks/seeds_learning.py --out "$out" --time-limit-s "${LIMIT:-470}" \
  --budgets 50000,100000,200000,300000 \
  --run "vector_level1=experiments/vector_sac.py --level 1 --seeds 0-4 --total-timesteps 100000 $quiet" \
  --run "drq84_level1=experiments/topdown_sac.py --level 1 --config configs/sac_topdown_drq84_easy.yaml --seeds 0-4 --total-timesteps 500000 $quiet" \
  --run "halfcheetah_v5=experiments/train.py --env-id HalfCheetah-v5 --seeds 0-4 --total-timesteps 300000 $quiet" \
  --run "hopper_v5=experiments/train.py --env-id Hopper-v5 --seeds 0-4 --total-timesteps 300000 $quiet" \
  --run "sb3_halfcheetah_v5=benchmarks/sb3_gym.py --env-id HalfCheetah-v5 --seed 0 --total-timesteps 300000 --device cuda"
