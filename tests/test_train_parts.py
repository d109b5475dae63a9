"""The training loop's parts at their edges: collector, dispatcher, logs, checkpointing state."""

from __future__ import annotations

import contextlib
import csv
import time

import jax
import numpy as np
import pytest

from dodgerl.config import EnvConfig, config_from_dict
from dodgerl.envs.make import make_vector_env
from dodgerl.replay import ReplayBuffer
from dodgerl.train.checkpointing import RunState, changed_keys
from dodgerl.train.collector import Collector
from dodgerl.train.dispatcher import Dispatcher
from dodgerl.train.logs import CsvLog, PaceNotice, format_duration
from dodgerl.train.plan import Machine, choose_plan


def test_the_collector_stores_the_real_final_observation_and_counts_episodes(tmp_path):
    """With same-step autoreset the env returns the next episode's first observation; the
    stored transition ends on the episode's own last one, and each finished episode is counted
    once with its return and length."""
    env_config = EnvConfig(obs_mode="vector", level=2, max_episode_steps=15)
    envs = make_vector_env(env_config, 2, asynchronous=False)
    replay = ReplayBuffer(tmp_path / "replay", capacity=400, observation_shape=(65,),
                          observation_dtype=np.float32, action_dim=2, n_envs=2, writeback_s=None)
    stored = []
    original_add = replay.add

    def add(obs, actions, rewards, next_obs, terminated, truncated):
        stored.append((next_obs.copy(), terminated | truncated))
        return original_add(obs, actions, rewards, next_obs, terminated, truncated)

    replay.add = add
    try:
        collector = Collector(envs, [replay], env_config, seeds=[5, 6])
        rng = np.random.default_rng(0)
        ended, lengths = 0, []
        for _ in range(40):
            before = collector.observations.copy()
            finished, env_s = collector.step(rng.uniform(-1, 1, (2, 2)).astype(np.float32))
            assert env_s >= 0
            next_obs, done = stored[-1]
            for i in range(2):  # the stored next observation is the returned one unless the episode ended
                assert done[i] or np.array_equal(next_obs[i], collector.observations[i])
                assert not done[i] or not np.array_equal(next_obs[i], collector.observations[i])
            assert not np.array_equal(before, collector.observations)
            ended += sum(finished)
            stats = collector.episode_stats()
            if sum(finished):
                lengths.append(stats["train_length"])
            else:
                assert stats == {"train_return": "", "train_length": ""}
        assert ended >= 4 and len(replay) == 80
        assert all(1 <= n <= 15 for n in lengths)
    finally:
        envs.close()
        replay.close()


class CountingAgent:
    """A stand-in agent: counts the gradient steps of each update call, acts with zeros."""

    def __init__(self, calls=()):
        self.calls = list(calls)

    def update(self, batch, key):
        return CountingAgent([*self.calls, batch.rewards.shape[0]]), {"critic_loss": jax.numpy.ones(())}

    def act(self, observations, key):
        return np.zeros((len(observations), 2), np.float32)


def test_the_dispatcher_updates_every_update_every_steps_with_k_gradient_steps(tmp_path):
    config = config_from_dict({"env": {"obs_mode": "vector"},
                               "train": {"n_envs": 2, "update_every": 3}, "agent": {"batch_size": 4}})
    plan = choose_plan(config, Machine("cpu", 2))
    replay = ReplayBuffer(tmp_path / "replay", capacity=200, observation_shape=(65,),
                          observation_dtype=np.float32, action_dim=2, n_envs=2, writeback_s=None)
    timings = dict.fromkeys(("act", "env", "insert", "sample", "update", "eval", "checkpoint", "compile"), 0.0)
    rng = np.random.default_rng(0)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(replay.close)
        dispatcher = Dispatcher(CountingAgent(), replay, plan, 4, steps_per_call=6, update_every=3,
                                timings=timings, cleanup=cleanup)
        made = []
        for step in range(12):
            obs = rng.normal(size=(2, 65)).astype(np.float32)
            replay.add(obs, np.zeros((2, 2), np.float32), np.ones(2), obs, np.zeros(2, bool), np.zeros(2, bool))
            dispatcher.stored()
            dispatcher.collected()
            if dispatcher.update_due():
                made.append((step, dispatcher.update(jax.random.PRNGKey(step), block=True)))
        dispatcher.finish()
        assert made == [(2, 6), (5, 6), (8, 6), (11, 6)]  # every 3 vector steps, 6 gradient steps each
        assert dispatcher.agent.calls == [6, 6, 6, 6]
        assert float(dispatcher.metrics["critic_loss"]) == 1.0
        assert timings["compile"] > 0  # the first call is timed apart


def test_the_dispatcher_waits_for_a_full_batch(tmp_path):
    config = config_from_dict({"env": {"obs_mode": "vector"}, "agent": {"batch_size": 8}})
    plan = choose_plan(config, Machine("cpu", 2))
    replay = ReplayBuffer(tmp_path / "replay", capacity=100, observation_shape=(65,),
                          observation_dtype=np.float32, action_dim=2, n_envs=1, writeback_s=None)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(replay.close)
        dispatcher = Dispatcher(CountingAgent(), replay, plan, 8, 1, 1, dict.fromkeys(["compile"], 0.0), cleanup)
        obs = np.zeros((1, 65), np.float32)
        for n in range(1, 10):
            replay.add(obs, np.zeros((1, 2), np.float32), np.ones(1), obs, np.zeros(1, bool), np.zeros(1, bool))
            dispatcher.collected()
            assert dispatcher.update_due() == (len(replay) >= 8)


def test_a_csv_log_drops_rows_after_the_resumed_step_and_rows_cut_short(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(path, ("step", "value"), resume_step=None)
    for step in (10, 20, 30):
        log.write({"step": step, "value": step * 2})
    log.close()
    with path.open("a") as f:
        f.write("40,")  # a row a crash cut short
    CsvLog(path, ("step", "value"), resume_step=20).close()
    with path.open(newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["10", "20"]


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (45, 450, 3 * 3600 + 120, 6 * 86400 + 4 * 3600)] == [
        "45s", "7m 30s", "3h 02m", "6d 4h"]


def test_a_pixel_run_without_an_accelerator_says_what_its_budget_takes(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    notice = PaceNotice(True, total_timesteps=500_000)
    assert notice.observe(6000, 1000, compiled=False) is None  # before the first update's compile
    assert notice.observe(6000, 1000, compiled=True) is None  # starts measuring
    clock[0] += 5
    assert notice.observe(6010, 1010, compiled=True) is None  # too short a window
    clock[0] += 95  # 100 s for 100 gradient steps and 100 env steps: 1 step/s
    line = notice.observe(6100, 1100, compiled=True)
    assert "1.00 gradient steps/s" in line and "493,900" in line and "5d 17h" in line
    assert "vector_sac.py" in line and "image_size" in line and "GPU" in line
    assert notice.observe(7000, 2000, compiled=True) is None  # once
    assert PaceNotice(False, 100).observe(10, 10, compiled=True) is None


def test_a_checkpoint_meta_records_the_config_and_a_resume_names_what_changed():
    state = RunState(key=jax.random.PRNGKey(0), np_rng=np.random.default_rng(0),
                     config={"env": {"image_size": 64}})
    meta = state.meta(replay_transitions=5)
    assert meta["config"] == {"env": {"image_size": 64}} and meta["replay_transitions"] == 5
    saved = config_from_dict({"env": {"image_size": 64}}).to_dict()
    now = config_from_dict({"env": {"image_size": 84}, "train": {"total_timesteps": 9},
                            "agent": {"impl": {"conv_gemm": True}}}).to_dict()
    # The budget and how the update is computed may change on resume; the image size may not.
    assert changed_keys(saved, now) == [("env.image_size", 64, 84)]
    assert changed_keys(saved, saved) == []


def test_the_plan_on_this_cpu_runs_everything_in_process():
    plan = choose_plan(config_from_dict({"env": {"obs_mode": "topdown", "image_size": 64},
                                         "train": {"n_envs": 4}}))
    assert plan.machine.backend == jax.default_backend() == "cpu"
    assert not plan.async_envs and not plan.dispatch_thread and not plan.eval_in_background


def test_the_rate_behind_the_eta_is_the_recent_one_not_the_warm_ups():
    from dodgerl.train.logs import RecentRate

    rate = RecentRate(window_s=30)
    for t in range(0, 10):  # a fast warm-up: 500 env steps/s for 10 s
        rate.add(float(t), 500 * t)
    for t in range(10, 100):  # then 1 env step/s
        rate.add(float(t), 4500 + (t - 9))
    assert rate.rate() == pytest.approx(1.0)
    assert RecentRate().rate() is None


def test_split_keys_moves_every_seed_on_exactly_as_its_own_split_key_would():
    """The loop's one compiled split of every seed's key gives each seed the keys its own eager
    split_key gives, round after round (a group's seed draws what the seed alone draws)."""
    from dodgerl.train.checkpointing import split_keys

    def states():
        return [RunState(key=jax.random.PRNGKey(s), np_rng=np.random.default_rng(s)) for s in (0, 7, 3)]

    together, alone = states(), states()
    for _ in range(3):
        subs, stacked = split_keys(together)
        expected = [state.split_key() for state in alone]
        for i, key in enumerate(expected):
            np.testing.assert_array_equal(np.asarray(subs[i]), np.asarray(key))
            np.testing.assert_array_equal(np.asarray(stacked[i]), np.asarray(key))
            np.testing.assert_array_equal(np.asarray(together[i].key), np.asarray(alone[i].key))
    assert len({tuple(np.asarray(k).ravel()) for k in subs}) == 3
