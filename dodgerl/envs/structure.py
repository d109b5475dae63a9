"""What an env publishes about the structure of its observation and action, for agents that
use it (``dodgerl.agents.sac.with_observation_structure``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ObservationStructure:
    """The structure of a vector observation and of the action; None where it does not apply."""

    set_layout: tuple[int, ...] | None = None
    """(global features, features per item): the observation is the global features, then
    items of equal size whose last feature is a presence flag."""
    planar_xy: tuple[int, ...] | None = None
    """The index of the x component of each planar (x, y) vector of the observation (y follows);
    every other feature is invariant under rotations and reflections of the plane."""
    action_planar_xy: tuple[int, ...] | None = None
    """The same for the action."""
