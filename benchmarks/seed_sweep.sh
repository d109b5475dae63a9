#!/usr/bin/env bash
# Run several SAC training runs side by side and gather every eval.csv into one file.
#   bash benchmarks/seed_sweep.sh SECONDS LEVEL "seed [--set k=v ...]" ["seed ..."] ...
# SWEEP_SCRIPT: the experiment script (default experiments/vector_sac.py; e.g.
#   experiments/topdown_sac.py, whose "seed" specs may add --config FILE).
# SWEEP_DEVICE=cpu (default): each run pinned to its own 2 cores (a 2-core-CPU-like slot), JAX on
#   the CPU; 8 slots fit the 16-core GPU host.
# SWEEP_DEVICE=gpu: every run shares the one GPU (no preallocation), each pinned to its own
#   nproc / runs host cores (at least one): a run's speed is bound by its host core(s), not the GPU.
# Runs that are still going after SECONDS get SIGTERM (they checkpoint and stop); the table
# $OUT/sweep_eval.csv has one row per evaluation of every run.
# SWEEP_RESUME=1 (same arguments again, same machine): each run i continues from its run
# directory under /tmp/sweep/i with --resume (its own config.yaml), for sweeps longer than one
# 10-minute device call.
set -uo pipefail
secs=$1; level=$2; shift 2
out=${OUT:-/tmp/out}; mkdir -p "$out"
device=${SWEEP_DEVICE:-cpu}
script=${SWEEP_SCRIPT:-experiments/vector_sac.py}
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
if [ "$device" = cpu ]; then
  export JAX_PLATFORMS=cpu; width=2
else
  export XLA_PYTHON_CLIENT_PREALLOCATE=false; width=1
fi
ncores=$(nproc)
if [ "$device" = gpu ]; then width=$(( ncores / $# )); [ "$width" -lt 1 ] && width=1; fi
i=0; pids=()
for spec in "$@"; do
  seed=${spec%% *}; rest=${spec#"$seed"}
  first=$(( (width * i) % ncores )); last=$(( first + width - 1 ))
  if [ "${SWEEP_RESUME:-0}" = 1 ]; then
    run_dir=$(dirname "$(ls -d /tmp/sweep/$i/*/*/config.yaml | head -1)")
    taskset -c "$first-$last" python3 "$script" --resume "$run_dir" \
      >> "/tmp/sweep_$i.log" 2>&1 &
  else
    rm -rf "/tmp/sweep/$i"  # a run directory left by an earlier sweep on a warm machine would be read below
    taskset -c "$first-$last" python3 "$script" --level "$level" --seed "$seed" \
      --results-dir "/tmp/sweep/$i" --set train.progress_bar=false --set train.video=false $rest \
      > "/tmp/sweep_$i.log" 2>&1 &
  fi
  pids+=($!); i=$((i+1))
done
start=$SECONDS
while [ $((SECONDS - start)) -lt "$secs" ]; do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 2
done
kill -TERM "${pids[@]}" 2>/dev/null; wait
echo "sweep: $i runs on $device, $((SECONDS - start)) s"
echo "run,spec,step,mean_return,std_return,min_return,max_return,mean_length,episodes,wall_time_s" > "$out/sweep_eval.csv"
i=0
for spec in "$@"; do
  f=$(ls /tmp/sweep/$i/*/*/eval.csv 2>/dev/null | head -1)
  [ -n "$f" ] && tail -n +2 "$f" | tr -d '\r' | sed "s|^|$i,\"$spec\",|" >> "$out/sweep_eval.csv"
  tail -2 "/tmp/sweep_$i.log"; i=$((i+1))
done
cat "$out/sweep_eval.csv"
