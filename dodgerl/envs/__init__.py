"""The dodge arena: physics, levels, rasterizer, Gymnasium env, wrappers and reference policies."""

import gymnasium


def register_envs() -> None:
    """Register ``dodgerl/Dodge-v0`` with Gymnasium (idempotent)."""
    if "dodgerl/Dodge-v0" not in gymnasium.registry:
        gymnasium.register(
            id="dodgerl/Dodge-v0",
            entry_point="dodgerl.envs.dodge_env:DodgeEnv",
            max_episode_steps=None,  # the env truncates itself at max_episode_steps
        )
