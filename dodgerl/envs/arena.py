"""Arena physics: a pymunk space with walls, the player and the projectiles, advanced one control step at a time.

World frame: metres, origin at the arena centre, x to the east, y to the north.
The arena is ``ARENA_SIZE`` x ``ARENA_SIZE`` with four static wall segments on
its edges. The player is a dynamic circle (1 kg, infinite moment) dragged by a
kinematic control body whose velocity is set from the action at every control
step (a pivot joint without position bias, as in pymunk's tank demo), so it
reaches the target velocity at once and the walls still stop it. Projectiles are
kinematic pymunk bodies moving in straight lines; they are spawned on the
arena edge (walls do not stop them) and removed once they are more than
``DESPAWN_MARGIN`` outside the arena.

Timing: pymunk steps at ``PHYSICS_DT`` = 1/60 s, ``SUBSTEPS`` = 2 per control
step, so one env step is ``CONTROL_DT`` = 1/30 s and 1000 steps are 33.3 s.

Hits are found geometrically rather than with pymunk collision callbacks: the
exact minimum distance between the player and each projectile over the
control step (both move linearly within it), compared with the sum of the
radii. This cannot tunnel, whatever the speeds, and costs one vectorised numpy
pass instead of a Python callback per contact. Positions and velocities are
read from pymunk in one call through ``pymunk.batch``.

Determinism: all randomness comes from the generator passed in, and reset
returns the space to the state of a freshly built one (projectiles removed,
cached contacts and joint impulses dropped), so the same seed replays the same
trajectory bit for bit, in a new env or a reused one.
"""

from __future__ import annotations

import math

import numpy as np
import pymunk
import pymunk.batch

from dodgerl.envs.levels import LevelSpec

ARENA_SIZE = 20.0
"""Side of the square arena in metres."""
ARENA_HALF = ARENA_SIZE / 2.0
PHYSICS_DT = 1.0 / 60.0
SUBSTEPS = 2
CONTROL_DT = PHYSICS_DT * SUBSTEPS
PLAYER_RADIUS = 0.5
PLAYER_SPEED = 6.0
"""Player speed in m/s at full action."""
DASH_SPEED_MULTIPLIER = 2.5
DASH_STEPS = 6
"""Control steps a dash lasts (0.2 s)."""
DASH_COOLDOWN_STEPS = 45
"""Control steps from the start of a dash until the next can start (1.5 s)."""
MAX_PLAYER_SPEED = PLAYER_SPEED * DASH_SPEED_MULTIPLIER
CONTROL_MAX_FORCE = 1.0e4
"""Newtons the control joint may use on the 1 kg player: reaches the target velocity within one physics step."""
PLAYER_START_SPREAD = 2.0
"""The player starts uniformly within +- this many metres of the centre."""
DESPAWN_MARGIN = 1.0

_FIELDS = pymunk.batch.BodyFields.BODY_ID | pymunk.batch.BodyFields.POSITION | pymunk.batch.BodyFields.VELOCITY


class Arena:
    """The simulation behind :class:`dodgerl.envs.dodge_env.DodgeEnv`; knows nothing of observations or rewards.

    After :meth:`reset` and each :meth:`step`, ``player_pos`` / ``player_vel``
    are float64 (2,) arrays and ``proj_pos`` / ``proj_vel`` float64 (n, 2)
    arrays of the live projectiles (world frame), in pymunk's body order;
    ``rel`` (n, 4) is each projectile's position and velocity minus the
    player's and ``dist`` (n,) the centre distance. They are replaced, never
    mutated, by the next step.
    """

    def __init__(self, spec: LevelSpec, dash_enabled: bool) -> None:
        self.spec = spec
        self.dash_enabled = dash_enabled
        self._buffer = pymunk.batch.Buffer()
        self._aim_spread_rad = math.radians(spec.aim_spread_deg)
        self._hit_radius = PLAYER_RADIUS + spec.projectile_radius
        self._near = self._hit_radius + (spec.speed_range[1] + MAX_PLAYER_SPEED) * CONTROL_DT + 0.5  # + slack for wall pushes
        self.space: pymunk.Space | None = None

    # ------------------------------------------------------------------ reset
    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        if self.space is None:
            self._build_space()
        space = self.space
        # Back to the state of a freshly built space: no projectiles, and a
        # new player body, shape and joint, so no cached contacts, joint
        # impulses or contact bias velocity carry over (pymunk exposes no way
        # to clear the bias). The walls and the space are kept: rebuilding
        # them costs more than a whole random episode's steps on level 1.
        if self._bodies:
            space.remove(*self._bodies.values())
        space.remove(self.player, self.player_shape, self.pivot, self.control)
        start = rng.uniform(-PLAYER_START_SPREAD, PLAYER_START_SPREAD, size=2)
        self._add_player((float(start[0]), float(start[1])))
        self._bodies: dict[int, pymunk.Body] = {}
        self.steps = 0
        self.dash_steps_left = 0
        self.dash_cooldown = 0
        self.hit = False
        self._next_volley = self.spec.first_volley_step
        self._player_state = np.array([start[0], start[1], 0.0, 0.0], dtype=np.float64)
        self.player_pos = self._player_state[0:2]
        self.player_vel = self._player_state[2:4]
        self._set_projectiles(np.zeros((0, 4), dtype=np.float64))

    def _build_space(self) -> None:
        space = pymunk.Space()
        space.collision_slop = 0.01  # metres of allowed wall overlap (pymunk's default 0.1 is visible)
        h = ARENA_HALF
        corners = [(-h, -h), (h, -h), (h, h), (-h, h)]
        for a, b in zip(corners, corners[1:] + corners[:1]):
            wall = pymunk.Segment(space.static_body, a, b, 0.0)
            wall.elasticity = 0.0
            wall.friction = 0.0
            space.add(wall)
        self.space = space
        self.control = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        self._static_id = space.static_body.id
        self._add_player((0.0, 0.0))
        self._bodies = {}

    def _add_player(self, position: tuple[float, float]) -> None:
        """Add a new player body and shape at ``position``, with the control body and joint that drive it."""
        player = pymunk.Body(1.0, float("inf"))
        player.position = position
        shape = pymunk.Circle(player, PLAYER_RADIUS)
        shape.elasticity = 0.0
        shape.friction = 0.0
        control = self.control
        control.position = position
        control.velocity = (0.0, 0.0)
        self.player = player
        self.player_shape = shape
        # The action drives the kinematic control body; a pivot joint with no
        # position bias makes the player follow its velocity while contacts
        # with the walls still win (setting the player's velocity directly
        # would overwrite the contact solver's result and sink into walls).
        self.pivot = self._make_pivot()
        self.space.add(player, control, shape, self.pivot)
        self._player_id = player.id
        self._control_id = control.id

    def _make_pivot(self) -> pymunk.PivotJoint:
        pivot = pymunk.PivotJoint(self.control, self.player, (0.0, 0.0), (0.0, 0.0))
        pivot.max_bias = 0.0
        pivot.max_force = CONTROL_MAX_FORCE
        return pivot

    # ------------------------------------------------------------------- step
    def step(self, vx: float, vy: float, dash: bool) -> bool:
        """Advance one control step with the desired velocity in [-1, 1]^2 (norm clipped to 1). Returns hit."""
        spec = self.spec
        if self.dash_cooldown > 0:
            self.dash_cooldown -= 1
        if self.dash_steps_left > 0:
            self.dash_steps_left -= 1
        if dash and self.dash_enabled and self.dash_cooldown == 0:
            self.dash_steps_left = DASH_STEPS
            self.dash_cooldown = DASH_COOLDOWN_STEPS
        norm2 = vx * vx + vy * vy
        if norm2 > 1.0:
            inv = 1.0 / math.sqrt(norm2)
            vx *= inv
            vy *= inv
        speed = MAX_PLAYER_SPEED if self.dash_steps_left > 0 else PLAYER_SPEED

        if self.steps == self._next_volley:
            self._spawn_volley()
            lo, hi = spec.spawn_interval_steps
            self._next_volley = self.steps + int(self.rng.integers(lo, hi + 1))

        start_player = self.player_pos
        self.control.velocity = (vx * speed, vy * speed)
        space = self.space
        for _ in range(SUBSTEPS):
            space.step(PHYSICS_DT)
        self.steps += 1
        self._read_bodies()

        if self.proj.shape[0] == 0:
            return False
        self.hit = False
        # Cheap bound first: nothing can hit unless some projectile ends the
        # step within hit radius + the most either can move in one step.
        if float(self.dist.min()) < self._near:
            self.hit = self._swept_hit(start_player)
        if float(np.abs(self.proj_pos).max()) > ARENA_HALF + DESPAWN_MARGIN:
            self._remove((np.abs(self.proj_pos) > ARENA_HALF + DESPAWN_MARGIN).any(axis=1))
        return self.hit

    # -------------------------------------------------------------- internals
    def _swept_hit(self, start_player: np.ndarray) -> bool:
        """Exact minimum player-projectile distance over the step, against the sum of the radii.

        Both move linearly within the step, so the relative position is
        r0 + s * d for s in [0, 1].
        """
        d = self.proj_vel * CONTROL_DT - (self.player_pos - start_player)
        r0 = self.rel[:, 0:2] - d
        dd = np.einsum("ij,ij->i", d, d)
        s = np.clip(-np.einsum("ij,ij->i", r0, d) / np.maximum(dd, 1e-12), 0.0, 1.0)
        closest = r0 + s[:, None] * d
        return bool((np.einsum("ij,ij->i", closest, closest) < self._hit_radius**2).any())

    def _read_bodies(self) -> None:
        """Read every body's position and velocity from pymunk in one call; derive relative states."""
        buf = self._buffer
        buf.clear()
        pymunk.batch.get_space_bodies(self.space, _FIELDS, buf)
        data = np.frombuffer(buf.float_buf(), dtype=np.float64).reshape(-1, 4)
        ids = np.frombuffer(buf.int_buf(), dtype=np.int64)
        m = ids.shape[0]
        # pymunk lists non-static bodies in the order added (the player, the
        # control body, then projectiles; removal swaps the last one in) and
        # the static body last; check, and fall back to masks if a future
        # pymunk orders them differently.
        if int(ids[0]) == self._player_id and int(ids[1]) == self._control_id and int(ids[m - 1]) == self._static_id:
            player = data[0].copy()
            proj = data[2 : m - 1].copy()
            self._proj_ids = ids[2 : m - 1]
        else:
            is_player = ids == self._player_id
            player = data[is_player][0]
            keep = ~is_player & (ids != self._control_id) & (ids != self._static_id)
            proj = data[keep]
            self._proj_ids = ids[keep]
        self._player_state = player
        self.player_pos = player[0:2]
        self.player_vel = player[2:4]
        self._set_projectiles(proj)

    def _set_projectiles(self, proj: np.ndarray) -> None:
        self.proj = proj
        self.proj_pos = proj[:, 0:2]
        self.proj_vel = proj[:, 2:4]
        self.rel = proj - self._player_state
        self.dist = np.hypot(self.rel[:, 0], self.rel[:, 1])

    def _remove(self, gone: np.ndarray) -> None:
        for body_id in self._proj_ids[gone].tolist():
            self.space.remove(self._bodies.pop(body_id))
        self._proj_ids = self._proj_ids[~gone]
        self._set_projectiles(self.proj[~gone])

    def _spawn_volley(self) -> None:
        spec = self.spec
        rng = self.rng
        h = ARENA_HALF
        px, py = float(self.player_pos[0]), float(self.player_pos[1])
        count = min(spec.volley_size, spec.max_projectiles - len(self._bodies))
        for _ in range(count):
            u = rng.random(4)
            theta = math.radians(spec.spawn_direction_deg + (u[0] - 0.5) * spec.spawn_arc_deg)
            c, s = math.cos(theta), math.sin(theta)
            k = h / max(abs(c), abs(s))
            x, y = c * k, s * k
            shift = (2.0 * u[1] - 1.0) * spec.edge_spread
            if abs(c) >= abs(s):  # east or west edge: shift along y
                y = min(h, max(-h, y + shift))
            else:
                x = min(h, max(-h, x + shift))
            aim = math.atan2(py - y, px - x) + (2.0 * u[2] - 1.0) * self._aim_spread_rad
            lo, hi = spec.speed_range
            speed = lo + (hi - lo) * u[3]
            body = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
            body.position = (x, y)
            body.velocity = (speed * math.cos(aim), speed * math.sin(aim))
            self.space.add(body)
            self._bodies[body.id] = body
