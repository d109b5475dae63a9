"""N independent SAC agents stacked on a leading seed axis, advanced by one compiled call.

A stacked agent is an ordinary ``SACAgent`` whose every array leaf has a leading axis of N
seeds (``stack``, ``create_stacked``). ``update_stacked`` runs ``jax.vmap`` of the very step
``SACAgent.update`` compiles (``update._update``: K gradient steps in one ``lax.scan``) over the
seed axis of agent, batch and key, so seed i's result depends on seed i's agent, batch and key
alone. ``update_from_stacked`` does the same for batches gathered on the device, ``act_stacked``
acts for every seed at once, and ``shard_seeds`` spreads the seed axis over several devices, on
which the same compiled calls then run sharded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dodgerl.agents.sac.agent import SACAgent, _act, create
from dodgerl.agents.sac.config import SACConfig
from dodgerl.agents.sac.state import Batch
from dodgerl.agents.sac.update import _update, _update_from, check_batch

SEED_AXIS = "seed"
"""The mesh axis name ``shard_seeds`` places the seed axis on."""


# ---------------------------------------------------------------- stacking


def _static_fields(agent: SACAgent) -> dict[str, Any]:
    """The agent's static (non-array) data by dotted name, config fields one by one, so that a
    mismatch can be named."""
    fields = {f"config.{f.name}": getattr(agent.config, f.name)
              for f in dataclasses.fields(agent.config)}
    fields["observation_shape"] = agent.observation_shape
    fields["action_dim"] = agent.action_dim
    return fields


def stack(agents: Sequence[SACAgent]) -> SACAgent:
    """One agent whose array leaves are the given agents' leaves stacked on a new leading seed
    axis (seed i = ``agents[i]``). Their static data (config, shapes) must be equal: a
    ValueError names the first field that differs."""
    agents = list(agents)
    if not agents:
        raise ValueError("stack: no agents given")
    for i, agent in enumerate(agents):
        if not isinstance(agent, SACAgent):
            raise ValueError(f"stack: agents[{i}] is a {type(agent).__name__}, not a SACAgent")
    reference = _static_fields(agents[0])
    for i, agent in enumerate(agents[1:], start=1):
        for name, value in _static_fields(agent).items():
            if value != reference[name]:
                raise ValueError(f"stack: agents[{i}].{name} = {value!r} differs from "
                                 f"agents[0].{name} = {reference[name]!r}; stacked seeds must "
                                 "share their static config and shapes")
    treedef = jax.tree.structure(agents[0])
    for i, agent in enumerate(agents[1:], start=1):
        if jax.tree.structure(agent) != treedef:
            # Equal configs and shapes build equal trees; this catches hand-built agents.
            raise ValueError(f"stack: agents[{i}] has another pytree structure than agents[0] "
                             f"(parameter tree or optimiser state)")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *agents)


def seed_count(stacked: SACAgent) -> int:
    """N, the length of the leading seed axis every array leaf of ``stacked`` shares."""
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(stacked)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"seed_count: the leaves do not share one leading seed axis "
                         f"(leading sizes {sorted(sizes, key=str)}); is this a stacked agent?")
    return int(sizes.pop())


def unstack(stacked: SACAgent, n: int | None = None) -> list[SACAgent]:
    """The N single agents of ``stacked``, seed order kept (``stack``'s inverse). ``n``, when
    given, must equal ``seed_count(stacked)``."""
    count = seed_count(stacked)
    if n is not None and n != count:
        raise ValueError(f"unstack: n={n}, but the stacked agent holds {count} seeds")
    return [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(count)]


def _key_list(keys: Any) -> list[jax.Array]:
    return list(keys) if isinstance(keys, (list, tuple)) else [keys[i] for i in range(len(keys))]


def create_stacked(keys: Any, observation_space: gymnasium.spaces.Space,
                   action_space: gymnasium.spaces.Space, config: SACConfig | None = None
                   ) -> SACAgent:
    """``stack([create(key_i, observation_space, action_space, config) for key_i in keys])``:
    seed i is bit for bit the agent ``create(keys[i], ...)`` builds alone. ``keys``: an (N,)
    key array or a list of N keys."""
    key_list = _key_list(keys)
    if not key_list:
        raise ValueError("create_stacked: no keys given")
    return stack([create(key, observation_space, action_space, config) for key in key_list])


def _seed_keys(keys: Any, n: int, caller: str) -> jax.Array:
    stacked = jnp.stack(keys) if isinstance(keys, (list, tuple)) else keys
    if np.shape(stacked)[:1] != (n,):
        raise ValueError(f"{caller}: keys have shape {np.shape(stacked)}, expected one key per "
                         f"seed, ({n},)")
    return stacked


# ---------------------------------------------------------------- sharding


def shard_seeds(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """``tree`` (a stacked agent, or a batch or keys with a leading seed axis) with that axis
    split evenly over ``devices`` (default ``jax.devices()``), through
    ``NamedSharding(Mesh(devices, ("seed",)), PartitionSpec("seed"))``. N must be a multiple of
    the device count. ``update_stacked`` places its batch and keys as the agent is placed, so
    sharding the agent alone is enough there."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
    if None in sizes or len(sizes) != 1:
        raise ValueError("shard_seeds: every leaf needs the same leading seed axis, got "
                         f"leading sizes {sorted(sizes, key=str)}")
    n = sizes.pop()
    if n % len(devices):
        raise ValueError(f"shard_seeds: {n} seeds do not split evenly over {len(devices)} "
                         "devices; use a multiple of the device count")
    return jax.device_put(tree, seed_sharding(devices))


def seed_sharding(devices: Sequence[Any]) -> NamedSharding:
    """The sharding that splits a leading seed axis evenly over ``devices``."""
    return NamedSharding(Mesh(np.array(list(devices)), (SEED_AXIS,)), PartitionSpec(SEED_AXIS))


def _placed_like(stacked: SACAgent, tree: Any) -> Any:
    """``tree`` put where the agent's seed axis lives when the agent is sharded; else as is (the
    compiled call moves host arrays to the agent's device itself)."""
    sharding = jax.tree.leaves(stacked)[0].sharding
    if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1:
        return jax.device_put(tree, sharding)
    return tree


# ---------------------------------------------------------------- updates


def _update_stacked(stacked: SACAgent, batch: Batch, keys: jax.Array
                    ) -> tuple[SACAgent, dict[str, jax.Array]]:
    return jax.vmap(_update)(stacked, batch, keys)


_update_stacked_jit = jax.jit(_update_stacked, donate_argnums=0)
"""The compiled update of a stacked agent (``update_stacked``); ``_cache_size()`` counts
compilations."""


def update_stacked(stacked: SACAgent, batch: Batch, keys: Any, validate: bool = True
                   ) -> tuple[SACAgent, dict[str, jax.Array]]:
    """K gradient steps for each of the N seeds in one compiled call: seed i runs
    ``unstack(stacked)[i].update(batch_i, keys[i])`` (``batch_i``: slice i of every field).

    ``batch`` fields have a leading seed axis, (N, K, B, ...); ``keys`` is (N,). Returns the
    stacked agent and metrics of shape (N,), each seed's mean over its K steps. The stacked
    agent's buffers are donated: use the returned one. ``validate=False`` skips the checks of
    seed axes and shapes (``keys`` must then be one (N,) array), for a caller repeating a call
    that passed them (the training loop: they cost more host time than the launch of a small
    update).
    """
    if validate:
        n = seed_count(stacked)
        if not isinstance(batch, Batch):
            raise ValueError(f"update_stacked expects a sac.Batch, got {type(batch).__name__}")
        leading = tuple(np.shape(batch.rewards))[:1]
        if leading != (n,):
            raise ValueError(f"update_stacked: batch.rewards has shape {np.shape(batch.rewards)}, "
                             f"expected (N={n}, K, B)")
        check_batch(stacked, _one_seed_shapes(batch))
        keys = _seed_keys(keys, n, "update_stacked")
    batch, keys = _placed_like(stacked, (batch, keys))
    return _update_stacked_jit(stacked, batch, keys)


def _one_seed_shapes(batch: Batch) -> Batch:
    """The batch's shapes and dtypes with the seed axis dropped (no data touched), for
    ``check_batch``; a field without the seed axis fails its check there."""
    def shape_of(x: Any) -> jax.ShapeDtypeStruct:
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        return jax.ShapeDtypeStruct(np.shape(x)[1:], dtype)

    return jax.tree.map(shape_of, batch)


def _update_from_stacked(stacked: SACAgent, store: Any, indices: Any, keys: jax.Array,
                         gather: Callable[[Any, Any], Mapping[str, jax.Array]]
                         ) -> tuple[SACAgent, dict[str, jax.Array]]:
    def one_seed(agent: SACAgent, seed_store: Any, seed_indices: Any, key: jax.Array):
        return _update_from(agent, seed_store, seed_indices, key, gather)

    return jax.vmap(one_seed)(stacked, store, indices, keys)


_update_from_stacked_jit = jax.jit(_update_from_stacked, donate_argnums=0, static_argnums=4)
"""The compiled stacked update over batches gathered on the device (``update_from_stacked``)."""


def update_from_stacked(stacked: SACAgent, store: Any, indices: Any, keys: Any,
                        gather: Callable[[Any, Any], Mapping[str, jax.Array]],
                        validate: bool = True) -> tuple[SACAgent, dict[str, jax.Array]]:
    """``SACAgent.update_from`` for every seed in one compiled call: seed i trains on
    ``gather(store_i, indices_i)`` with ``keys[i]``.

    ``store`` is one pytree whose leaves carry the seed axis first (N stores stacked, e.g.
    (N, n_envs, slots, *obs) frames); every leaf of ``indices`` is (N, K, ...). A tuple of N
    separate stores is not accepted: ``vmap`` needs one array per leaf, and stacking N separate
    stores inside the call would copy every store on every call. ``store`` is read, not
    donated; ``gather`` must be a module-level function (a static argument). ``validate``: as
    in ``update_stacked``.
    """
    if validate:
        n = seed_count(stacked)
        for name, tree in (("store", store), ("indices", indices)):
            for leaf in jax.tree.leaves(tree):
                if np.shape(leaf)[:1] != (n,):
                    raise ValueError(f"update_from_stacked: a leaf of {name} has shape "
                                     f"{np.shape(leaf)}, expected a leading seed axis of {n}")
        keys = _seed_keys(keys, n, "update_from_stacked")
    indices, keys = _placed_like(stacked, (indices, keys))
    return _update_from_stacked_jit(stacked, store, indices, keys, gather)


# ---------------------------------------------------------------- acting


def _act_stacked(config: SACConfig, observation_shape: tuple[int, ...], action_dim: int,
                 head_params: Any, encoder_params: Any, observations: jax.Array,
                 keys: jax.Array, deterministic: bool) -> jax.Array:
    def one_seed(head: Any, encoder: Any, seed_observations: jax.Array, key: jax.Array):
        return _act(config, observation_shape, action_dim, head, encoder, seed_observations,
                    key, deterministic)

    return jax.vmap(one_seed)(head_params, encoder_params, observations, keys)


_act_stacked_jit = jax.jit(_act_stacked, static_argnums=(0, 1, 2, 7))
"""The compiled acting path of a stacked agent (``act_stacked``)."""


def act_stacked(stacked: SACAgent, observations: Any, keys: Any = None,
                deterministic: bool = False, validate: bool = True) -> jax.Array:
    """Actions in [-1, 1]^d for every seed at once: observations (N, E, *obs_shape) ->
    (N, E, d), seed i's E actions drawn by its own policy with ``keys[i]`` (keys (N,); None
    only with ``deterministic``). Only the policies' parameters enter the compiled call.
    ``validate``: as in ``update_stacked`` (skipped only where keys are given, stacked)."""
    deterministic = bool(deterministic)
    if validate or keys is None:
        n = seed_count(stacked)
        shape = tuple(np.shape(observations))
        if len(shape) != 2 + len(stacked.observation_shape) or shape[0] != n or \
                shape[2:] != stacked.observation_shape:
            raise ValueError(f"act_stacked: observations of shape {shape}, expected "
                             f"(N={n}, E, *{stacked.observation_shape})")
        if keys is None:
            if not deterministic:
                raise ValueError("act_stacked: keys are required unless deterministic=True")
            keys = jax.random.split(jax.random.key(0), n)
        keys = _seed_keys(keys, n, "act_stacked")
    policy = stacked.policy()
    return _act_stacked_jit(stacked.config, stacked.observation_shape, stacked.action_dim,
                            policy.head, policy.encoder, observations, keys, deterministic)
