"""Rasterizer: draws the arena top-down into a reused pygame software Surface and returns uint8 (H, W, 3) pixels.

The image covers the whole arena, [-ARENA_HALF, ARENA_HALF]^2, drawn directly
at the requested size (no resize pass). Image convention: ``pixels[row, col]``
with row growing southwards (world -y) and col eastwards (world +x); see
:func:`world_to_pixel`. The colours are module constants so tests and users
can look for them:

| thing | constant | RGB |
| --- | --- | --- |
| background (arena floor) | ``BACKGROUND_COLOR`` | (16, 16, 24) |
| walls (image border) | ``WALL_COLOR`` | (128, 128, 128) |
| player | ``PLAYER_COLOR`` | (40, 200, 255) |
| projectiles | ``PROJECTILE_COLOR`` | (255, 64, 32) |

The player is drawn last, so it is on top of anything it overlaps. Bodies are discs centred
on the pixel corner nearest their position, so the image of a world rotated or reflected by a
symmetry of the square is the rotated or reflected image (``SACConfig.symmetry`` relies on it;
``tests/test_env.py`` checks it for all eight symmetries).
"""

from __future__ import annotations

import math
import os

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (the environment variables must be set first)

from dodgerl.envs.arena import ARENA_HALF, ARENA_SIZE, PLAYER_RADIUS  # noqa: E402

BACKGROUND_COLOR = (16, 16, 24)
WALL_COLOR = (128, 128, 128)
PLAYER_COLOR = (40, 200, 255)
PROJECTILE_COLOR = (255, 64, 32)
WALL_THICKNESS_M = 0.2
"""Drawn thickness of the walls (at least one pixel)."""
MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 256


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is an int in [64, 256]; ValueError otherwise."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    return int(image_size)


def world_to_pixel(x: float, y: float, image_size: int) -> tuple[int, int]:
    """Return ``(row, col)`` of the pixel containing world point (x, y), so ``pixels[row, col]`` is that point.

    Not clamped: points outside the arena give indices outside [0, image_size).
    """
    scale = image_size / ARENA_SIZE
    return math.floor((ARENA_HALF - y) * scale), math.floor((x + ARENA_HALF) * scale)


class Rasterizer:
    """Draws frames of one size; one Surface, reused for every frame."""

    def __init__(self, image_size: int, projectile_radius: float) -> None:
        self.image_size = check_image_size(image_size)
        size = self.image_size
        self.scale = size / ARENA_SIZE
        self.surface = pygame.Surface((size, size))
        # Static layer (floor + walls) drawn once; each frame starts with a
        # memcpy of it into the surface's pixel memory, faster than SDL's blit or
        # fill at these sizes (docs/env.md). Holding the buffer keeps the
        # surface locked; pygame.draw and tobytes work on locked surfaces.
        self.surface.fill(BACKGROUND_COLOR)
        wall_px = max(1, round(WALL_THICKNESS_M * self.scale))
        pygame.draw.rect(self.surface, WALL_COLOR, pygame.Rect(0, 0, size, size), wall_px)
        self._buffer = self.surface.get_buffer()
        self._pixels = np.frombuffer(self._buffer, dtype=np.uint8)
        self._background = self._pixels.copy()
        self.player_radius_px = max(1, round(PLAYER_RADIUS * self.scale))
        self.projectile_radius_px = max(1, round(projectile_radius * self.scale))

    def draw(self, player_pos: np.ndarray, proj_pos: np.ndarray) -> np.ndarray:
        """Draw one frame; returns a fresh read-only uint8 (size, size, 3) array."""
        surf = self.surface
        np.copyto(self._pixels, self._background)
        scale = self.scale
        # pygame.draw.circle((col, row), r) fills pixels col - r .. col + r - 1 (rows alike): a
        # disc centred on the top-left corner of pixel (row, col). Each body's disc is centred on
        # the pixel corner nearest its position (rint), so the drawing commutes with the square's
        # rotations and reflections: corner c <-> S - c (floor would be off by a pixel in the
        # mirror image).
        if proj_pos.shape[0]:
            cols = np.rint((proj_pos[:, 0] + ARENA_HALF) * scale).astype(np.int64).tolist()
            rows = np.rint((ARENA_HALF - proj_pos[:, 1]) * scale).astype(np.int64).tolist()
            circle = pygame.draw.circle
            r = self.projectile_radius_px
            for col, row in zip(cols, rows):
                circle(surf, PROJECTILE_COLOR, (col, row), r)
        col = round((float(player_pos[0]) + ARENA_HALF) * scale)
        row = round((ARENA_HALF - float(player_pos[1])) * scale)
        pygame.draw.circle(surf, PLAYER_COLOR, (col, row), self.player_radius_px)
        size = self.image_size
        return np.frombuffer(pygame.image.tobytes(surf, "RGB"), dtype=np.uint8).reshape(size, size, 3)
