#!/usr/bin/env bash
# Learning curves on one GPU, 5 seeds per group trained together (issues 29 and 31), in jobs
# that fit the 10-minute GPU calls. Every group of a job runs at once; runs still going at LIMIT s
# get SIGTERM (they checkpoint and stop). Jobs of one OUT add to the same report folder:
#   OUT=dir bash benchmarks/seeds_learning_gpu.sh mujoco         # HalfCheetah-v5 and Hopper-v5,
#       5 seeds each to 300K (configs cite their source), Stable-Baselines3 SAC seed 0 on each for
#       the steps it reaches in the same job, and level 1 from the state vector, 5 seeds, 100K
#   OUT=dir bash benchmarks/seeds_learning_gpu.sh mujoco_resume  # the MuJoCo groups resumed
#   OUT=dir bash benchmarks/seeds_learning_gpu.sh pixels         # level 1 from 84x84 pixels
#       (drq84 config), 5 seeds together, and the state-vector seeds 0-4 each run alone
#   OUT=dir bash benchmarks/seeds_learning_gpu.sh summary        # rewrite the report of all jobs
# Several jobs named at once run together in one call: mujoco_resume pixels.
set -u
[ $# -gt 0 ] || { echo "jobs: mujoco | mujoco_resume | pixels | summary (several run at once)" >&2; exit 2; }
out=${OUT:-results/benchmarks}/learning
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
quiet="--set train.progress_bar=false --set train.video=false"
budgets=50000,100000,200000,300000
group_of() { ls -d "$out/runs/$1"/*/*/ | head -1; }  # runs/LABEL/<experiment>/<timestamp>/
runs=()
for job in "$@"; do
  case $job in
    mujoco)
      runs+=(--run "halfcheetah_v5=experiments/train.py --env-id HalfCheetah-v5 --seeds 0-4 --total-timesteps 300000 $quiet"
             --run "hopper_v5=experiments/train.py --env-id Hopper-v5 --seeds 0-4 --total-timesteps 300000 $quiet"
             --run "sb3_halfcheetah_v5=benchmarks/sb3_gym.py --env-id HalfCheetah-v5 --seed 0 --total-timesteps 300000 --device cuda"
             --run "sb3_hopper_v5=benchmarks/sb3_gym.py --env-id Hopper-v5 --seed 0 --total-timesteps 300000 --device cuda"
             --run "vector_level1=experiments/vector_sac.py --level 1 --seeds 0-4 --total-timesteps 100000 $quiet") ;;
    mujoco_resume)
      runs+=(--run "halfcheetah_v5=experiments/train.py --resume $(group_of halfcheetah_v5)"
             --run "hopper_v5=experiments/train.py --resume $(group_of hopper_v5)") ;;
    pixels)
      runs+=(--run "drq84_level1=experiments/topdown_sac.py --level 1 --config configs/sac_topdown_drq84_easy.yaml --seeds 0-4 --total-timesteps 500000 $quiet")
      for s in 0 1 2 3 4; do  # one label: the five single runs are one setting's seeds
        runs+=(--run "vector_level1_alone=experiments/vector_sac.py --level 1 --seed $s --total-timesteps 100000 $quiet")
      done ;;
    summary) ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
  esac
done
if [ ${#runs[@]} -eq 0 ]; then  # summary: the report of every label under OUT/runs
  exec python benchmarks/seeds_learning.py --out "$out" --summarise-only --budgets $budgets --keep-replay
fi
exec python benchmarks/seeds_learning.py --out "$out" --time-limit-s "${LIMIT:-470}" \
  --budgets $budgets --keep-replay "${runs[@]}"
