#!/usr/bin/env bash
# SAC update throughput under several XLA_FLAGS settings, each in its own process, one machine.
#   bash benchmarks/xla_flag_sweep.sh [CASES_ARGS...]   (writes $OUT/xla_flags/<variant>.{json,txt})
# The variants are the XLA GPU flags that bear on a launch-bound update: command buffers (CUDA
# graphs) off / on for more op kinds, the latency-hiding scheduler, Triton GEMMs off.
set -uo pipefail
out=${OUT:-/tmp/out}/xla_flags; mkdir -p "$out"
args=("$@"); [ ${#args[@]} -eq 0 ] && args=(--cases img84,img256 --ks 8 --dtypes fp32,bf16 --repeats 3 --min-steps 400 --act-cases '')
declare -A variants=(
  [a_default]=""
  [b_cmdbuf_off]="--xla_gpu_enable_command_buffer="
  [c_cmdbuf_all]="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN --xla_gpu_graph_min_graph_size=1"
  [d_lhs]="--xla_gpu_enable_latency_hiding_scheduler=true"
  [e_no_triton_gemm]="--xla_gpu_enable_triton_gemm=false"
)
for name in $(printf '%s\n' "${!variants[@]}" | sort); do
  echo "== $name: XLA_FLAGS='${variants[$name]}'" | tee "$out/$name.txt"
  XLA_FLAGS="${variants[$name]}" timeout 150 python3 benchmarks/update_throughput.py "${args[@]}" \
    --json "$out/$name.json" >> "$out/$name.txt" 2>&1
  echo "rc $?" >> "$out/$name.txt"; tail -8 "$out/$name.txt"
done
