"""Runs unchanged: the same seed and config give the pinned runs (first those of the tree before
the training-loop redesign of issue 28; since the replay's draw changed, those of the tree after
it: tests/data/redesign_baseline/README.md says how and when they were made)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dodgerl.cli import main as cli_main
from tests.test_train import only_run_dir

BASELINE = Path(__file__).resolve().parent / "data" / "redesign_baseline"
EXACT = ("step", "episodes", "updates", "train_return", "train_length", "mean_return",
         "std_return", "min_return", "max_return", "mean_length")
"""Counters and returns must match exactly; losses, temperature and Q to float rounding."""


def rows(path: Path, fields: list[str]) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: r[k] for k in fields} for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", ["vector", "topdown"])
def test_a_run_equals_the_run_of_the_tree_before_the_redesign(tmp_path, name):
    assert cli_main(name, ["--config", str(BASELINE / name / "config.yaml"),
                           "--results-dir", str(tmp_path)]) == 0
    run_dir = only_run_dir(tmp_path)
    for log in ("progress.csv", "eval.csv"):
        with (BASELINE / name / log).open(newline="") as f:
            fields = next(csv.reader(f))
        before, now = rows(BASELINE / name / log, fields), rows(run_dir / log, fields)
        assert len(now) == len(before) and len(before) >= 3
        for old, new in zip(before, now):
            for key in fields:
                if key in EXACT or old[key] == "":
                    assert new[key] == old[key], (log, old["step"], key)
                else:
                    np.testing.assert_allclose(float(new[key]), float(old[key]), rtol=1e-5,
                                               err_msg=f"{log} step {old['step']} {key}")
