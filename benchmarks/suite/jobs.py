"""A suite split into jobs, and the jobs merged into one report.

A GPU command here may run 10 minutes; the ``full`` suite's learning rows (3 levels x 3
observations x 5 seeds) take far longer. So a job runs part of a suite: some of its sections
(``--sections``), some learning observations (``--obs``), some levels (``--levels``). Each job
writes its own ``results.json``; ``--merge DIR ...`` reads the jobs' files and writes the report
of all of them, as if one command had run every row. Sections a job skipped hold empty rows, so
any job's own report still renders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SECTIONS = ("env", "update", "e2e", "reference", "learning", "peer")
"""What a job may run, in the order the suite runs them."""


def restrict(settings: Any, obs: list[str] | None, levels: list[int] | None) -> Any:
    """``settings`` with only these learning observations (keys as ``ObsSetting.update_case``:
    vector, img84, img256) and levels. ValueError naming the unknown ones."""
    changes: dict[str, Any] = {}
    if obs is not None:
        known = {o.update_case: o for o in settings.learning_obs}
        unknown = [o for o in obs if o not in known]
        if unknown:
            raise ValueError(f"--obs {','.join(unknown)}: suite {settings.name!r} learns from "
                             f"{', '.join(known)}")
        changes["learning_obs"] = tuple(known[o] for o in obs)
    if levels is not None:
        unknown = [lv for lv in levels if lv not in settings.levels]
        if unknown:
            raise ValueError(f"--levels {','.join(map(str, unknown))}: suite {settings.name!r} "
                             f"runs levels {', '.join(map(str, settings.levels))}")
        changes["levels"] = tuple(levels)
    return dataclasses.replace(settings, **changes)


def parse_sections(text: str | None) -> tuple[str, ...]:
    if text is None:
        return SECTIONS
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"--sections {text!r}: choose from {', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


EMPTY: dict[str, Any] = {
    "env_throughput": {"level": 1, "rows": [], "render_only": []},
    "update_throughput": [],
    "end_to_end": [],
    "reference": [],
    "learning": [],
    "peer": {"available": False, "note": "not run by this job (--sections)."},
}


def merge(dirs: list[Path]) -> dict[str, Any]:
    """The results of several jobs of one suite as one: rows concatenated in the jobs' order (a
    learning run or a reference policy twice, same observation, level and seed: the first
    job's kept), the peer of the first job that ran it, the cost's peaks, the summed wall time,
    every job's command and machine. ValueError if the jobs ran different suites or a directory
    has no results."""
    jobs = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ValueError(f"--merge {d}: no results.json there (run a suite job with --out {d})")
        jobs.append(json.loads(path.read_text()))
    suites = {j["suite"] for j in jobs}
    if len(suites) != 1:
        raise ValueError(f"--merge: the jobs ran different suites ({', '.join(sorted(suites))})")
    merged = dict(jobs[0])
    merged["jobs"] = [{"dir": str(d), "command": j["command"], "started": j["started"],
                       "machine": j["machine"], "sections": j.get("sections", list(SECTIONS)),
                       "suite_wall_s": j["suite_wall_s"]} for d, j in zip(dirs, jobs)]
    merged["command"] = " ; ".join(j["command"] for j in jobs)
    merged["sections"] = [s for s in SECTIONS if any(s in j.get("sections", SECTIONS) for j in jobs)]
    merged["env_throughput"] = {
        "level": 1,
        "rows": [r for j in jobs for r in j["env_throughput"]["rows"]],
        "render_only": [r for j in jobs for r in j["env_throughput"]["render_only"]],
    }
    for key in ("update_throughput", "end_to_end"):
        merged[key] = [r for j in jobs for r in j[key]]
    merged["reference"] = _first_of_each(jobs, "reference", ("level", "policy"))
    learning = merged["learning"] = _first_of_each(jobs, "learning", ("obs", "level", "seed"))
    merged["peer"] = next((j["peer"] for j in jobs if j["peer"].get("available")), jobs[0]["peer"])
    merged["cost"] = {k: max(j["cost"].get(k) or 0 for j in jobs) for k in jobs[0]["cost"]}
    merged["suite_wall_s"] = sum(j["suite_wall_s"] for j in jobs)
    merged["load_average_at_end"] = jobs[-1]["load_average_at_end"]
    levels = sorted({r["level"] for r in learning} | set(jobs[0]["settings"]["levels"]))
    merged["settings"] = {**jobs[0]["settings"], "levels": levels}
    merged.pop("summary", None)
    merged.pop("plots", None)
    return merged


def _first_of_each(jobs: list[dict[str, Any]], key: str, identity: tuple[str, ...]) -> list[dict[str, Any]]:
    """The jobs' ``key`` rows in order, a row whose ``identity`` fields an earlier one had left out."""
    seen, rows = set(), []
    for j in jobs:
        for r in j[key]:
            ident = tuple(r[f] for f in identity)
            if ident not in seen:
                seen.add(ident)
                rows.append(r)
    return rows
