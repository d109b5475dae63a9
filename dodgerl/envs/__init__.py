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


def __getattr__(name: str):
    # Lazy exports: `import dodgerl` registers the env without importing pymunk/pygame.
    if name in ("DodgeEnv",):
        from dodgerl.envs.dodge_env import DodgeEnv

        return DodgeEnv
    if name in ("LevelSpec", "LEVELS"):
        from dodgerl.envs import levels

        return getattr(levels, name)
    if name == "FrameStack":
        from dodgerl.envs.wrappers import FrameStack

        return FrameStack
    raise AttributeError(f"module 'dodgerl.envs' has no attribute {name!r}")


__all__ = ["register_envs", "DodgeEnv", "LevelSpec", "LEVELS", "FrameStack"]
