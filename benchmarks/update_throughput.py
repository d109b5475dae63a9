"""SAC update throughput: gradient steps per second of ``agent.update`` on whatever device JAX has.

Cases: vector obs (65-dim, batch 256), images at 84x84 and 256x256 (RGB, batch 64), each with
K = 1 and K = 8 steps per compiled call, images in fp32 and bf16 encoder compute. Batches sit on
the device before timing; the compile/warm-up call is excluded; each repeat times ``calls``
update calls ended by ``block_until_ready``; the median over repeats is reported.

Beside each row at the K values of ``--peer-ks`` (default 8), the same shapes through the peer,
``benchmarks/minimal_sac.py`` (a minimal textbook jitted JAX SAC, the kind of program issue 3's
anchors were taken with), timed the same way in the same process: the ``ours / peer`` column is
the machine-independent figure (absolute rates differ 2x between machines of one kind).

Then ``act`` latency (``--act-cases``): one numpy observation in, the action back as numpy, as an
env loop calls it, through ``agent.act`` and through the old ``jax.jit(lambda a, o, k:
a.act(o, k))`` pattern; the median over ``--act-calls`` calls.

    python benchmarks/update_throughput.py                       # all cases
    python benchmarks/update_throughput.py --cases vector,img84  # what fits on a slow CPU
    python benchmarks/update_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import minimal_sac  # noqa: E402

from dodgerl.agents import sac  # noqa: E402

VECTOR_DIM = 65
ACTION_DIM = 2
CASES = {
    # name: (observation shape, dtype, batch size)
    "vector": ((VECTOR_DIM,), np.float32, 256),
    "img84": ((84, 84, 3), np.uint8, 64),
    "img256": ((256, 256, 3), np.uint8, 64),
}


def _batch(shape, dtype, k, b, seed=0) -> sac.Batch:
    rng = np.random.default_rng(seed)

    def obs():
        if dtype == np.uint8:
            return rng.integers(0, 256, (k, b, *shape), dtype=np.uint8)
        return rng.normal(size=(k, b, *shape)).astype(np.float32)

    batch = sac.Batch(
        observations=obs(),
        actions=rng.uniform(-1, 1, (k, b, ACTION_DIM)).astype(np.float32),
        rewards=rng.normal(size=(k, b)).astype(np.float32),
        next_observations=obs(),
        terminated=(rng.uniform(size=(k, b)) < 0.01).astype(np.float32),
    )
    return jax.device_put(batch)


def measure(case: str, k: int, bf16: bool, repeats: int, min_steps: int,
            config_overrides: dict) -> dict:
    shape, dtype, batch_size = CASES[case]
    low, high = (0, 255) if dtype == np.uint8 else (-np.inf, np.inf)
    observation_space = gymnasium.spaces.Box(low, high, shape, dtype)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    config = sac.SACConfig(batch_size=batch_size, bf16_encoder=bf16, **config_overrides)
    agent = sac.create(jax.random.key(0), observation_space, action_space, config)
    batch = _batch(shape, dtype, k, batch_size)
    keys = jax.random.split(jax.random.key(1), 4)
    holder = [agent, 0]

    def run():
        # The first call (timed apart as compile) uses keys[0], the timed ones keys[1].
        holder[0], metrics = holder[0].update(batch, keys[min(holder[1], 1)])
        holder[1] += 1
        return holder[0], metrics

    timed = _timed(run, k, repeats, min_steps)
    return {
        "case": case,
        "obs_shape": list(shape),
        "batch_size": batch_size,
        "k": k,
        "encoder_dtype": "bf16" if bf16 else "fp32",
        "steps_per_call": k,
        **timed,
        "compiles": sac._update_jit._cache_size(),
    }


def _timed(run, k: int, repeats: int, min_steps: int) -> dict:
    """Time ``run()`` (one update call of K steps; returns something to block on): the first
    call apart (compile), then ``repeats`` repeats of enough calls for ``min_steps`` steps."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - start
    calls = max(1, -(-min_steps // k))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = run()
        jax.block_until_ready(out)
        timings.append(time.perf_counter() - start)
    median = statistics.median(timings)
    return {"calls_per_repeat": calls, "repeats": repeats,
            "grad_steps_per_s": calls * k / median, "median_s_per_step": median / (calls * k),
            "min_s_per_step": min(timings) / (calls * k), "first_call_s": compile_s}


def measure_peer(case: str, k: int, bf16: bool, repeats: int, min_steps: int) -> dict:
    """The same shapes through ``minimal_sac`` (the peer), timed as ``measure``."""
    shape, dtype, batch_size = CASES[case]
    states = minimal_sac.create(jax.random.key(0), shape, ACTION_DIM,
                                jnp.bfloat16 if bf16 else jnp.float32)
    b = _batch(shape, dtype, k, batch_size)
    batch = (b.observations, b.actions, b.rewards, b.next_observations, b.terminated)
    key = jax.random.key(1)
    holder = [states]

    def run():
        holder[0], loss = minimal_sac.update(holder[0], batch, key)
        return loss

    return {"case": case, "k": k, "encoder_dtype": "bf16" if bf16 else "fp32",
            **_timed(run, k, repeats, min_steps)}


def measure_act(case: str, bf16: bool, calls: int, whole_agent_jit: bool) -> dict:
    """Latency of one ``act`` call on a single numpy observation, action back on the host (what an
    env loop pays per step). ``whole_agent_jit`` times the old pattern, ``jax.jit(lambda a, o, k:
    a.act(o, k))``, which passes the whole agent (optimiser states included) through jit."""
    shape, dtype, _ = CASES[case]
    low, high = (0, 255) if dtype == np.uint8 else (-np.inf, np.inf)
    observation_space = gymnasium.spaces.Box(low, high, shape, dtype)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    agent = sac.create(jax.random.key(0), observation_space, action_space,
                       sac.SACConfig(bf16_encoder=bf16))
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        obs = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]
    else:
        obs = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    keys = list(jax.random.split(jax.random.key(2), 4))
    act = jax.jit(lambda a, o, k: a.act(o, k)) if whole_agent_jit else (
        lambda a, o, k: a.act(o, k))
    for i in range(3):
        np.asarray(act(agent, obs[i % 4], keys[i % 4]))
    times = []
    for i in range(calls):
        start = time.perf_counter()
        np.asarray(act(agent, obs[i % 4], keys[i % 4]))
        times.append(time.perf_counter() - start)
    return {
        "case": f"act {case}",
        "obs_shape": list(shape),
        "encoder_dtype": "bf16" if bf16 else "fp32",
        "path": "jit(whole agent)" if whole_agent_jit else "agent.act",
        "median_ms": 1e3 * statistics.median(times),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="vector,img84,img256",
                        help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--ks", default="1,8", help="steps per update call, comma-separated")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="image encoder compute dtypes (vector always fp32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-steps", type=int, default=200,
                        help="gradient steps per timed repeat (rounded up to whole calls)")
    parser.add_argument("--net-arch", default="256,256", help="head widths")
    parser.add_argument("--encoder-sharing", default="critic", choices=sac.ENCODER_SHARING_MODES)
    parser.add_argument("--augmentation", action="store_true", help="random shift on images")
    parser.add_argument("--peer-ks", default="8",
                        help="K values at which the peer (benchmarks/minimal_sac.py) is timed "
                             "beside ours; '' for none")
    parser.add_argument("--act-cases", default="vector,img256",
                        help="cases for the act latency rows (single obs, action to host); '' "
                             "for none")
    parser.add_argument("--act-calls", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    ks = [int(k) for k in args.ks.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    overrides = {
        "net_arch": tuple(int(w) for w in args.net_arch.split(",")),
        "encoder_sharing": args.encoder_sharing,
        "augmentation": args.augmentation,
    }

    peer_ks = [int(k) for k in args.peer_ks.split(",") if k]
    default_sac = overrides == {"net_arch": (256, 256), "encoder_sharing": "critic",
                                "augmentation": False}
    if peer_ks and not default_sac:
        parser.error("the peer has the default shapes only: drop --peer-ks or the overrides")
    results = []
    for case in cases:
        for bf16 in ([False] if case == "vector" else [d == "bf16" for d in dtypes]):
            for k in ks:
                result = measure(case, k, bf16, args.repeats, args.min_steps, overrides)
                if k in peer_ks:
                    result["peer"] = measure_peer(case, k, bf16, args.repeats, args.min_steps)
                results.append(result)
                peer = result.get("peer")
                print(f"# {case} K={k} {result['encoder_dtype']}: "
                      f"{result['grad_steps_per_s']:.1f} steps/s"
                      + (f", peer {peer['grad_steps_per_s']:.1f}" if peer else ""),
                      file=sys.stderr, flush=True)

    act_results = []
    for case in [c for c in args.act_cases.split(",") if c]:
        if case not in CASES:
            parser.error(f"unknown act case {case}; choose from {list(CASES)}")
        for whole in (False, True):
            r = measure_act(case, False, args.act_calls, whole)
            act_results.append(r)
            print(f"# act {case} {r['path']}: {r['median_ms']:.3f} ms", file=sys.stderr,
                  flush=True)

    devices = [str(d) for d in jax.devices()]
    print(f"SAC update throughput - device: {devices}, jax {jax.__version__}, "
          f"backend {jax.default_backend()}, python {platform.python_version()}, "
          f"net_arch {overrides['net_arch']}, sharing {args.encoder_sharing}, "
          f"augmentation {args.augmentation}\n")
    print("| case | obs | batch | K | encoder | grad steps/s | ms/step (median) | first call s "
          "| peer grad steps/s | ours / peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        peer = r.get("peer")
        print(f"| {r['case']} | {'x'.join(map(str, r['obs_shape']))} | {r['batch_size']} | "
              f"{r['k']} | {r['encoder_dtype'] if r['case'] != 'vector' else '-'} | "
              f"{r['grad_steps_per_s']:.1f} | {1e3 * r['median_s_per_step']:.3f} | "
              f"{r['first_call_s']:.1f} | "
              + (f"{peer['grad_steps_per_s']:.1f} | "
                 f"{r['grad_steps_per_s'] / peer['grad_steps_per_s']:.2f}x |" if peer
                 else "- | - |"))
    if act_results:
        print("\n| act (single obs, action to host) | obs | path | median ms | p90 ms |")
        print("| --- | --- | --- | --- | --- |")
        for r in act_results:
            print(f"| {r['case']} | {'x'.join(map(str, r['obs_shape']))} | {r['path']} | "
                  f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "devices": devices,
            "backend": jax.default_backend(),
            "jax_version": jax.__version__,
            "python": platform.python_version(),
            "settings": {**vars(args), "json": str(args.json)},
            "results": results,
            "act": act_results,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
