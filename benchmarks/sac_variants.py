"""Compare implementation variants of the SAC update on one device, in one process.

Used to decide ``sac.ImplOptions`` defaults (docs/perf_notes.md). Three parts, each optional:

* ``--encoder``: NatureCNN forward and forward+backward (grad w.r.t. params) at batch 64, plain
  vs space-to-depth first conv vs convs as GEMMs, fp32 vs bf16;
* ``--profile``: a device trace of a few K=8 update calls, GPU kernels aggregated by name;
* ``--variants``: full ``agent.update`` throughput for ImplOptions variants (a base of
  ``VARIANTS`` and ``MODIFIERS`` suffixes: ``+gemm`` / ``+conv`` force the conv form,
  ``+todepth`` space-to-depth, ``+stacknext`` stacked next-obs encoders, ``+d4`` and
  ``+shift`` change the config; ``default`` is the shipped ImplOptions).

    python benchmarks/sac_variants.py --encoder --profile --variants --json out.json

On a CPU, where a 256x256 step with XLA's convolutions takes ~27 s, one form per process and one
call per repeat (``benchmarks/reports/update_cpu/v16_conv_forms.log``):

    python benchmarks/sac_variants.py --variants --plan "img256:fp32:default+conv" --k 1 --repeats 1 --min-steps 1
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import update_throughput as ut  # noqa: E402

from dodgerl.agents import sac  # noqa: E402
from dodgerl.envs.dodge_env import DODGE_ACTION_XY, DODGE_OBS_XY  # noqa: E402
from dodgerl.networks import NatureCNN  # noqa: E402

RESULTS: dict = {"encoder": [], "variants": [], "profile": {}}


def log(*a):
    print(*a, flush=True)


def _time(fn, *args, calls=20, repeats=3):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def encoder_bench():
    rng = np.random.default_rng(0)
    for side in (256, 84):
        x = jnp.asarray(rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8))
        params = NatureCNN().init(jax.random.key(0), x)
        for dtype in ("fp32", "bf16"):
            for s2d, gemm in ((False, False), (True, False), (True, True), (False, True)):
                for dense in (("bf16", "fp32") if dtype == "bf16" else ("fp32",)):
                    cnn = NatureCNN(dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32,
                                    dense_dtype=jnp.float32 if dense == "fp32" else jnp.bfloat16,
                                    space_to_depth=s2d, conv_gemm=gemm)
                    fwd = jax.jit(cnn.apply)
                    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(cnn.apply(p, x))))
                    r = {"side": side, "dtype": dtype, "dense": dense, "s2d": s2d, "gemm": gemm,
                         "fwd_ms": 1e3 * _time(fwd, params, x),
                         "fwd_bwd_ms": 1e3 * _time(grad, params, x)}
                    RESULTS["encoder"].append(r)
                    log(f"encoder {side} {dtype} dense={dense} s2d={s2d} gemm={gemm}: fwd {r['fwd_ms']:.3f} ms"
                        f"  fwd+bwd {r['fwd_bwd_ms']:.3f} ms")


def _with_impl(opts, overrides):
    """``overrides`` with the implementation options ``opts`` as its ``impl`` (SACConfig.impl)."""
    return {**overrides, "impl": sac.ImplOptions(**opts)}


def _agent(case, bf16, config_overrides=None):
    shape, dtype, batch_size = ut.CASES[case]
    import gymnasium
    low, high = (0, 255) if dtype == np.uint8 else (-np.inf, np.inf)
    obs_space = gymnasium.spaces.Box(low, high, shape, dtype)
    act_space = gymnasium.spaces.Box(-1.0, 1.0, (ut.ACTION_DIM,), np.float32)
    cfg = sac.SACConfig(batch_size=batch_size, bf16_encoder=bf16, **(config_overrides or {}))
    return sac.create(jax.random.key(0), obs_space, act_space, cfg), shape, dtype, batch_size


def profile(case, bf16, k=8, calls=4, top=30, variant=""):
    overrides = {}
    if variant:
        opts, overrides = split_variant(variant)
        overrides = _with_impl(opts, overrides)
    agent, shape, dtype, b = _agent(case, bf16, overrides)
    batch = ut._batch(shape, dtype, k, b)
    key = jax.random.key(1)
    for _ in range(2):
        agent, m = agent.update(batch, key)
    jax.block_until_ready((agent, m))
    tmp = tempfile.mkdtemp()
    jax.profiler.start_trace(tmp)
    start = time.perf_counter()
    for _ in range(calls):
        agent, m = agent.update(batch, key)
    jax.block_until_ready((agent, m))
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    name = f"{case}_{'bf16' if bf16 else 'fp32'}_k{k}" + (f"_{variant}" if variant else "")
    out = {"wall_ms_per_step": 1e3 * wall / (calls * k), "lines": {}}
    log(f"== profile {name}: wall {out['wall_ms_per_step']:.3f} ms/step (traced)")
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            agg = collections.defaultdict(lambda: [0, 0.0])
            first, last = None, None
            for ev in line.events:
                agg[ev.name][0] += 1
                agg[ev.name][1] += ev.duration_ns
                first = ev.start_ns if first is None else min(first, ev.start_ns)
                last = ev.end_ns if last is None else max(last, ev.end_ns)
            if not agg:
                continue
            total = sum(v[1] for v in agg.values())
            steps = calls * k
            span = (last - first) if first is not None else 0
            log(f"-- {plane.name} / {line.name}: {sum(v[0] for v in agg.values()) / steps:.1f} "
                f"events/step, busy {total / steps / 1e3:.1f} us/step, span "
                f"{span / steps / 1e3:.1f} us/step")
            rows = sorted(agg.items(), key=lambda kv: -kv[1][1])
            out["lines"][line.name] = [(n, c / steps, t / steps / 1e3) for n, (c, t) in rows[:60]]
            for n, (c, t) in rows[:top]:
                log(f"   {t / steps / 1e3:8.1f} us/step {c / steps:5.1f}x  {n[:150]}")
    RESULTS["profile"][name] = out


VARIANTS = {
    "default": {},
    "old": dict(conv1_space_to_depth=False, conv_gemm=False, concat_online=False, scan_unroll=1),
    "s2d": dict(conv1_space_to_depth=True, concat_online=False, scan_unroll=1),
    "s2d+unroll": dict(conv1_space_to_depth=True, concat_online=False, scan_unroll=8),
    "s2d+concat": dict(conv1_space_to_depth=True, concat_online=True, scan_unroll=1),
    "s2d+concat+unroll": dict(conv1_space_to_depth=True, concat_online=True, scan_unroll=8),
    "s2d+unroll+stacknext": dict(conv1_space_to_depth=True, concat_online=False, scan_unroll=8,
                                 stack_next=True),
    "s2d+unroll+noprecast": dict(conv1_space_to_depth=True, concat_online=False, scan_unroll=8,
                                 precast_encoder=False),
}


MODIFIERS = {
    # "+name" suffixes of a variant: (ImplOptions changes, SACConfig changes)
    "fp32dense": ({"bf16_dense": False}, {}),
    "gemm": ({"conv_gemm": True}, {}),
    "todepth": ({"conv1_space_to_depth": True}, {}),
    "stacknext": ({"stack_next": True}, {}),
    "conv": ({"conv_gemm": False}, {}),
    # The dodge env's planar pairs (its vector observation's; the images are rotated whole).
    "d4": ({}, {"symmetry": "d4", "symmetry_obs_xy": DODGE_OBS_XY,
                "symmetry_action_xy": DODGE_ACTION_XY}),
    "shift": ({}, {"augmentation": True}),
}


def split_variant(name):
    """A variant name, e.g. ``s2d+unroll+gemm+d4``, as (ImplOptions, SACConfig overrides): a
    base of ``VARIANTS`` then any ``MODIFIERS``."""
    parts = name.split("+")
    mods = []
    while parts and parts[-1] in MODIFIERS:
        mods.insert(0, parts.pop())
    opts, overrides = dict(VARIANTS["+".join(parts)]), {}
    for m in mods:
        opts.update(MODIFIERS[m][0])
        overrides.update(MODIFIERS[m][1])
    return opts, overrides


def variants(plan, k, repeats, min_steps=200):
    for case, dtype, names in plan:
        for name in names:
            opts, overrides = split_variant(name)
            r = ut.measure(case, k, dtype == "bf16", repeats, min_steps, _with_impl(opts, overrides))
            r["variant"] = name
            RESULTS["variants"].append(r)
            log(f"variant {case} {dtype} K={k} {name}: {r['grad_steps_per_s']:.1f} steps/s "
                f"({1e3 * r['median_s_per_step']:.3f} ms/step, first call {r['first_call_s']:.1f} s)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", action="store_true")
    p.add_argument("--profile", default="",
                   help="comma list of case:dtype[:variant], e.g. img256:fp32,img256:bf16:s2d")
    p.add_argument("--variants", action="store_true")
    p.add_argument("--plan", default="", help="case:dtype:v1/v2;... (default: built-in plan)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--top", type=int, default=30, help="kernels listed per profile")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=200,
                   help="grad steps per timed repeat of a variant (1: one call, for slow CPU cases)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    log(f"devices {jax.devices()} jax {jax.__version__} impl defaults {sac.ImplOptions()}")

    def dump():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(RESULTS, indent=1, default=str))

    if args.encoder:
        encoder_bench()
        dump()
    for item in filter(None, args.profile.split(",")):
        case, dtype, *variant = item.split(":")
        profile(case, dtype == "bf16", k=args.k, top=args.top,
                variant=variant[0] if variant else "")
        dump()
    if args.variants:
        if args.plan:
            plan = [(c, d, v.split("/")) for c, d, v in
                    (x.split(":") for x in args.plan.split(";"))]
        else:
            plan = [
                ("img256", "fp32", ["old", "s2d", "s2d+unroll", "s2d+concat+unroll"]),
                ("img256", "bf16", ["old", "s2d", "s2d+unroll", "s2d+concat+unroll",
                                    "s2d+unroll+fp32dense"]),
                ("img84", "fp32", ["old", "s2d", "s2d+unroll", "s2d+concat+unroll"]),
                ("img84", "bf16", ["s2d+unroll", "s2d+concat+unroll", "s2d+unroll+fp32dense"]),
            ]
        for entry in plan:
            variants([entry], args.k, args.repeats, args.min_steps)
            dump()
    dump()


if __name__ == "__main__":
    main()
