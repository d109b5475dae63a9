"""Any registered Gymnasium env with Box observations and actions: config keys, make_env's
wrappers and space check, the plan's image test, evaluation without frames, and a Pendulum-v1
run that trains, checkpoints, resumes and evaluates through the same command line."""

from __future__ import annotations

import csv
from pathlib import Path

import gymnasium
import jax
import numpy as np
import pytest
import yaml
from gymnasium import spaces

from dodgerl import cli
from dodgerl import evaluate as evaluate_module
from dodgerl.config import ConfigError, EnvConfig, config_from_dict, load_config
from dodgerl.envs.make import (episode_horizon, image_side, make_env, observation_structure,
                               renders_rgb, single_frames)
from dodgerl.episodes import Evaluator
from dodgerl.train.plan import EVAL_WORKERS_IMAGES, Machine, choose_plan

REPO = Path(__file__).resolve().parent.parent


class ToyEnv(gymnasium.Env):
    """A registered toy env whose spaces ``env.kwargs`` choose. Its reward is the first action
    component it receives (so a test sees the rescaled action); it terminates after
    ``terminate_at`` steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, obs: str = "vector", action: str = "box", terminate_at: int = 1000,
                 render_fails: bool = False, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.kind = obs
        self.terminate_at = terminate_at
        self.render_fails = render_fails
        self.observation_space = {
            "vector": spaces.Box(-np.inf, np.inf, (4,), np.float64),
            "dict": spaces.Dict({"x": spaces.Box(-1, 1, (2,), np.float32)}),
            "float_image": spaces.Box(0.0, 1.0, (40, 40, 3), np.float32),
            "image": spaces.Box(0, 255, (48, 40, 1), np.uint8),
        }[obs]
        self.action_space = {
            "box": spaces.Box(-2.0, 2.0, (2,), np.float32),
            "unit": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "unbounded": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "discrete": spaces.Discrete(3),
        }[action]
        self.t = 0

    def _obs(self):
        if self.kind == "image":
            return np.full(self.observation_space.shape, self.t % 256, np.uint8)
        return np.full(self.observation_space.shape, self.t, self.observation_space.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(np.asarray(action).ravel()[0]), self.t >= self.terminate_at, False, {}

    def render(self):
        if self.render_fails:
            raise RuntimeError("no OpenGL context (as MuJoCo without a display)")
        return np.zeros((8, 8, 3), np.uint8)


class ToyEnvNoRender(ToyEnv):
    metadata = {"render_modes": []}


for _id, _cls in (("dodgerl_test/Toy-v0", ToyEnv), ("dodgerl_test/ToyNoRender-v0", ToyEnvNoRender)):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_cls, max_episode_steps=30)

TOY = "dodgerl_test/Toy-v0"


def toy(**kwargs) -> EnvConfig:
    max_steps = kwargs.pop("max_episode_steps", None)
    frame_stack = kwargs.pop("frame_stack", 1)
    return EnvConfig(id=kwargs.pop("id", TOY), kwargs=kwargs, max_episode_steps=max_steps,
                     frame_stack=frame_stack)


def test_a_dodge_config_reads_and_writes_as_before():
    config = load_config(REPO / "configs" / "sac_vector_easy.yaml")
    assert config.env.id == "dodgerl/Dodge-v0" and config.env.is_dodge
    assert list(config.to_dict()["env"]) == ["level", "obs_mode", "image_size",
                                            "action_space_type", "frame_stack", "max_episode_steps"]
    assert EnvConfig() == EnvConfig(level=1, obs_mode="topdown", image_size=256,
                                    action_space_type="basic", frame_stack=1, max_episode_steps=1000)
    # A config.yaml written before env.id existed is the dodge env.
    old = config_from_dict({"env": {"level": 2, "obs_mode": "vector", "image_size": 256,
                                    "action_space_type": "basic", "frame_stack": 1,
                                    "max_episode_steps": 1000}})
    assert old.env.is_dodge and old.env.level == 2


def test_dodge_keys_belong_to_the_dodge_env_only():
    with pytest.raises(ConfigError, match=r"env\.level: a key of dodgerl/Dodge-v0 only; arguments "
                                          r"of Pendulum-v1 go in env\.kwargs"):
        EnvConfig(id="Pendulum-v1", level=2)
    with pytest.raises(ConfigError, match=r"env\.kwargs\.obs_mode: set env\.obs_mode instead"):
        EnvConfig(kwargs={"obs_mode": "vector"})
    with pytest.raises(ConfigError, match=r"env\.kwargs\.max_episode_steps"):
        EnvConfig(id="Pendulum-v1", kwargs={"max_episode_steps": 5})
    with pytest.raises(ConfigError, match=r"env\.kwargs: expected a mapping"):
        config_from_dict({"env": {"id": "Pendulum-v1", "kwargs": [1, 2]}})
    written = EnvConfig(id="Pendulum-v1", kwargs={"g": 9.0}).to_dict()
    assert written == {"id": "Pendulum-v1", "kwargs": {"g": 9.0}, "frame_stack": 1,
                       "max_episode_steps": None}


def test_env_kwargs_reach_gymnasium_make_and_bad_ones_are_config_errors():
    env = make_env(EnvConfig(id="Pendulum-v1", kwargs={"g": 9.0}))
    assert env.unwrapped.g == 9.0
    with pytest.raises(ConfigError, match=r"env\.kwargs: .*unexpected keyword argument 'gravity'"):
        make_env(EnvConfig(id="Pendulum-v1", kwargs={"gravity": 9.0}))
    with pytest.raises(ConfigError, match=r"env\.id NoSuchEnv-v0: "):
        make_env(EnvConfig(id="NoSuchEnv-v0"))


def test_actions_are_rescaled_to_unit_bounds_by_gymnasiums_wrapper():
    env = make_env(toy())
    assert isinstance(env, gymnasium.wrappers.RescaleAction)
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.reset(seed=0)
    assert env.step(np.array([1.0, 0.0], np.float32))[1] == pytest.approx(2.0)  # the env got 2.0
    assert env.step(np.array([-0.5, 0.0], np.float32))[1] == pytest.approx(-1.0)
    unit = make_env(toy(action="unit"))  # already [-1, 1]: not wrapped
    assert not isinstance(unit, gymnasium.wrappers.RescaleAction)
    pendulum = make_env(EnvConfig(id="Pendulum-v1"))
    pendulum.reset(seed=0)
    pendulum.step(np.array([1.0], np.float32))
    assert pendulum.unwrapped.last_u == pytest.approx(2.0)  # Pendulum's torque bound


def test_float_vectors_are_cast_to_float32():
    env = make_env(toy())
    assert env.observation_space.dtype == np.float32
    assert env.reset(seed=0)[0].dtype == np.float32


def test_terminated_and_truncated_are_kept_as_the_env_gives_them():
    def end(config: EnvConfig) -> tuple[int, bool, bool]:
        env = make_env(config)
        env.reset(seed=0)
        for t in range(1, 100):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                return t, terminated, truncated
        raise AssertionError("no episode end")

    assert end(toy(terminate_at=5)) == (5, True, False)
    assert end(toy(terminate_at=50)) == (30, False, True)  # the registered limit
    assert end(toy(terminate_at=50, max_episode_steps=8)) == (8, False, True)  # env.max_episode_steps
    assert episode_horizon(toy()) == 30 and episode_horizon(toy(max_episode_steps=8)) == 8
    assert episode_horizon(EnvConfig()) == 1000


@pytest.mark.parametrize("kwargs, message", [
    ({"id": "CartPole-v1"}, r"env\.id CartPole-v1: action space Discrete\(2\) is a Discrete, not a Box"),
    ({"action": "discrete"}, r"action space Discrete\(3\) is a Discrete, not a Box"),
    ({"obs": "dict"}, r"observation space Dict\(.*\) is a Dict, not a Box"),
    ({"obs": "float_image"}, r"observation space Box\(.*\) is an image of float32, not uint8"),
    ({"action": "unbounded"}, r"has unbounded actions"),
])
def test_an_env_the_agent_cannot_encode_is_a_config_error_naming_the_space(kwargs, message):
    config = EnvConfig(id="CartPole-v1") if kwargs.get("id") else toy(**kwargs)
    with pytest.raises(ConfigError, match=message) as err:
        make_env(config)
    assert "supported: a Box observation (a 1-D float vector, or a uint8 (H, W, C) image)" in str(err.value)


@pytest.mark.parametrize("env_id, kwargs, message", [
    ("CartPole-v1", [], "error: env.id CartPole-v1: action space Discrete(2) is a Discrete, not a Box"),
    (TOY, ["--set", "env.kwargs.obs=dict"], f"error: env.id {TOY}: observation space Dict("),
    ("Pendulum-v1", ["--level", "2"], "error: --level: a setting of dodgerl/Dodge-v0 only"),
    ("Pendulum-v1", ["--set", "env.frame_stack=3"], "error: env.frame_stack: frame stacking applies "
                                                    "to image observations only"),
])
def test_an_unsupported_env_ends_the_command_with_one_error_line_and_no_run(tmp_path, capsys,
                                                                           env_id, kwargs, message):
    results = tmp_path / "results"
    code = cli.main("vector", ["--env-id", env_id, "--results-dir", str(results), *kwargs])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(message) and "\n" not in err
    assert not results.exists()  # failed before the run directory was made


def test_an_image_env_is_planned_and_stored_as_an_image():
    config = toy(obs="image", frame_stack=3)
    assert image_side(config) == 48
    assert image_side(toy()) is None
    assert image_side(EnvConfig(obs_mode="topdown", image_size=84)) == 84
    assert image_side(EnvConfig(obs_mode="vector")) is None
    env = make_env(config)
    assert env.observation_space.shape == (48, 40, 3)  # 3 stacked frames of 1 channel
    stacked = np.stack([env.reset(seed=0)[0], env.step(env.action_space.sample())[0]])
    frames = single_frames(stacked, config)
    assert frames.shape == (2, 48, 40, 1)
    np.testing.assert_array_equal(frames[1], stacked[1][..., -1:])  # the newest frame
    raw = {"env": {"id": TOY, "kwargs": {"obs": "image"}}, "train": {"eval_episodes": 10}}
    gpu = Machine("gpu", 16)
    image_plan = choose_plan(config_from_dict(raw), gpu)
    vector_plan = choose_plan(config_from_dict({"env": {"id": TOY}}), gpu)
    assert image_plan.dispatch_thread and image_plan.eval_workers == EVAL_WORKERS_IMAGES
    assert not vector_plan.dispatch_thread and vector_plan.sample_workers == 1


def test_evaluation_without_rgb_array_frames_runs_and_records_none(capsys):
    assert renders_rgb(toy()) and renders_rgb(EnvConfig())
    assert not renders_rgb(toy(id="dodgerl_test/ToyNoRender-v0"))

    def act(obs, key):
        return np.zeros((len(obs), 2), np.float32)

    for config, says in ((toy(id="dodgerl_test/ToyNoRender-v0", terminate_at=4), False),
                         (toy(terminate_at=4, render_fails=True), True)):
        evaluator = Evaluator(config, episodes=2, seed=0, record=True)
        try:
            result = evaluator.run(act, jax.random.PRNGKey(0))
        finally:
            evaluator.close()
        assert result.frames == [] and list(result.lengths) == [4, 4]
        assert ("renders no rgb_array frame" in capsys.readouterr().err) == says
    evaluator = Evaluator(toy(terminate_at=4), episodes=1, seed=0, record=True)
    assert len(evaluator.run(act, jax.random.PRNGKey(0)).frames) == 5  # reset + 4 steps
    evaluator.close()


def test_the_default_config_of_an_env_id():
    assert cli.config_for_env("HalfCheetah-v5").name == "sac_mujoco_halfcheetah.yaml"
    assert cli.config_for_env("Hopper-v5").name == "sac_mujoco_hopper.yaml"
    assert cli.config_for_env("Pendulum-v1") == cli.GENERIC_CONFIG
    for name in ("sac_mujoco_halfcheetah", "sac_mujoco_hopper", "sac_gym"):
        config = load_config(REPO / "configs" / f"{name}.yaml")
        assert not config.env.is_dodge and config.env.level is None
        assert config.agent.vector_encoder == "mlp"
    cheetah = load_config(REPO / "configs" / "sac_mujoco_halfcheetah.yaml")
    # rl-baselines3-zoo's HalfCheetah-v3 entry: SB3's SAC defaults with learning_starts 10000.
    assert (cheetah.train.learning_starts, cheetah.agent.actor_lr, cheetah.agent.tau,
            cheetah.replay.buffer_size, cheetah.agent.batch_size) == (10_000, 3e-4, 0.005, 1_000_000, 256)


def test_the_mujoco_configs_make_their_envs_where_mujoco_is_installed():
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    for name, obs_dim, action_dim in (("halfcheetah", 17, 6), ("hopper", 11, 3)):
        env = make_env(load_config(REPO / "configs" / f"sac_mujoco_{name}.yaml").env)
        assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
        assert env.action_space == spaces.Box(-1.0, 1.0, (action_dim,), np.float32)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


TINY = ["--set", "agent.net_arch=[16,16]", "--set", "agent.batch_size=16",
        "--set", "train.total_timesteps=300", "--set", "train.learning_starts=100",
        "--set", "train.eval_freq=200", "--set", "train.eval_episodes=2",
        "--set", "train.checkpoint_freq=200", "--set", "train.log_freq=100",
        "--set", "train.progress_bar=false", "--set", "train.update_every=4",
        "--set", "replay.buffer_size=1000", "--set", "env.max_episode_steps=50"]


def test_pendulum_trains_checkpoints_resumes_and_evaluates_through_the_cli(tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main("vector", ["--env-id", "Pendulum-v1", "--results-dir", str(results), *TINY]) == 0
    (run_dir,) = (results / "sac_gym").iterdir()
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["env"] == {"id": "Pendulum-v1", "frame_stack": 1, "max_episode_steps": 50}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["200", "300"]
    evals = read_csv(run_dir / "eval.csv")
    assert [r["step"] for r in evals] == ["200", "300"]
    assert all(float(r["mean_length"]) == 50.0 for r in evals)  # env.max_episode_steps
    assert list((run_dir / "videos").glob("*.gif"))  # Pendulum renders rgb_array

    assert cli.main("vector", ["--resume", str(run_dir), "--total-timesteps", "400"]) == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "400"
    assert [r["step"] for r in read_csv(run_dir / "progress.csv")] == ["100", "200", "300", "400"]
    assert [r["step"] for r in read_csv(run_dir / "eval.csv")][-1] == "400"

    capsys.readouterr()
    gif = tmp_path / "eval.gif"
    assert evaluate_module.main([str(run_dir), "--episodes", "3", "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "3 deterministic episodes" in out and "100% reached the 50-step horizon" in out
    assert gif.stat().st_size > 0
    loaded = evaluate_module.load_agent(run_dir)
    result = evaluate_module.evaluate(loaded.agent, loaded.config.env, episodes=2,
                                      seed=loaded.config.train.eval_seed)
    best = next(r for r in read_csv(run_dir / "eval.csv") if int(r["step"]) == loaded.meta["step"])
    assert result.returns.mean() == pytest.approx(float(best["mean_return"]), rel=1e-5)


def test_only_dodgerls_observation_structure_is_read_from_an_env():
    # Gymnasium's MuJoCo envs have an ``observation_structure`` dict of their own.
    class WithDict(ToyEnv):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.observation_structure = {"qpos": 8, "qvel": 9}

    if "dodgerl_test/WithDict-v0" not in gymnasium.registry:
        gymnasium.register(id="dodgerl_test/WithDict-v0", entry_point=WithDict)
    assert observation_structure(toy(id="dodgerl_test/WithDict-v0")) is None
    assert observation_structure(EnvConfig(obs_mode="vector")) is not None  # the dodge env's
