#!/usr/bin/env bash
# Many seeds in one process against one seed alone, every pair in one call on one machine
# (issue 29): 84x84 (drq84 config) 1 vs 5 seeds, the vector config 1 vs 10, 256x256 1 vs 3;
# shipped256_seeds1,shipped256_seeds3 and shipped84_seeds1,shipped84_seeds5 are the main
# command's config (configs/sac_topdown_cnn_easy.yaml) at 256x256 and at 84x84;
# 16 envs per seed, UTD 1, evaluation every 10K and a checkpoint every 10K env steps included.
# The report (report.md, e2e.json, per-case CSVs) goes to $OUT (default results/benchmarks/seeds).
#   bash benchmarks/seeds_speed.sh            # CASES=... STEPS=... BUDGET_S=... to change
set -u
out=${OUT:-results/benchmarks/seeds}
# Three 256x256 replay mirrors (19.7 GB each) need more than JAX's default 75% of an 80 GB GPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
cases=${CASES:-img84_drq_seeds1,img84_drq_seeds5,vector_seeds1,vector_seeds10,img256_seeds1,img256_seeds3}
python benchmarks/e2e_throughput.py --cases "$cases" --steps "${STEPS:-20000}" \
  --set train.checkpoint_freq=10000 --out "$out" --budget-s "${BUDGET_S:-470}"
