#!/usr/bin/env bash
# Pixel-SAC learning runs on one GPU (issue 30), in jobs that fit the 10-minute GPU calls. Every
# run of a job runs at once; runs still going at LIMIT s get SIGTERM (they checkpoint and stop).
# Jobs of one OUT add to the same report folder (benchmarks/seeds_learning.py summarises it):
#   OUT=dir bash benchmarks/pixels_gpu.sh screen   # level 1 (and 2), seed 0, one run per lead:
#       the seed's exact 256x256 settings, 256x256 pooled to 85 px, 84x84 variants
#   OUT=dir bash benchmarks/pixels_gpu.sh drq84_n3       # level 1, 84x84, 3 frames + shift,
#       LayerNorm-tanh trunk of 50, 3-step returns: seeds 0-4 together (one process)
#   OUT=dir bash benchmarks/pixels_gpu.sh drq84_n3_resume  # that group resumed
#   OUT=dir bash benchmarks/pixels_gpu.sh pool256_n3     # the same recipe from 256x256 frames
#       pooled by 3 in the network (85 px), shift 12 px (the shipped config): seeds 0-1 together (two 100K-transition
#       replays of 256x256 frames are 39 GB of disk; the GPU machine has 64 GB)
#   OUT=dir bash benchmarks/pixels_gpu.sh screen2  # the shipped recipe, seed 0, one run per
#       lead after the 84x84 plateau: 256x256 as shipped; at 84x84 the state agent's optimizer
#       (lr 1e-3, tau 0.01), batch 256, both; the actor's own trunk on the shared convs
#       (encoder_sharing convs, DrQ-v2), alone and with the state agent's optimizer
#   OUT=dir bash benchmarks/pixels_gpu.sh screen3  # 84x84, seed 0: DrQ's 1024-wide heads
#   [ARGS=flags SEEDS=0-1] OUT=dir bash benchmarks/pixels_gpu.sh levels84  # levels 2 and 3 at 84
#   LABEL=name ARGS="--level 1 ..." OUT=dir bash benchmarks/pixels_gpu.sh group  # one group,
#       seeds SEEDS (default 0-4) in one process; group_resume resumes it
#   OUT=dir bash benchmarks/pixels_gpu.sh seed_exact  # the seed's settings alone (one env)
#   OUT=dir bash benchmarks/pixels_gpu.sh reeval   # every kept best policy of OUT on 100 fresh
#       episodes (REEVAL=N to change; subprocesses, one per core, step them; a job of its own:
#       a policy that survives steps up to N x 1000 env steps per seed)
#   OUT=dir bash benchmarks/pixels_gpu.sh probe    # benchmarks/encoder_probe.py from the state
#       and from 84x84 pixels, levels 1 and 3 (behaviour cloning of the planner, clearance probe)
#   OUT=dir bash benchmarks/pixels_gpu.sh summary  # rewrite the report of all jobs
set -u
[ $# -gt 0 ] || { echo "jobs: screen | drq84_n3 | drq84_n3_resume | pool256_n3 | screen2 | screen3 | levels84 | probe | group | group_resume | seed_exact | reeval | summary" >&2; exit 2; }
out=${OUT:-results/benchmarks}/pixels
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
quiet="--set train.progress_bar=false --set train.video=false"
budgets=50000,100000,150000,200000,300000
top="experiments/topdown_sac.py --total-timesteps 300000 $quiet"
drq84="--config configs/sac_topdown_drq84_easy.yaml"
seed256="--config configs/sac_topdown_seed256_easy.yaml"  # the main config before 2026-12-07
ln50="--set agent.encoder_output=layernorm_tanh --set agent.encoder_features=50"
fast="--set agent.actor_lr=0.001 --set agent.critic_lr=0.001 --set agent.tau=0.01"  # the state agent's optimizer (configs/sac_vector_easy.yaml)
group_of() { ls -d "$out/runs/$1"/*/*/ | head -1; }  # runs/LABEL/<experiment>/<timestamp>/
keep=()
runs=()
for job in "$@"; do
  case $job in
    screen)
      # The seed's settings (devlog 025, SB3 CnnPolicy): one env, one frame, fp32, one encoder
      # per network, the plain loop; host replay (three 256x256 mirrors would not fit the GPU).
      runs+=(--run "seed_exact_256=$top --level 1 $seed256 --set agent.encoder_sharing=separate --set perf.overlap=false --set perf.device_mirror=false"
             --run "pool3_drq_ln50_256=$top --level 1 $seed256 --set agent.encoder_downsample=null --set env.frame_stack=3 --set agent.augmentation=true --set agent.augmentation_pad=12 $ln50 --set train.n_envs=16"
             --run "drq84_ln50_nstep3=$top --level 1 $drq84 $ln50 --set replay.n_step=3"
             --run "drq84_ln50_criticln=$top --level 1 $drq84 $ln50 --set agent.critic_layer_norm=true"
             --run "drq84_ln50_d4_level2=$top --level 2 $drq84 $ln50 --set agent.symmetry=d4") ;;
    drq84_n3)
      keep=(--keep-replay)
      runs+=(--run "drq84_ln50_nstep3_level1=$top --level 1 $drq84 $ln50 --set replay.n_step=3 --seeds 0-4") ;;
    drq84_n3_resume)
      keep=(--keep-replay)
      runs+=(--run "drq84_ln50_nstep3_level1=experiments/topdown_sac.py --resume $(group_of drq84_ln50_nstep3_level1)") ;;
    pool256_n3)
      runs+=(--run "pool3_ln50_nstep3_256_level1=$top --level 1 --seeds 0-1") ;;  # the shipped config
    screen2)
      runs+=(--run "shipped_256_level1=$top --level 1"
             --run "shipped_84_lr1e3_tau01_level1=$top --level 1 --set env.image_size=84 $fast"
             --run "shipped_84_b256_level1=$top --level 1 --set env.image_size=84 --set agent.batch_size=256"
             --run "shipped_84_b256_lr1e3_tau01_level1=$top --level 1 --set env.image_size=84 --set agent.batch_size=256 $fast"
             --run "shipped_84_convs_level1=$top --level 1 --set env.image_size=84 --set agent.encoder_sharing=convs"
             --run "shipped_84_convs_lr1e3_tau01_level1=$top --level 1 --set env.image_size=84 --set agent.encoder_sharing=convs $fast") ;;
    levels84)
      # Levels 2 and 3 at 84x84, SEEDS (default 0-1) each in one process; ARGS adds flags to both.
      runs+=(--run "shipped_84_level2=$top --level 2 --set env.image_size=84 ${ARGS:-} --seeds ${SEEDS:-0-1}"
             --run "shipped_84_level3=$top --level 3 --set env.image_size=84 ${ARGS:-} --seeds ${SEEDS:-0-1}") ;;
    screen3)
      runs+=(--run "shipped_84_head1024_level1=$top --level 1 --set env.image_size=84 --set agent.net_arch=[1024,1024]") ;;
    group)
      # One group of SEEDS (default 0-4) in one process: LABEL=name ARGS="experiments/... flags"
      keep=(--keep-replay)
      runs+=(--run "${LABEL:?LABEL=name}=$top ${ARGS:?ARGS=flags} --seeds ${SEEDS:-0-4}") ;;
    group_resume)
      keep=(--keep-replay)
      runs+=(--run "${LABEL:?LABEL=name}=experiments/topdown_sac.py --resume $(group_of "$LABEL")") ;;
    seed_exact)
      runs+=(--run "seed_exact_256=$top --level 1 $seed256 --set agent.encoder_sharing=separate --set perf.overlap=false") ;;
    reeval)
      exec python benchmarks/seeds_learning.py --out "$out" --summarise-only --budgets $budgets \
        --reeval-episodes "${REEVAL:-100}" ;;
    probe)
      # Can the encoders represent the planner's policy and the returns it gets, from the
      # state and from 84x84 x 3 frames? Behaviour cloning + clearance probe, levels 1 and 3
      # (action noise 1.0: the data then holds hits and near misses, not only safe states).
      mkdir -p "$out/probe"
      for level in 1 3; do
        python benchmarks/encoder_probe.py --level $level --transitions 50000 --steps 20000 --noise 1.0 \
          --json "$out/probe/vector_level$level.json" > "$out/probe/vector_level$level.md" 2>&1
        python benchmarks/encoder_probe.py --level $level --transitions 50000 --steps 20000 --noise 1.0 \
          --obs topdown --image-size 84 --frame-stack 3 \
          --json "$out/probe/pixels84_level$level.json" > "$out/probe/pixels84_level$level.md" 2>&1
      done
      exit 0 ;;
    summary) ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
  esac
done
if [ ${#runs[@]} -eq 0 ]; then
  exec python benchmarks/seeds_learning.py --out "$out" --summarise-only --budgets $budgets
fi
exec python benchmarks/seeds_learning.py --out "$out" --time-limit-s "${LIMIT:-470}" \
  --budgets $budgets "${keep[@]}" "${runs[@]}"
