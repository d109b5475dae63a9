#!/usr/bin/env bash
# Run several vector-SAC training runs side by side, each pinned to its own 2 cores (a
# 2-core-CPU-like slot), JAX on the CPU; stop them after SECONDS with SIGTERM (they checkpoint),
# and gather every eval.csv into one file.  Used on the 16-core GPU host, where 8 slots fit.
#   bash benchmarks/cpu_seed_sweep.sh SECONDS LEVEL "seed [--set k=v ...]" ["seed ..."] ...
set -uo pipefail
secs=$1; level=$2; shift 2
out=${OUT:-/tmp/out}; mkdir -p "$out"
export JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
i=0; pids=()
for spec in "$@"; do
  seed=${spec%% *}; rest=${spec#"$seed"}
  taskset -c $((2*i)),$((2*i+1)) python3 experiments/vector_sac.py --level "$level" --seed "$seed" \
    --results-dir "/tmp/sweep/$i" --set train.progress_bar=false --set train.video=false $rest \
    > "/tmp/sweep_$i.log" 2>&1 &
  pids+=($!); i=$((i+1))
done
sleep "$secs"; kill -TERM "${pids[@]}" 2>/dev/null; wait
echo "run,spec,step,mean_return,std_return,min_return,max_return,mean_length,episodes,wall_time_s" > "$out/sweep_eval.csv"
i=0
for spec in "$@"; do
  f=$(ls /tmp/sweep/$i/*/*/eval.csv 2>/dev/null | head -1)
  [ -n "$f" ] && tail -n +2 "$f" | tr -d '\r' | sed "s|^|$i,\"$spec\",|" >> "$out/sweep_eval.csv"
  tail -2 "/tmp/sweep_$i.log"; i=$((i+1))
done
cat "$out/sweep_eval.csv"
