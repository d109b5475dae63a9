#!/usr/bin/env bash
# One device call: component benchmarks on the GPU machine, results under $OUT.
#   bash benchmarks/device_suite.sh components     # update, replay feed, env throughput
#   bash benchmarks/device_suite.sh train SECONDS  # default topdown level-1 run, SIGTERM after SECONDS
# Start the device command with the wheel-install line from shared/gpu/fetch-wheels.sh.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy PYGAME_HIDE_SUPPORT_PROMPT=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c 'import jax, flax, optax, numpy; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "numpy", numpy.__version__)'; } > "$out/machine.txt" 2>&1
case "${1:-components}" in
components)
  python3 benchmarks/update_throughput.py --json "$out/update.json" 2>&1 | tee "$out/update.md"
  python3 benchmarks/replay_throughput.py --dir /tmp/rb --json "$out/replay.json" --reopen-capacity 100000 2>&1 | tee "$out/replay.md"
  python3 benchmarks/env_throughput.py --steps 20000 --repeats 2 --json "$out/env.json" 2>&1 | tee "$out/env.md"
  ;;
train)
  secs=${2:-540}
  shift 2 || true
  python3 experiments/topdown_sac.py --level 1 --results-dir /tmp/results --set train.progress_bar=false "$@" > "$out/train.log" 2>&1 &
  pid=$!
  sleep "$secs"; kill -TERM $pid; wait $pid
  run=$(ls -d /tmp/results/*/* | head -1)
  cp "$run/progress.csv" "$run/eval.csv" "$run/config.yaml" "$out/"
  tail -5 "$out/train.log"; cat "$out/eval.csv"
  ;;
esac
