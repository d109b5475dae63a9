"""dodgerl: a hand-rolled JAX Soft Actor-Critic library around a pymunk projectile-dodging arena.

Importing the package registers the Gymnasium environment ``dodgerl/Dodge-v0``.
"""

from dodgerl.envs import register_envs as _register_envs

_register_envs()

__version__ = "0.1.0"
