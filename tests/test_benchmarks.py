"""The benchmark suite: IQM / bootstrap statistics on fixed data, and a full tiny-suite report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dodgerl.config import ConfigError, config_from_dict
from benchmarks.suite.stats import bootstrap_ci, bootstrap_replicates, curve_iqm_ci, iqm, trim_count


# ---------------------------------------------------------------------------------------- IQM

def test_iqm_of_1_to_8_is_mean_of_3_to_6():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    assert iqm(np.arange(8, 0, -1)) == pytest.approx(4.5)  # order does not matter


def test_iqm_ignores_outliers_in_the_tails():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 1000]) == pytest.approx(4.5)
    assert iqm([-1e6, 3, 4, 5, 6, 7, 8, 9]) == pytest.approx(iqm([2, 3, 4, 5, 6, 7, 8, 9]))


def test_iqm_fractional_sizes_round_the_cut_down():
    # floor(n / 4) dropped from each end (as scipy.stats.trim_mean(x, 0.25), used by rliable)
    assert [trim_count(n) for n in (1, 2, 3, 4, 5, 7, 8, 9)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)        # middle 3 of 5
    assert iqm([5, 7]) == pytest.approx(6.0)                   # nothing cut
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)             # middle 2 of 4
    assert iqm(np.arange(1, 10)) == pytest.approx(5.0)         # 3..7 of 1..9


def test_iqm_matches_scipy_trim_mean_when_available():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in range(1, 30):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_iqm_pools_runs_and_tasks_and_works_along_an_axis():
    x = np.arange(1, 9).reshape(4, 2)
    assert iqm(x) == pytest.approx(4.5)
    np.testing.assert_allclose(iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]]), axis=1), [2.5, 25])


# ---------------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_equals_hand_computed_percentiles_of_a_seeded_resampling():
    x = np.array([3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    reps, seed = 500, 42
    idx = np.random.default_rng(seed).integers(0, len(x), size=(reps, len(x), 1))
    by_hand = np.array([np.mean(np.sort(x[idx[r, :, 0]])[2:6]) for r in range(reps)])
    np.testing.assert_allclose(bootstrap_replicates(x, reps=reps, seed=seed), by_hand)
    point, low, high = bootstrap_ci(x, reps=reps, seed=seed)
    assert point == pytest.approx(iqm(x))
    assert low == pytest.approx(np.percentile(by_hand, 2.5))
    assert high == pytest.approx(np.percentile(by_hand, 97.5))


def test_bootstrap_is_stratified_by_task():
    # two tasks on very different scales: every replicate keeps 3 runs of each task
    scores = np.array([[0.0, 100.0], [1.0, 101.0], [2.0, 102.0]])
    seen = []
    reps = bootstrap_replicates(scores, statistic=lambda s: seen.append(s.copy()) or 0.0, reps=50)
    assert reps.shape == (50,)
    for s in seen:
        assert s.shape == (3, 2)
        assert np.all(s[:, 0] < 10) and np.all(s[:, 1] >= 100)


def test_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (8, 32, 256):
        x = rng.normal(10.0, 2.0, size=n)
        point, low, high = bootstrap_ci(x, reps=2000, seed=1)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_curve_iqm_ci_per_eval_point():
    curves = np.array([[0.0, 10.0, 20.0], [2.0, 12.0, 22.0], [4.0, 14.0, 24.0]])
    point, low, high = curve_iqm_ci(curves, reps=300)
    np.testing.assert_allclose(point, [2.0, 12.0, 22.0])
    assert np.all(low <= point) and np.all(point <= high)
    assert np.all(low >= curves.min(axis=0)) and np.all(high <= curves.max(axis=0))


# ----------------------------------------------------------------------------- tiny suite report

@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    from benchmarks.suite.cli import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["--suite", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_tiny_report_has_every_row(tiny_report):
    text = (tiny_report / "report.md").read_text()
    for heading in ("## Machine and versions", "## 1. Env throughput", "## 2. Update throughput",
                    "## 3. End-to-end training throughput (UTD 1)",
                    "## 4. Learning: eval return vs env steps and wall-clock", "## 5. Cost",
                    "## Peer: stable-baselines3 SAC"):
        assert heading in text, heading
    for row in ("| CPU |", "| cores |", "| GPU |", "| versions |", "jax 0.", "Command: `python -m benchmarks",
                "load average at start", "| vector | 1 env, in process |",
                "| vector | AsyncVectorEnv, 2 workers |", "| image 64x64 | 1 env, in process |",
                "Render only", "| vector (tiny net) | 256 |", "act %", "update %", "eval s",
                "random policy", "heuristic policy", "IQM return", "95% CI", "Pooled over levels",
                "replay bytes/transition", "checkpoint size", "peak host memory",
                "peak device memory"):
        assert row in text, row
    assert "| 1 | SAC, vector (tiny net) |" in text and "| 2 | SAC, vector (tiny net) |" in text
    assert "| 1 | vector (tiny net) | `configs/sac_vector_easy.yaml` |" in text
    assert "| 2 | vector (tiny net) | `configs/sac_vector_hard.yaml` |" in text
    import importlib.util

    if importlib.util.find_spec("stable_baselines3") is None:
        assert "Peer row skipped" in text and "not installed" in text


def test_tiny_results_json_and_plots(tiny_report):
    for name in ("learning_vs_steps.png", "learning_vs_wallclock.png", "throughput.png"):
        data = (tiny_report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    results = json.loads((tiny_report / "results.json").read_text())
    for key in ("machine", "env_throughput", "update_throughput", "end_to_end", "learning",
                "reference", "cost", "peer", "summary", "command", "load_average_at_start"):
        assert key in results, key
    runs = results["learning"]
    assert sorted((r["level"], r["seed"]) for r in runs) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(r["eval"] and {"step", "mean_return", "wall_time_s"} <= set(r["eval"][0]) for r in runs)
    e2e = results["end_to_end"][0]
    assert set(e2e["timings"]) == {"act", "env", "insert", "sample", "update", "eval", "checkpoint",
                                   "compile"}
    assert e2e["steady"]["env_steps_per_s"] > 0
    assert e2e["checkpoint_bytes"] > 0 and e2e["replay_bytes_per_transition"] > 0


def test_steady_window_starts_where_every_row_has_one_update_call_in_flight():
    from benchmarks.suite.measure import PHASES, steady_window

    # 256x256 on a CPU: an update call takes ~27 s. The row of step 65 follows the compiling
    # call (waited for); each later row is written right after its own call is dispatched, so
    # 65 -> 66 took 0.01 s while 66 -> 68 holds the calls of steps 66 and 67.
    walls = {64: 1.0, 65: 40.0, 66: 40.01, 67: 67.0, 68: 94.0}
    rows = [{"step": st, "updates": max(0, st - 64), "wall_time_s": w,
             **{f"time_{p}_s": 0.0 for p in PHASES}} for st, w in walls.items()]
    w = steady_window(rows)
    assert (w["from_step"], w["to_step"], w["steps"], w["updates"]) == (66, 68, 2, 2)
    assert w["env_steps_per_s"] == pytest.approx(2 / 53.99)
    assert steady_window(rows[:3]) is None  # one row after the compile row: no window


def test_loop_parts_times_every_part_of_an_iteration(tmp_path):
    from benchmarks import loop_parts

    out = tmp_path / "parts.json"
    assert loop_parts.main(["--set", "env.image_size=64", "--set", "train.n_envs=2",
                            "--set", "agent.net_arch=[16]", "--set", "agent.batch_size=8",
                            "--set", "agent.encoder_features=32",
                            "--iters", "2", "--capacity", "200", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_envs"] == 2 and result["k"] == 2
    parts = result["ms_per_iteration"]
    assert len(parts) == 10 and all(ms > 0 for ms in parts.values())
    assert any(k.startswith("update dispatch") for k in parts)
    # insert's two host halves, each timed apart
    assert any("replay.add" in k and "of which" in k for k in parts)
    assert any("mirror.take" in k and "of which" in k for k in parts)
    # an iteration that waits for each part costs more than any one of its parts
    serial = next(v for k, v in parts.items() if k.startswith("serial"))
    assert serial > max(v for k, v in parts.items() if k.startswith(("insert", "sample", "act")))


def test_plot_eval_draws_runs_and_rejects_a_spec_without_label(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "plot_eval.py"
    spec = importlib.util.spec_from_file_location("plot_eval", path)
    plot_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_eval)

    csv_path = tmp_path / "eval.csv"
    csv_path.write_text("step,mean_return,std_return,min_return,max_return,mean_length\n"
                        "1000,-50,1,-60,-40,20\n2000,10,1,0,20,80\n")
    png = tmp_path / "curves.png"
    assert plot_eval.main([f"run a={csv_path}", f"run b={csv_path}", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        plot_eval.main([str(csv_path), "--out", str(png)])


def test_suite_pixel_setting_with_frame_stack_and_shift_reaches_the_run_config():
    from benchmarks.suite.measure import env_config, run_config
    from benchmarks.suite.settings import FULL, IMG84, IMG84_DRQ

    config = run_config(IMG84_DRQ, FULL.learning_budget[IMG84.label], 2, 3, "learning")
    assert (config.env.image_size, config.env.frame_stack, config.env.level) == (84, 3, 2)
    assert config.agent.augmentation is True and config.agent.batch_size == 64 and config.seed == 3
    assert env_config(IMG84_DRQ).frame_stack == 3
    plain = run_config(IMG84, FULL.learning_budget[IMG84.label], 1, 0, "learning")
    assert (plain.env.frame_stack, plain.agent.augmentation) == (1, False)


def test_suite_learning_runs_train_the_shipped_agent_of_each_level():
    from benchmarks.suite.measure import run_config
    from benchmarks.suite.settings import FULL, IMG84, IMG256, VECTOR, VECTOR_TINY

    budget = FULL.learning_budget[VECTOR.label]
    easy, hard = (run_config(VECTOR, budget, level, 0, "learning", shipped=True) for level in (1, 2))
    assert (easy.agent.vector_encoder, easy.agent.symmetry) == ("set", "none")  # sac_vector_easy
    assert (hard.agent.vector_encoder, hard.agent.symmetry) == ("set", "d4")  # sac_vector_hard
    assert run_config(VECTOR, budget, 2, 0, "e2e").agent.symmetry == "none"  # throughput: defaults
    tiny = run_config(VECTOR_TINY, budget, 2, 0, "learning", shipped=True)
    assert tiny.agent.net_arch == (64, 64) and tiny.agent.batch_size == 64  # the setting on top
    for level, symmetry in ((1, "none"), (3, "d4")):  # sac_topdown_cnn_easy, sac_topdown_cnn_hard
        for obs in (IMG84, IMG256):
            pixels = run_config(obs, FULL.learning_budget[obs.label], level, 0, "learning", shipped=True)
            # the whole shipped recipe (env, agent, replay and parallel envs) at the row's side
            assert (pixels.env.level, pixels.env.image_size, pixels.env.frame_stack) == (level, obs.image_size, 3)
            assert (pixels.agent.symmetry, pixels.agent.augmentation, pixels.replay.n_step) == (symmetry, True, 3)
            assert pixels.train.n_envs == 16 and pixels.train.total_timesteps == 300_000
            assert pixels.replay.buffer_size == FULL.learning_budget[obs.label].buffer_size
    assert FULL.levels == (1, 2, 3) and FULL.seeds == 5


def markdown_rows(table: str) -> dict[str, list[str]]:
    """A markdown table's body rows (after its header and rule), by first cell: the other cells."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}


def test_learning_summary_buckets_evals_and_counts_runs_reaching_900(tmp_path):
    """Modes whose evaluations land on different steps (64 vs 256 envs overshoot the eval
    frequency differently) share a grid; medians and best-of-run counts are hand-checkable."""
    from benchmarks import e2e_throughput

    a = {"level": 1, "curves": {"plain": {
        "0": {"eval": [(10_000, 100.0), (20_000, 950.0)]},
        "1": {"eval": [(10_000, 300.0), (20_000, 500.0)]},
        "2": {"eval": [(10_000, 200.0), (20_000, 899.0)]},
        "3": {"error": "exit 1"},  # a failed run is left out
    }}}
    b = {"level": 1, "curves": {"fast256": {
        "0": {"eval": [(10_240, 10.0), (20_224, 920.0)]},
        "1": {"eval": [(10_240, 30.0), (20_224, 40.0)]},
    }}}
    paths = []
    for name, data in (("a.json", a), ("b.json", b)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    table = e2e_throughput.plot_learning_summary(paths, tmp_path / "summary.png")
    rows = markdown_rows(table)
    assert rows["plain"] == ["3", "950, 899, 500", "899", "1", "200 899"]
    assert rows["fast256"] == ["2", "920, 40", "480", "1", "20 480"]
    assert (tmp_path / "summary.png").stat().st_size > 10_000

    # Best by fixed steps, over the runs that got there: a run stopped at 10K counts only there.
    a["curves"]["plain"]["4"] = {"eval": [(10_000, 700.0)]}
    paths[0].write_text(json.dumps(a))
    table = e2e_throughput.plot_learning_summary(paths, tmp_path / "summary.png", by_steps=(10_000, 20_000))
    by = markdown_rows(table.split("\n\n")[1])
    assert by["plain"] == ["4: 700, 300, 200, 100 (250)", "3: 950, 899, 500 (899)"]
    assert by["fast256"] == ["2: 30, 10 (20)", "2: 920, 40 (480)"]
    # The median curve goes on past the shortest run, over the runs still there (10K: 4 runs).
    row = markdown_rows(table.split("\n\n")[0])["plain"]
    assert row == ["4", "700, 300, 200, 100", "250", "0", "250 899"]


def test_learning_plot_tables_every_run_with_the_longest_runs_columns(tmp_path):
    """plot_learning (--plot-learning): one row per run, columns at the longest run's evaluations,
    '-' where a run stopped early; a failed run (no evals) is left out; the plot is written."""
    from benchmarks import e2e_throughput

    data = {"level": 1, "curves": {
        "drq84": {"0": {"eval": [(10_000, -20.4), (20_000, 350.0), (30_000, 700.2)], "wall_s": 300.4}},
        "drq84_bf16": {"0": {"eval": [(10_000, 5.0)], "wall_s": 99.6}, "1": {"error": "exit 1"}},
    }}
    path = tmp_path / "learning.json"
    path.write_text(json.dumps(data))
    table = e2e_throughput.plot_learning(path, tmp_path / "learning.png").splitlines()
    assert table[0] == "| mode | seed | 10000 | 20000 | 30000 | wall s |"
    assert table[2:] == ["| drq84 | 0 | -20 | 350 | 700 | 300 |", "| drq84_bf16 | 0 | 5 | - | - | 100 |"]
    assert (tmp_path / "learning.png").stat().st_size > 10_000


def test_learning_modes_run_the_script_and_config_of_their_observations(tmp_path):
    """Pixel learning modes run topdown_sac.py on the DrQ-style 84x84 config with the mode's
    overrides (checked on the config the script's own parser and config reader build); vector
    modes still run vector_sac.py on the level's default config."""
    import dataclasses
    from pathlib import Path

    from benchmarks import e2e_throughput as e2e
    from dodgerl.cli import build_parser, config_from_args

    def config_of(cmd):  # as dodgerl.cli.main builds it
        kind = {"topdown_sac.py": "topdown", "vector_sac.py": "vector"}[Path(cmd[1]).name]
        args = build_parser("").parse_args(cmd[2:])
        return Path(cmd[1]).name, args, config_from_args(kind, args)

    smoke = ["train.learning_starts=500"]
    script, args, shipped = config_of(e2e.learning_command("drq84", 2, 150_000, tmp_path / "a", eval_freq=10_000))
    assert script == "topdown_sac.py" and args.config.name == "sac_topdown_drq84_easy.yaml"
    assert (args.seed, args.total_timesteps, args.results_dir) == (2, 150_000, tmp_path / "a")
    script, args, fast = config_of(e2e.learning_command("drq84_fast32", 2, 150_000, tmp_path / "b",
                                                        eval_freq=10_000, extra=smoke))
    assert script == "topdown_sac.py" and args.config.name == "sac_topdown_drq84_easy.yaml"
    assert args.overrides[-1] == "train.learning_starts=500"  # a smoke run's extras come last
    for c in (shipped, fast):
        assert (c.env.obs_mode, c.env.image_size, c.env.frame_stack, c.agent.augmentation) == ("topdown", 84, 3, True)
        assert (c.train.utd, c.train.update_every, c.train.eval_freq, c.train.video) == (1, 1, 10_000, False)
    # The shipped config leaves every speed setting to the machine's plan.
    assert shipped.train.n_envs == 16 and shipped.perf == type(shipped.perf)()
    assert not shipped.agent.bf16_encoder
    assert shipped.train.learning_starts == 5000
    assert (fast.train.n_envs, fast.perf.envs_per_worker, fast.perf.eval_workers) == (32, 2, 5)
    assert fast.perf.eval_in_background and fast.agent.bf16_encoder and fast.train.learning_starts == 500
    # The fast setting's two parts apart: each differs from the shipped config by its part alone.
    _, _, bf16 = config_of(e2e.learning_command("drq84_bf16", 2, 150_000, tmp_path / "e", eval_freq=10_000))
    _, _, envs32 = config_of(e2e.learning_command("drq84_32envs", 2, 150_000, tmp_path / "f", eval_freq=10_000))
    assert bf16.agent.bf16_encoder and bf16.train == shipped.train and bf16.env == shipped.env
    assert not envs32.agent.bf16_encoder and envs32.agent == shipped.agent
    assert envs32.train == dataclasses.replace(fast.train, learning_starts=shipped.train.learning_starts)

    script, args, plain = config_of(e2e.learning_command("plain", 0, 100_000, tmp_path / "c", level=2))
    assert script == "vector_sac.py" and args.config is None and plain.env.obs_mode == "vector"
    assert plain.env.level == 2 and not plain.perf.overlap and plain.train.update_every == 1
    assert config_of(e2e.learning_command("fast256", 0, 100_000, tmp_path / "d"))[2].train.n_envs == 256
    assert e2e.learning_obs(["drq84", "drq84_fast32"]) == "84x84 pixels"
    assert e2e.learning_obs(["plain", "fast256"]) == "vector obs"
    assert e2e.learning_obs(["drq84", "drq84_h100"]) == "84x84 pixels"
    assert e2e.learning_obs(["plain", "drq84"]) == "vector obs and pixels"
    assert all(m in e2e.LEARNING_COLORS for m in e2e.IMAGE_LEARNING_MODES)


def test_e2e_cases_build_valid_configs_and_set_implementation_options_through_the_config():
    """Every case's overrides make a valid run config; how the update is computed is set per
    case through ``agent.impl`` (no process-global options), and a misspelt option is named."""
    from benchmarks import e2e_throughput as e2e
    from dodgerl.config import apply_overrides, read_yaml

    configs = {name: config_from_dict(apply_overrides(read_yaml(e2e.CONFIGS / file), overrides))
               for name, (file, overrides, _) in e2e.CASES.items()}
    assert configs["img84_evalproc_conv"].agent.impl.conv_gemm is False
    assert configs["img84_evalproc"].agent.impl.conv_gemm is None  # chosen when the networks are built
    for name in ("img256_plan", "img84_plan_32envs", "vector_plan_64envs"):  # the plan decides all
        assert configs[name].perf == type(configs[name].perf)()
    with pytest.raises(ConfigError, match="agent.impl.conv_gem"):
        config_from_dict(apply_overrides({}, ["agent.impl.conv_gem=false"]))


def test_e2e_cases_are_compared_with_the_sb3_peer_of_their_env_image_size_and_batch():
    """Each of our end-to-end cases gets the SB3 ratio of exactly the peer on its env, image size
    and batch, derived from the configs (a hand-kept list had left new cases without one)."""
    from benchmarks import e2e_throughput as e2e

    peers = {case: [p for p in e2e.SB3_CASES if e2e.peer_compares(case, p)] for case in e2e.CASES}
    assert peers["img256_bf16_evalbg"] == ["sb3_img256"]
    assert peers["img84_bf16_evalproc_64envs"] == ["sb3_img84"]
    assert peers["vector_64envs_evalproc"] == ["sb3_vector"]
    assert peers["cpu_vector"] == ["sb3_vector"]
    assert all(len(p) == 1 for p in peers.values()), {c: p for c, p in peers.items() if len(p) != 1}


def test_peer_sac_fits_terminal_rewards():
    """The update benchmark's peer (benchmarks/minimal_sac.py) is a working SAC: on transitions
    that all terminate, the critic target is the reward itself, so its critic loss must fall."""
    import jax

    from benchmarks import minimal_sac

    rng = np.random.default_rng(0)
    k, b = 50, 32
    obs = np.repeat(rng.normal(size=(1, b, 65)).astype(np.float32), k, axis=0)
    actions = np.repeat(rng.uniform(-1, 1, (1, b, 2)).astype(np.float32), k, axis=0)
    rewards = np.repeat(rng.normal(size=(1, b)).astype(np.float32), k, axis=0)
    batch = (obs, actions, rewards, obs, np.ones((k, b), np.float32))
    states = minimal_sac.create(jax.random.key(0), (65,), 2, lr=1e-3)
    losses = []
    for i in range(4):
        states, loss = minimal_sac.update(states, batch, jax.random.key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.1 * losses[0], losses


def test_update_benchmark_times_the_peer_beside_ours(tmp_path, capsys):
    from benchmarks import update_throughput

    out = tmp_path / "update.json"
    update_throughput.main(["--cases", "vector", "--ks", "1,2", "--peer-ks", "2", "--repeats", "1",
                            "--min-steps", "2", "--act-cases", "", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["k"] for r in rows] == [1, 2]
    assert "peer" not in rows[0] and rows[1]["peer"]["k"] == 2
    assert rows[1]["peer"]["grad_steps_per_s"] > 0
    table = capsys.readouterr().out
    assert "ours / peer" in table and "x |" in table


def test_encoder_probe_records_the_planners_actions_and_its_fit_learns_them():
    from benchmarks import encoder_probe
    from dodgerl.envs.policies import LOOKAHEAD_MOVES

    data = encoder_probe.collect(level=2, transitions=400, noise=0.3)
    observations, actions = data.observations, data.actions
    assert observations.shape == (400, 65) and actions.shape == (400, 2) and data.episodes >= 1
    # every recorded label is one of the planner's moves (the noise goes into what is played only)
    assert all(any(np.array_equal(a, m) for m in LOOKAHEAD_MOVES) for a in actions)
    policy = encoder_probe.ClonedPolicy(encoder_probe.make_encoder("set", (16,)), net_arch=(32,))
    _, loss_short = encoder_probe.fit(policy, observations, actions, steps=10, batch_size=64)
    _, loss_long = encoder_probe.fit(policy, observations, actions, steps=1500, batch_size=64)
    assert loss_long < 0.5 * loss_short
    with pytest.raises(ValueError, match="unknown encoder"):
        encoder_probe.make_encoder("resnet", (16,))
    with pytest.raises(ValueError, match="does not read vector observations"):
        encoder_probe.make_encoder("cnn", (16,))


def test_encoder_probe_clearance_is_the_planners_and_images_are_what_the_agent_sees():
    from benchmarks import encoder_probe
    from dodgerl.envs.policies import CLEARANCE_CAP, LOOKAHEAD_MOVES

    config = encoder_probe.probe_env_config(level=2, obs="topdown", image_size=64, frame_stack=3)
    data = encoder_probe.collect(level=2, transitions=300, noise=3.0, env_config=config)
    assert data.observations.shape == (300, 64, 64, 9) and data.observations.dtype == np.uint8
    assert data.clearance.shape == (300, len(LOOKAHEAD_MOVES))
    assert data.terminated.sum() >= 2 and data.episodes >= 2  # noise 3: near-random moves, hits
    assert np.all(data.clearance <= CLEARANCE_CAP)
    # the planner's move is one whose clearance is within the centre pull (0.02 per metre, at
    # most 0.02 x 14.2 m) of the best
    best = data.clearance.max(axis=1)
    chosen = np.array([data.clearance[t, np.flatnonzero((LOOKAHEAD_MOVES == data.actions[t]).all(axis=1))[0]]
                       for t in range(300)])
    assert np.all(chosen >= best - 0.3) and np.any(data.clearance.min(axis=1) < CLEARANCE_CAP)
    # just before a hit some move's clearance is already <= 0 (the one that was played is close)
    assert np.all(data.clearance[data.terminated].min(axis=1) < 0.5)
    probe = encoder_probe.clearance_probe(encoder_probe.make_encoder("cnn", (16,), "topdown"), data, steps=5,
                                          batch_size=16)
    assert probe["held_out_episodes"] >= 1 and probe["train_transitions"] + probe["held_out_transitions"] == 300
    assert [step for step, _ in probe["held_out_curve"]] == [1, 2, 3, 4, 5]  # checked after every step of 5
    assert probe["rmse_held_out_best"] == min(r for _, r in probe["held_out_curve"])
    assert probe["rmse_held_out"] == pytest.approx(probe["held_out_curve"][-1][1])
    assert all(np.isfinite(probe[k]) and probe[k] > 0 for k in ("rmse_train", "rmse_held_out", "rmse_held_out_mean_baseline"))


def test_lookahead_clearance_is_the_planners_score_without_the_centre_pull():
    from dodgerl.envs.policies import LOOKAHEAD_MOVES, lookahead_action, lookahead_clearance

    state = {"player_pos": np.array([0.0, 0.0]), "player_vel": np.zeros(2),
             "projectile_pos": np.array([[4.0, 0.0]]), "projectile_vel": np.array([[-16.0, 0.0]]),
             "player_radius": 0.5, "projectile_radius": 0.25}
    clearance = lookahead_clearance(state)
    stay = np.flatnonzero((LOOKAHEAD_MOVES == 0).all(axis=1))[0]
    assert clearance[stay] < 0  # standing still, the projectile flies through the player
    chosen = np.flatnonzero((LOOKAHEAD_MOVES == lookahead_action(state)).all(axis=1))[0]
    assert clearance[chosen] > 0 and clearance[chosen] >= clearance.max() - 0.02 * 14.2


def test_sweep_summary_reads_runs_from_folders_and_archives(tmp_path, capsys, monkeypatch):
    import sys
    import tarfile

    from benchmarks import sweep_summary

    def run(folder, level, symmetry, returns):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(
            f"seed: 3\nenv: {{level: {level}}}\nagent: {{symmetry: {symmetry}, vector_encoder: set}}\n")
        rows = "".join(f"{10000 * (i + 1)},{r},0,0,0,0,10,0\n" for i, r in enumerate(returns))
        (folder / "eval.csv").write_text(
            "step,mean_return,std_return,min_return,max_return,mean_length,episodes,wall_time_s\n" + rows)

    run(tmp_path / "a" / "0" / "x" / "t", 2, "d4", [-30.0, 950.0, 1000.0, 880.0])
    run(tmp_path / "b" / "0" / "x" / "t", 1, "none", [10.0, 500.0])
    with tarfile.open(tmp_path / "b.tgz", "w:gz") as tar:
        tar.add(tmp_path / "b", arcname=".")
    monkeypatch.setattr(sys, "argv", ["sweep_summary", str(tmp_path / "a"), str(tmp_path / "b.tgz")])
    sweep_summary.main()
    rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()]
    header = rows[0]
    got = [dict(zip(header, r)) for r in rows[1:]]
    assert len(got) == 2
    assert {k: got[0][k] for k in ("level", "seed", "symmetry", "steps", "first_900_at", "best",
                                   "best_at", "final")} == {
        "level": "2", "seed": "3", "symmetry": "d4", "steps": "40000", "first_900_at": "20000",
        "best": "1000.0", "best_at": "30000", "final": "880.0"}
    assert got[1]["level"] == "1" and got[1]["first_900_at"] == "" and got[1]["best"] == "500.0"
    assert got[1]["run"].startswith(str(tmp_path / "b.tgz"))


def test_suite_jobs_of_parts_merge_into_one_report(tmp_path):
    """Two jobs of the tiny suite, each a part (sections, levels), merge into the report of both:
    every learning row once, the reference rows of the job that ran them, both commands."""
    from benchmarks.suite.cli import main

    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert main(["--suite", "tiny", "--sections", "reference,learning", "--levels", "1",
                 "--out", str(a)]) == 0
    assert main(["--suite", "tiny", "--sections", "learning", "--levels", "2", "--obs", "vector",
                 "--out", str(b)]) == 0
    job_a = json.loads((a / "results.json").read_text())
    assert {r["level"] for r in job_a["learning"]} == {1} and job_a["update_throughput"] == []
    assert "Sections run by this job: reference, learning" in (a / "report.md").read_text()
    assert main(["--merge", str(a), str(b), str(a), "--out", str(merged)]) == 0  # a twice: once kept
    results = json.loads((merged / "results.json").read_text())
    runs = sorted((r["level"], r["seed"]) for r in results["learning"])
    assert runs == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r["level"] for r in results["reference"]} == {1}
    assert results["settings"]["levels"] == [1, 2] and len(results["jobs"]) == 3
    assert {c["level"] for c in results["summary"]["learning_curves"]} == {1, 2}
    text = (merged / "report.md").read_text()
    assert "Merged from 3 jobs" in text and "--levels 2 --obs vector" in text
    assert "| 2 | vector (tiny net) | `configs/sac_vector_hard.yaml` |" in text


def test_suite_job_arguments_are_checked(tmp_path, capsys):
    from benchmarks.suite.cli import main

    for argv, message in ((["--suite", "tiny", "--obs", "img84"], "learns from vector"),
                          (["--suite", "tiny", "--levels", "3"], "runs levels 1, 2"),
                          (["--suite", "tiny", "--sections", "learnin"], "choose from env"),
                          (["--merge", str(tmp_path)], "needs --out"),
                          (["--merge", str(tmp_path), "--out", str(tmp_path / "m")], "no results.json")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err

def test_progress_table_averages_each_runs_window_and_takes_the_iqm_over_runs(tmp_path, capsys):
    from benchmarks.progress_table import main, window_mean
    from benchmarks.seeds_learning import read_rows

    runs = []
    for seed, scale in enumerate((1.0, 2.0, 3.0, 4.0)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        rows = ["step,critic_loss,temperature", "1000,,"]  # no update yet: empty cells
        rows += [f"{s},{scale * s / 1000},{0.5}" for s in range(2000, 11000, 1000)]
        (run / "progress.csv").write_text("\n".join(rows) + "\n")
        runs.append(str(run))
    # Window (5000, 10000]: steps 6000..10000, loss scale * (6..10) / 1 -> mean 8 * scale.
    seed1 = read_rows(tmp_path / "seed1" / "progress.csv")
    assert window_mean(seed1, "critic_loss", 10000, 5000) == 16.0
    assert np.isnan(window_mean(seed1, "critic_loss", 1000, 500))
    assert main(["--label", "g", *runs, "--keys", "critic_loss,temperature", "--steps", "10000,1000"]) == 0
    out = capsys.readouterr().out.splitlines()
    loss_row = next(line for line in out if "| critic_loss |" in line)
    # Per-run means 8, 16, 24, 32: IQM of 4 drops one from each end -> 20.
    assert loss_row.split("|")[4].strip().startswith("20 [")
    assert loss_row.split("|")[5].strip() == "-"  # before the first update: no rows
    seed0 = tmp_path / "seed0" / "progress.csv"
    with pytest.raises(ValueError, match="seed0/progress.csv: no column 'q_mean'"):
        window_mean(read_rows(seed0), "q_mean", 10000, 5000, seed0)
