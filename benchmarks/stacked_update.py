"""The update of N stacked seeds against one seed's, per form of the convolutions (issue 29).

For each case (image side, frames, augmentation and encoder dtype as the configs have them) and
each ``agent.impl.conv_gemm`` setting, times K gradient steps per call of one agent
(``agent.update``) and of N stacked agents (``sac.seeds.update_stacked``), batches on the device,
the compile call excluded, the median over repeats. The figure is ``per seed``: the stacked
call's time per seed-step over one seed's time per step (1.0: stacking is free; N: no gain).

    python benchmarks/stacked_update.py --cases img84_drq,img256 --seeds 5,3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import gymnasium
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_throughput import ACTION_DIM, _batch, _timed  # noqa: E402

from dodgerl.agents import sac  # noqa: E402
from dodgerl.agents.sac import seeds  # noqa: E402

CASES = {
    # name: (observation shape, batch size, SACConfig fields) as the shipped configs set them
    "img84_drq": ((84, 84, 9), 64, {"augmentation": True, "augmentation_pad": 4}),
    "img256": ((256, 256, 3), 64, {"bf16_encoder": True}),
    "vector": ((65,), 256, {}),
}


def measure(case: str, n: int, conv_gemm: bool | None, k: int, repeats: int,
            min_steps: int) -> dict:
    shape, batch_size, fields = CASES[case]
    image = len(shape) == 3
    space = (gymnasium.spaces.Box(0, 255, shape, np.uint8) if image
             else gymnasium.spaces.Box(-np.inf, np.inf, shape, np.float32))
    actions = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    config = sac.SACConfig(batch_size=batch_size, impl=sac.ImplOptions(conv_gemm=conv_gemm),
                           **fields)
    dtype = np.uint8 if image else np.float32
    one = _batch(shape, dtype, k, batch_size)
    keys = jax.random.split(jax.random.key(1), n)
    single = sac.create(jax.random.key(0), space, actions, config)
    holder = [single]

    def run_single():
        holder[0], metrics = holder[0].update(one, keys[0])
        return metrics

    alone = _timed(run_single, k, repeats, min_steps)
    stacked = seeds.create_stacked(list(jax.random.split(jax.random.key(0), n)), space, actions,
                                   config)
    batch = jax.tree.map(lambda x: jax.numpy.stack([x] * n), one)
    held = [stacked]

    def run_stacked():
        held[0], metrics = seeds.update_stacked(held[0], batch, keys)
        return metrics

    together = _timed(run_stacked, k, repeats, min_steps)
    one_ms = 1e3 * alone["median_s_per_step"]
    n_ms = 1e3 * together["median_s_per_step"]
    return {"case": case, "seeds": n, "conv_gemm": conv_gemm, "k": k,
            "one_seed_ms_per_step": one_ms, "stacked_ms_per_call_step": n_ms,
            "per_seed": n_ms / n / one_ms, "stacked_vs_one": n_ms / one_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="img84_drq,img256")
    parser.add_argument("--seeds", default="5,3", help="N per case, in the order of --cases")
    parser.add_argument("--conv-gemm", default="default,true,false",
                        help="agent.impl.conv_gemm settings: default (None), true, false")
    parser.add_argument("--k", type=int, default=16, help="gradient steps per call (16 envs, UTD 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    forms = {"default": None, "true": True, "false": False}
    rows = []
    for case, n in zip(args.cases.split(","), (int(s) for s in args.seeds.split(","))):
        for form in args.conv_gemm.split(","):
            if len(CASES[case][0]) != 3 and form != "default":  # no convs to choose
                continue
            row = measure(case, n, forms[form], args.k, args.repeats, args.min_steps)
            rows.append(row)
            print(f"{case} N={n} conv_gemm={form}: one seed {row['one_seed_ms_per_step']:.3f} ms/step, "
                  f"{n} stacked {row['stacked_ms_per_call_step']:.3f} ms/step "
                  f"({row['stacked_vs_one']:.2f}x one seed's; per seed {row['per_seed']:.2f})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(jax.devices()[0].device_kind),
                                         "jax": jax.__version__, "host": platform.node(),
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
