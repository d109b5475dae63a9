"""Seconds per gradient step of ``agent.update`` with NatureCNN's convs as GEMMs vs as the
backend's convolutions, one form per process (so neither warms the other's caches), for the
sizes where a full ``update_throughput.py`` run would take hours on a CPU (256x256 with XLA's
CPU convolutions: ~28 s per step at K = 1).

    python benchmarks/conv_forms.py --side 256 --k 1 --form gemm --calls 2
    for f in gemm conv; do python benchmarks/conv_forms.py --side 84 --k 1 --form $f --calls 5; done
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import update_throughput as ut  # noqa: E402

from dodgerl.agents import sac  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=84, help="square image side")
    p.add_argument("--k", type=int, default=1, help="gradient steps per update call")
    p.add_argument("--form", choices=("gemm", "conv"), required=True)
    p.add_argument("--calls", type=int, default=3, help="timed calls after the first")
    args = p.parse_args()
    sac.set_impl_options(conv_gemm=args.form == "gemm")
    shape = (args.side, args.side, 3)
    agent = sac.create(jax.random.key(0), gymnasium.spaces.Box(0, 255, shape, np.uint8),
                       gymnasium.spaces.Box(-1.0, 1.0, (ut.ACTION_DIM,), np.float32),
                       sac.SACConfig(batch_size=64))
    batch, key = ut._batch(shape, np.uint8, args.k, 64), jax.random.key(1)
    times = []
    for _ in range(args.calls + 1):
        start = time.perf_counter()
        agent, metrics = agent.update(batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    per_step = [round(1e3 * t / args.k, 1) for t in times[1:]]
    print(f"{jax.default_backend()} side {args.side} K={args.k} {args.form}: first call "
          f"{times[0]:.1f} s, then ms per grad step {per_step}", flush=True)


if __name__ == "__main__":
    main()
