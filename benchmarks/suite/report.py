"""report.md and the PNG plots of a suite run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.measure import PHASES

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def _short(y: float) -> str:
    """12345 -> '12.3k', 0.0172 -> '0.0172'."""
    if y >= 1e6:
        return f"{y / 1e6:.3g}M"
    if y >= 1e3:
        return f"{y / 1e3:.3g}k"
    return f"{y:.3g}"


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


# ----------------------------------------------------------------------------------------------
# plots


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    curves = results["summary"]["learning_curves"]
    refs = results["reference"]
    levels = sorted({c["level"] for c in curves})
    for xkey, xlabel, name in (("steps", "env steps", "learning_vs_steps.png"),
                               ("wall_s_mean", "wall-clock time (s, mean over seeds; includes "
                                               "evaluation)", "learning_vs_wallclock.png")):
        if not levels:
            break
        fig, axes = plt.subplots(1, len(levels), figsize=(6.2 * len(levels), 4.6), squeeze=False)
        for ax, level in zip(axes[0], levels):
            for i, c in enumerate(c for c in curves if c["level"] == level):
                x = np.array(c[xkey], dtype=float)
                color = COLORS[i % len(COLORS)]
                ax.plot(x, c["iqm"], color=color, marker="o", ms=3,
                        label=f"SAC, {c['obs']} (IQM, n={c['seeds']} seeds)")
                ax.fill_between(x, c["ci_low"], c["ci_high"], color=color, alpha=0.2,
                                label=f"95% CI, {c['obs']}")
            for r in refs:
                if r["level"] == level:
                    style = ":" if r["policy"] == "random" else "--"
                    ax.axhline(r["mean"], color="k" if r["policy"] == "heuristic" else "grey",
                               ls=style, lw=1.2,
                               label=f"{r['policy']} policy (mean of {r['episodes']} episodes)")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("eval return (mean over eval episodes)")
            ax.set_title(f"Level {level}: eval return vs {xlabel.split(' (')[0]}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        # Two lines: with one level the figure is narrow and a one-line title was cut off.
        fig.suptitle(f"dodgerl learning curves, suite '{results['suite']}' ({results['device']})\n"
                     "IQM over seeds with 95% stratified bootstrap CI", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    # throughput bars, log scale
    bars: list[tuple[str, str, float]] = []
    for r in results["env_throughput"]["rows"]:
        bars.append(("env steps/s (1 env)" if r["workers"] == 1 else
                     f"env steps/s ({r['workers']} async workers)",
                     r["obs"], r["steps_per_s"]))
    for r in results["env_throughput"]["render_only"]:
        bars.append(("render-only frames/s", r["obs"], r["frames_per_s"]))
    for r in results["update_throughput"]:
        bars.append(("gradient steps/s", r["obs"], r["grad_steps_per_s"]))
    for r in results["end_to_end"]:
        s = r.get("steady") or {}
        if s.get("env_steps_per_s"):
            bars.append(("training env steps/s (UTD 1)", r["obs"], s["env_steps_per_s"]))
    if not bars:  # a job that ran no throughput section (benchmarks/suite/jobs.py)
        return files
    metrics = list(dict.fromkeys(b[0] for b in bars))
    obs_labels = list(dict.fromkeys(b[1] for b in bars))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(obs_labels))
    for j, obs in enumerate(obs_labels):
        xs, ys = [], []
        for i, m in enumerate(metrics):
            v = next((b[2] for b in bars if b[0] == m and b[1] == obs), None)
            if v:
                xs.append(i + (j - (len(obs_labels) - 1) / 2) * width)
                ys.append(v)
        rects = ax.bar(xs, ys, width, label=obs, color=COLORS[j % len(COLORS)])
        ax.bar_label(rects, labels=[_short(y) for y in ys], fontsize=7, rotation=90, padding=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(metrics)), metrics, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("rate (per second, log scale)")
    ax.set_title(f"dodgerl throughput, suite '{results['suite']}' on {results['device']} "
                 f"({results['machine']['cores']} cores; load avg at start "
                 f"{results['load_average_at_start'][0]:.1f})", fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(title="observation", fontsize=8)
    ylo, yhi = ax.get_ylim()
    ax.set_ylim(ylo, yhi * 30)  # room for the value labels
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    files.append("throughput.png")
    return files


# ----------------------------------------------------------------------------------------------
# report.md


def write_report(results: dict[str, Any], out: Path) -> None:
    m = results["machine"]
    s = results["settings"]
    L: list[str] = []
    add = L.append
    add(f"# dodgerl benchmark report: suite `{results['suite']}`\n")
    add(f"*{results['purpose']}.*\n")
    add(f"Command: `{results['command']}`  \nStarted {results['started']}, suite wall time "
        f"{results['suite_wall_s'] / 60:.1f} min. All timings below were taken on the machine "
        f"described here, which may have been shared with other jobs: load average at start "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_at_start'])} (1/5/15 min), at end "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_at_end'])}.\n")
    if results.get("jobs"):
        add(f"Merged from {len(results['jobs'])} jobs (`python -m benchmarks --merge`), each a "
            "part of the suite; the machine table below is the first job's:\n")
        add("| job | sections | started | GPU | wall min | command |\n| ---: | --- | --- | --- | ---: | --- |")
        for i, j in enumerate(results["jobs"], 1):
            add(f"| {i} | {', '.join(j['sections'])} | {j['started']} | {j['machine'].get('gpu') or 'none'} "
                f"| {j['suite_wall_s'] / 60:.1f} | `{j['command']}` |")
        add("")
    elif results.get("sections") and len(results["sections"]) < 6:
        add(f"Sections run by this job: {', '.join(results['sections'])} (the others' rows are "
            "empty; `--merge` joins jobs).\n")

    add("## Machine and versions\n")
    add("| item | value |\n| --- | --- |")
    add(f"| CPU | {m['cpu']} |")
    add(f"| cores | {m['cores']} ({m['cores_usable']} usable by this process) |")
    add(f"| memory | {_mb(m['memory_bytes'])} |")
    add(f"| GPU | {m['gpu'] or 'none'} |")
    add(f"| JAX backend / devices | {m['jax_backend']} / {', '.join(m['jax_devices'])} |")
    add(f"| git commit | {m['git_commit']}{' (dodgerl/ or benchmarks/ modified)' if m['git_dirty'] else ''} |")
    add(f"| platform | {m['hostname_platform']} |")
    add("| versions | " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + " |")
    add("")

    # 1. env
    add("## 1. Env throughput\n")
    add("Level 1, random actions, resets included; one env in this process (best of "
        f"{s['env_repeats']}, `benchmarks/env_throughput.py`'s `measure`) and a gymnasium "
        "AsyncVectorEnv (one subprocess per env; steps/s summed over envs). Image observations "
        "include rendering.\n")
    add("| observation | mode | env steps/s | us/step |\n| --- | --- | ---: | ---: |")
    for r in results["env_throughput"]["rows"]:
        add(f"| {r['obs']} | {r['mode']} | {r['steps_per_s']:,.0f} | {1e6 / r['steps_per_s']:,.1f} |")
    add("\nRender only (the env's rasterizer drawing recorded level-1 states, no physics):\n")
    add("| image | frames/s | us/frame |\n| --- | ---: | ---: |")
    for r in results["env_throughput"]["render_only"]:
        add(f"| {r['obs']} | {r['frames_per_s']:,.0f} | {1e6 / r['frames_per_s']:,.1f} |")
    add("")

    # 2. update
    add("## 2. Update throughput\n")
    add("SAC gradient steps/s of `agent.update` with one step per compiled call (K=1, as in "
        "training at UTD 1 with one env), fp32, batches already on the device, compilation "
        "excluded (`benchmarks/update_throughput.py`'s `measure`; median of repeats).\n")
    add("| observation | batch | agent overrides | grad steps/s | ms/step | first call (compile) s | timed steps |")
    add("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results["update_throughput"]:
        add(f"| {r['obs']} | {r['batch_size']} | {r['agent_overrides'] or 'configured'} | "
            f"{r['grad_steps_per_s']:,.2f} | {1e3 * r['median_s_per_step']:,.1f} | "
            f"{r['first_call_s']:.1f} | {r['calls_per_repeat'] * r['repeats']} |")
    add("")

    # 3. e2e
    add("## 3. End-to-end training throughput (UTD 1)\n")
    add("A real `dodgerl.train.train` run per observation type: level 1, one env, UTD 1, "
        "evaluation only at the end. *Steady state* is the window between the first and last "
        "`progress.csv` rows after the first gradient step (so the update's compilation is left "
        "out); *whole run* is `TrainResult.timings` over the run (compilation, warm-up and the "
        "final evaluation included). Phases: act (policy forward), env (physics + rendering for "
        "images), insert (replay add), sample (waiting for the prefetched batch), update "
        "(gradient step, waited for), eval; other = loop overhead, logging, checkpoint.\n")
    add("| observation | batch | budget (steps / warm-up) | steady env steps/s | steady window | "
        + " | ".join(f"{p} %" for p in PHASES[:-1]) + " | other % | whole-run wall s | "
        + " | ".join(f"{p} s" for p in PHASES) + " |")
    add("| --- | ---: | --- | ---: | --- | " + " | ".join("---:" for _ in PHASES[:-1])
        + " | ---: | ---: | " + " | ".join("---:" for _ in PHASES) + " |")
    for r in results["end_to_end"]:
        if "error" in r:
            add(f"| {r['obs']} | failed: see results.json |")
            continue
        st = r.get("steady")
        b = r["budget"]
        if st and st["wall_s"] > 0:
            pct = " | ".join(f"{100 * st['phases_s'][p] / st['wall_s']:.1f}" for p in PHASES[:-1])
            steady = (f"{_num(st['env_steps_per_s'], 2)} | steps {int(st['from_step'])}-"
                      f"{int(st['to_step'])} ({st['wall_s']:.1f} s) | {pct} | "
                      f"{max(0.0, 100 * st['other_s'] / st['wall_s']):.1f}")
        else:
            steady = "n/a | n/a | " + " | ".join("n/a" for _ in PHASES[:-1]) + " | n/a"
        add(f"| {r['obs']} | {r['batch_size']} | {b['total_timesteps']} / {b['learning_starts']} | "
            f"{steady} | {r['wall_s']:.1f} | "
            + " | ".join(f"{r['timings'][p]:.2f}" for p in PHASES) + " |")
    add("")

    # 4. learning
    add("## 4. Learning: eval return vs env steps and wall-clock\n")
    add(f"Levels {', '.join(map(str, s['levels']))}; {s['seeds']} seeds per setting; each point "
        "is the IQM over seeds of the mean deterministic eval return, with a 95% percentile "
        f"bootstrap CI ({s['bootstrap_reps']} resamples; `benchmarks/suite/stats.py`). "
        "Each run trains the shipped config for its level and observation (what "
        "`experiments/{vector,topdown}_sac.py --level L` trains: its env, agent and replay "
        "sections and its parallel envs), at the row's image side, with the overrides below on "
        "top and the suite's budget; the throughput rows above use SACConfig's defaults. "
        "Configs:\n")
    shipped = sorted({(r["level"], r["obs"], r["agent_config"]) for r in results["learning"]
                      if "agent_config" in r})
    if shipped:
        add("| level | observation | config |\n| ---: | --- | --- |")
        for level, obs, name in shipped:
            add(f"| {level} | {obs} | `configs/{name}` |")
        add("")
    add("Budgets:\n")
    add("| observation | batch | overrides | env steps | warm-up | eval every | eval episodes |")
    add("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for ob in s["learning_obs"]:
        b = s["learning_budget"][ob["label"]]
        overrides = {**ob["agent"], **{f"env.{k}": v for k, v in ob.get("env", {}).items()}}
        add(f"| {ob['label']} | {ob['batch_size']} | {overrides or 'configured'} | "
            f"{b['total_timesteps']:,} | {b['learning_starts']:,} | {b['eval_freq']:,} | "
            f"{b['eval_episodes']} |")
    add("")
    for name in results.get("plots", []):
        if name.startswith("learning"):
            add(f"![{name}]({name})\n")
    add("Final evaluation (last eval point) per level, and reference policies on the same eval "
        "seeds:\n")
    add("| level | agent | env steps | IQM return | 95% CI | seeds | per-seed | mean wall-clock s |")
    add("| --- | --- | ---: | ---: | --- | ---: | --- | ---: |")
    for c in results["summary"]["learning_curves"]:
        f = c["final"]
        add(f"| {c['level']} | SAC, {c['obs']} | {f['step']:,} | {_num(f['iqm'])} | "
            f"[{_num(f['ci'][0])}, {_num(f['ci'][1])}] | {c['seeds']} | "
            f"{', '.join(_num(x[-1]) for x in c['per_seed'])} | {_num(f['wall_s'])} |")
    for r in results["reference"]:
        add(f"| {r['level']} | {r['policy']} policy | - | mean {r['mean']:.1f} | - | "
            f"{r['episodes']} episodes | - | - |")
    add("\nPooled over levels (IQM over seeds x levels, bootstrap stratified by level):\n")
    add("| agent | runs | IQM final return | 95% CI |\n| --- | ---: | ---: | --- |")
    for r in results["summary"]["final_pooled_over_levels"]:
        add(f"| SAC, {r['obs']} | {r['runs']} | {_num(r['iqm'])} | "
            f"[{_num(r['ci'][0])}, {_num(r['ci'][1])}] |")
    add("")

    # 5. cost
    add("## 5. Cost\n")
    add("From the end-to-end runs (each in its own process unless the suite says otherwise). Replay bytes per transition: the "
        "buffer's files (allocated blocks, `du`) divided by its capacity; the buffer is "
        "preallocated and stores one frame per transition. Checkpoint: `du` of the last "
        "`checkpoints/<step>/` directory. Peak host memory: the run's process's peak resident set (`VmHWM`, the per-address-space form of `ru_maxrss`, which a spawned process would inherit from its parent); the suite process row is its `ru_maxrss`. "
        "Device memory: `memory_stats()['peak_bytes_in_use']` of JAX device 0 (n/a when the "
        "backend reports none, e.g. CPU).\n")
    add("| observation | observation bytes | replay bytes/transition | checkpoint size | peak host memory | peak device memory |")
    add("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results["end_to_end"]:
        if "error" in r:
            continue
        add(f"| {r['obs']} | {r['observation_bytes']:,} | {r['replay_bytes_per_transition']:,.0f} | "
            f"{_mb(r['checkpoint_bytes'])} | {_mb(r['peak_rss_bytes'])} | "
            f"{_mb(r['device_peak_bytes'])} |")
    c = results["cost"]
    add(f"| (suite process: learning runs) | - | - | - | {_mb(c['suite_process_peak_rss_bytes'])} | "
        f"{_mb(c['suite_process_device_peak_bytes'])} |")
    add("")

    # peer
    add("## Peer: stable-baselines3 SAC\n")
    p = results["peer"]
    if not p.get("available"):
        add(f"Peer row skipped. {p['note'].strip()}\n")
    else:
        add(f"stable-baselines3 {p['version']} SAC (MlpPolicy for vectors, CnnPolicy for images) "
            "on the same env, batch and device as the level-1 seed-0 learning run.\n")
        capped = [r for r in p["rows"]
                  if r.get("dodgerl_steps") is None or r["steps"] < r["dodgerl_steps"]]
        if capped:
            add("SB3 ran fewer env steps than dodgerl here (the suite's `peer_steps` cap, with "
                "the same warm-up fraction): the returns are after different budgets and are not "
                "comparable, and the throughput ratio compares a short SB3 run (its start-up "
                "weighs more) with our whole learning run.\n")
        add("| observation | SB3 env steps | dodgerl env steps | SB3 steps/s | dodgerl steps/s | throughput ratio (dodgerl/SB3) | SB3 return | dodgerl return |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in p["rows"]:
            ours = r.get("dodgerl_steps")
            add(f"| {r['obs']} | {r['steps']:,} | {f'{ours:,}' if ours else '-'} | "
                f"{_num(r['sb3_steps_per_s'])} | "
                f"{_num(r['dodgerl_steps_per_s'])} | {_num(r['throughput_ratio'], 2)} | "
                f"{_num(r['sb3_return'])} | {_num(r['dodgerl_return'])} |")
        add("")

    add("## Plots\n")
    for name in results.get("plots", []):
        add(f"- [{name}]({name})")
    if "throughput.png" in results.get("plots", []):
        add("\n![throughput](throughput.png)\n")
    add("All raw numbers (per seed, per eval point, per phase) are in `results.json`.\n")
    (out / "report.md").write_text("\n".join(L))
