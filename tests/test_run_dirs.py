"""Run directories started at once get distinct names (the benchmark scripts start several
runs in the same second, under one results directory)."""

from concurrent.futures import ThreadPoolExecutor

from dodgerl.train.checkpointing import new_run_dir


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path, "exp"), range(8)))
    assert len(set(dirs)) == 8
    assert all(d.is_dir() and d.parent == tmp_path / "exp" for d in dirs)
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == sorted(d.name for d in dirs)
