#!/usr/bin/env bash
# Issue 28's speed check, one device call: the fastest end-to-end cases of the tree before the
# training-loop redesign (in .oldtree/: `git archive 5a32439 dodgerl benchmarks configs experiments`,
# run with their speed flags) against the new tree's plan cases (learning keys only, no perf
# override), old and new alternating per observation, 50K env steps each after the warm-up.
#   bash benchmarks/e2e_old_vs_new.sh        # OUT=dir for the tarball of every case's output
set -u
out=${OUT:-/tmp/e2e_ab_out}
work=/tmp/e2e_ab
steps=${STEPS:-50000}
mkdir -p "$out" "$work"
for pair in img256_bf16_evalbg:img256_plan img84_bf16_evalproc_32envs:img84_plan_32envs \
            vector_64envs_evalproc:vector_plan_64envs; do
  old=${pair%%:*} new=${pair##*:}
  echo "== old $old"
  (cd .oldtree && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/e2e_throughput.py --cases "$old" \
     --steps "$steps" --out "$work/old_$old" --workdir /tmp/runs_old) > "$work/old_$old.log" 2>&1
  grep "^| $old" "$work/old_$old.log" || tail -5 "$work/old_$old.log"
  echo "== new $new"
  PYTHONPATH=/tmp/site:$PWD python3 benchmarks/e2e_throughput.py --cases "$new" --steps "$steps" \
     --out "$work/new_$new" --workdir /tmp/runs_new > "$work/new_$new.log" 2>&1
  grep "^| $new" "$work/new_$new.log" || tail -5 "$work/new_$new.log"
  tar czf "$out/e2e_ab.tgz" -C "$work" .
done
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
