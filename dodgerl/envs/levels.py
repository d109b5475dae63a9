"""Level specs: every difficulty knob of the dodge arena, in one table.

A level is data, not code: the simulation reads a :class:`LevelSpec` and never
branches on the level number. ``LEVELS`` holds the three built-in levels:

| level | spawn directions | volley | interval (steps) | speed (m/s) | aim spread |
| --- | --- | --- | --- | --- | --- |
| 1 | one fixed direction: the north edge, spread +-8 m along it | 1 | 12-20 | 14-16 | +-3 deg |
| 2 | any angle, all around the arena | 1 | 10-16 | 15-18 | +-3 deg |
| 3 | any angle, all around the arena | 3 at once | 18-26 | 15-18 | +-6 deg |

Steps are control steps (1/30 s, see :mod:`dodgerl.envs.arena`). The player
runs at 6 m/s (15 m/s during a dash), so a projectile seen more than about
0.15 s ahead can always be sidestepped. The reference returns of the scripted
heuristic, the lookahead planner (a policy of the current state: every level can
be played well from what the observation shows) and random play are in
docs/env.md (``scripts/reference_returns.py``).

Pass your own ``LevelSpec`` to ``DodgeEnv(level=LevelSpec(...))`` for
experiments; ``volley_size=0`` gives an arena with no projectiles at all
(useful for tests of truncation and of the player's motion).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class LevelSpec:
    """How, where and how often projectiles appear.

    Spawn geometry: a spawn direction ``theta`` is drawn uniformly from
    ``spawn_direction_deg +- spawn_arc_deg / 2`` (world angle, counter-clockwise
    from +x, so 90 is north); the spawn point is where the ray from the arena
    centre at ``theta`` meets the arena edge, shifted along that edge by
    ``U(-edge_spread, edge_spread)`` metres and clamped to the arena. The
    projectile is aimed at the player's current position, rotated by
    ``U(-aim_spread_deg, aim_spread_deg)``, with a speed drawn from
    ``speed_range``.
    """

    name: str
    """Human-readable name, shown in docs and logs."""
    spawn_direction_deg: float = 90.0
    """Centre of the arc of spawn directions, degrees (90 = north edge)."""
    spawn_arc_deg: float = 0.0
    """Full width of the arc of spawn directions: 0 = one fixed direction, 360 = all around."""
    edge_spread: float = 0.0
    """Metres; spawn points are shifted along the edge by up to this much either way."""
    volley_size: int = 1
    """Projectiles spawned together each volley (0 = the arena stays empty)."""
    spawn_interval_steps: tuple[int, int] = (12, 20)
    """Control steps between volleys, drawn uniformly from [lo, hi] (inclusive)."""
    first_volley_step: int = 0
    """Control step of the first volley after reset."""
    speed_range: tuple[float, float] = (12.0, 14.0)
    """Projectile speed in m/s, drawn uniformly from [lo, hi]."""
    aim_spread_deg: float = 3.0
    """Aim error, uniform in +- this many degrees around the line to the player."""
    projectile_radius: float = 0.3
    """Projectile radius in metres."""
    max_projectiles: int = 48
    """Cap on live projectiles; a volley that would exceed it is cut short."""

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"LevelSpec {self.name!r}: {field} {why}, got {getattr(self, field)!r}")

        if not 0.0 <= self.spawn_arc_deg <= 360.0:
            raise bad("spawn_arc_deg", "must be in [0, 360]")
        if self.edge_spread < 0.0 or not math.isfinite(self.edge_spread):
            raise bad("edge_spread", "must be finite and >= 0")
        if self.volley_size < 0:
            raise bad("volley_size", "must be >= 0")
        lo, hi = self.spawn_interval_steps
        if not (1 <= lo <= hi):
            raise bad("spawn_interval_steps", "must be (lo, hi) with 1 <= lo <= hi")
        if self.first_volley_step < 0:
            raise bad("first_volley_step", "must be >= 0")
        slo, shi = self.speed_range
        if not (0.0 < slo <= shi <= 60.0):
            raise bad("speed_range", "must be (lo, hi) with 0 < lo <= hi <= 60 m/s")
        if not 0.0 <= self.aim_spread_deg <= 180.0:
            raise bad("aim_spread_deg", "must be in [0, 180]")
        if not 0.0 < self.projectile_radius <= 2.0:
            raise bad("projectile_radius", "must be in (0, 2] m")
        if self.max_projectiles < 1:
            raise bad("max_projectiles", "must be >= 1")


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec(
        name="one direction",
        spawn_direction_deg=90.0,
        spawn_arc_deg=0.0,
        edge_spread=8.0,
        volley_size=1,
        spawn_interval_steps=(12, 20),
        speed_range=(14.0, 16.0),
        aim_spread_deg=3.0,
    ),
    2: LevelSpec(
        name="all around",
        spawn_arc_deg=360.0,
        edge_spread=0.0,
        volley_size=1,
        spawn_interval_steps=(10, 16),
        speed_range=(15.0, 18.0),
        aim_spread_deg=3.0,
    ),
    3: LevelSpec(
        name="volleys",
        spawn_arc_deg=360.0,
        edge_spread=0.0,
        volley_size=3,
        spawn_interval_steps=(18, 26),
        speed_range=(15.0, 18.0),
        aim_spread_deg=6.0,
    ),
}


def resolve_level(level: int | LevelSpec) -> LevelSpec:
    """Return the spec for a level number or pass a ``LevelSpec`` through; ValueError otherwise."""
    if isinstance(level, LevelSpec):
        return level
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: expected one of {sorted(LEVELS)} or a LevelSpec")
    return LEVELS[level]
