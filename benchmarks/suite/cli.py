"""``python -m benchmarks --suite quick|full|tiny [--device cpu|gpu] [--out DIR]``; a part of a
suite with ``--sections`` / ``--obs`` / ``--levels``, several parts' report with ``--merge``
(``benchmarks/suite/jobs.py``)."""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite.settings import SUITES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dodgerl benchmark suite: env, update and end-to-end throughput, learning "
                    "curves (IQM, 95% stratified bootstrap CI), cost; writes report.md, PNG plots "
                    "and results.json.")
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick",
                        help="tiny (tests, seconds), quick (CPU smoke, < 15 min), full (GPU)")
    parser.add_argument("--tiny", action="store_true", help="same as --suite tiny")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where JAX runs the networks (sets JAX_PLATFORMS)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default results/benchmarks/<timestamp>/)")
    parser.add_argument("--rerender", type=Path, default=None, metavar="DIR",
                        help="only rebuild report.md and the plots from DIR/results.json")
    parser.add_argument("--sections", default=None, metavar="LIST",
                        help="run only these sections, comma-separated: env, update, e2e, "
                             "reference, learning, peer (default: all)")
    parser.add_argument("--obs", default=None, metavar="LIST",
                        help="learning rows of these observations only: vector, img84, img256")
    parser.add_argument("--levels", default=None, metavar="LIST",
                        help="learning and reference rows of these levels only, e.g. 1,3")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                        help="write one report (to --out) from the results.json of these jobs' "
                             "output directories, as if one command had run every row")
    args = parser.parse_args(argv)
    from benchmarks.suite import jobs

    if args.merge is not None:
        if args.out is None:
            parser.error("--merge needs --out (where the merged report goes)")
        try:
            results = jobs.merge(args.merge)
        except ValueError as e:
            parser.error(str(e))
        args.out.mkdir(parents=True, exist_ok=True)
        write_outputs(results, args.out)
        print(f"report: {args.out / 'report.md'} ({len(args.merge)} jobs)", flush=True)
        return 0
    try:
        sections = jobs.parse_sections(args.sections)
        obs = None if args.obs is None else [o.strip() for o in args.obs.split(",") if o.strip()]
        levels = None if args.levels is None else [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError as e:
        parser.error(str(e))
    if args.rerender is not None:
        results = json.loads((args.rerender / "results.json").read_text())
        write_outputs(results, args.rerender)
        print(f"report: {args.rerender / 'report.md'}", flush=True)
        return 0
    suite = "tiny" if args.tiny else args.suite
    command = "python -m benchmarks " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    # Before anything imports JAX: pin the backend, keep pygame headless.
    os.environ["JAX_PLATFORMS"] = "cpu" if args.device == "cpu" else "cuda"
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

    out = args.out or Path("results/benchmarks") / datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        settings = jobs.restrict(SUITES[suite], obs, levels)
    except ValueError as e:
        parser.error(str(e))
    results = run_suite(settings, args.device, command, sections)
    write_outputs(results, out)
    print(f"report: {out / 'report.md'}", flush=True)
    return 0


def run_suite(settings, device: str, command: str,
              sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every row of the report of these sections (default all), as plain data (what
    results.json holds); a skipped section's rows are empty."""
    import dataclasses

    from benchmarks.suite import jobs, measure
    from benchmarks.suite.machine import machine_info

    load_at_start = os.getloadavg()
    started = time.time()
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "suite": settings.name,
        "purpose": settings.purpose,
        "settings": dataclasses.asdict(settings),
        "command": command,
        "device": device,
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "load_average_at_start": list(load_at_start),
        "machine": machine_info(),
    }
    sections = jobs.SECTIONS if sections is None else sections
    results["sections"] = list(sections)
    measure.log(f"suite {settings.name} on {device}; sections {', '.join(sections)}; "
                f"load average {load_at_start}")
    results.update(copy.deepcopy(jobs.EMPTY))
    if "env" in sections:
        results["env_throughput"] = measure.env_throughput(settings)
    if "update" in sections:
        results["update_throughput"] = measure.update_throughput(settings)
    if "e2e" in sections:
        results["end_to_end"] = measure.end_to_end(settings)
    if "reference" in sections:
        results["reference"] = measure.reference_returns(settings)
    if "learning" in sections:
        with tempfile.TemporaryDirectory(prefix="dodgerl_learning_") as scratch:
            results["learning"] = measure.learning(settings, Path(scratch))
    if "peer" in sections:
        results["peer"] = measure.peer_sb3(settings, device, results["learning"])
    results["cost"] = {
        "suite_process_peak_rss_bytes": measure.host_peak_rss_bytes(),
        "suite_process_device_peak_bytes": measure.device_peak_bytes(),
    }
    results["load_average_at_end"] = list(os.getloadavg())
    results["suite_wall_s"] = time.perf_counter() - t0
    measure.log(f"suite done in {results['suite_wall_s']:.0f} s")
    return results


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from benchmarks.suite.report import write_plots, write_report
    from benchmarks.suite.summary import summarise

    results["summary"] = summarise(results)
    plots = write_plots(results, out)
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, out)
