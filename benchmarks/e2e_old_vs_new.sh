#!/usr/bin/env bash
# Issue 28's speed check, one device call: the fastest end-to-end cases of the tree before the
# training-loop redesign (in .oldtree/: `git archive 5a32439 dodgerl benchmarks configs experiments`,
# run with their speed flags) against the new tree's plan cases (learning keys only, no perf
# override), old and new alternating per observation, 50K env steps each after the warm-up.
#   bash benchmarks/e2e_old_vs_new.sh        # OUT=dir for the tarball of every case's output
#   PAIRS="img256_bf16_evalbg:img256_plan img256_plan:img256_bf16_evalbg" bash benchmarks/e2e_old_vs_new.sh
# (PAIRS: old:new case pairs, run in that order; the second pair above runs new before old.)
set -u
out=${OUT:-/tmp/e2e_ab_out}
work=/tmp/e2e_ab
steps=${STEPS:-50000}
mkdir -p "$out" "$work"
pairs=${PAIRS:-"img256_bf16_evalbg:img256_plan img84_bf16_evalproc_32envs:img84_plan_32envs vector_64envs_evalproc:vector_plan_64envs"}
i=0
for pair in $pairs; do
  i=$((i + 1))
  first=${pair%%:*} second=${pair##*:}
  if [[ $first == *_plan* ]]; then order="new old"; new=$first old=$second; else order="old new"; old=$first new=$second; fi
  for which in $order; do
    if [[ $which == old ]]; then
      echo "== $i old $old"
      (cd .oldtree && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/e2e_throughput.py --cases "$old" \
         --steps "$steps" --out "$work/${i}_old_$old" --workdir /tmp/runs_old) > "$work/${i}_old_$old.log" 2>&1
      grep -m1 "^| $old" "$work/${i}_old_$old.log" || tail -5 "$work/${i}_old_$old.log"
    else
      echo "== $i new $new"
      PYTHONPATH=/tmp/site:$PWD python3 benchmarks/e2e_throughput.py --cases "$new" --steps "$steps" \
         --out "$work/${i}_new_$new" --workdir /tmp/runs_new > "$work/${i}_new_$new.log" 2>&1
      grep -m1 "^| $new" "$work/${i}_new_$new.log" || tail -5 "$work/${i}_new_$new.log"
    fi
    tar czf "$out/e2e_ab.tgz" -C "$work" .
  done
done
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
