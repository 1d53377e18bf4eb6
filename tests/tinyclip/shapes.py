"""Synthetic "colour shape" images for the tiny test CLIP model.

Pure drawing code (Pillow + numpy, no torch), so tests can draw fresh
images of any class with a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CLASSES: list[str] = [f"{c} {s}" for c in COLOURS for s in SHAPES]

ENSEMBLE: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""CLIP's 7-template ensemble (openai-7)."""
TEMPLATES: tuple[str, ...] = ("a photo of a {}.", *ENSEMBLE, "a {}.", "{}")
"""Training caption templates (CLIP's "a photo of a {}." and its 7-template ensemble, plus two bare ones)."""


def caption(label: str, rng: np.random.Generator) -> str:
    """Return a random training caption for ``label``, e.g. ``"art of the red circle."``."""
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(label)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A greyish (dark to light, slightly tinted) background as a float (size, size, 3) array."""
    level = rng.uniform(20, 235)
    tint = rng.uniform(-12, 12, size=3)
    return np.broadcast_to(level + tint, (size, size, 3)).astype(np.float32)


def _polygon(shape: str, cx: float, cy: float, extent: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square or triangle of width ``extent`` centred at (cx, cy), rotated by ``angle``."""
    if shape == "square":
        r, start, n = extent / math.sqrt(2), math.pi / 4, 4
    else:  # equilateral triangle, pointing up when angle == 0
        r, start, n = extent / math.sqrt(3), -math.pi / 2, 3
        cy += r / 4  # centre the bounding box rather than the centroid
    return [
        (cx + r * math.cos(start + angle + 2 * math.pi * k / n), cy + r * math.sin(start + angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def draw(label: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Draw one RGB ``size`` x ``size`` image of class ``label`` (e.g. ``"blue triangle"``).

    The shape has a random scale (30-70% of the image) and position, a slightly
    jittered colour, and lies on a random greyish background with mild noise.
    """
    colour_name, shape = label.split(" ")
    if colour_name not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")

    extent = rng.uniform(0.3, 0.7) * size
    half = extent / 2
    cx, cy = rng.uniform(half, size - half, size=2)
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour_name]) + rng.integers(-20, 21, size=3), 0, 255))

    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    if shape == "circle":
        pen.ellipse((cx - half, cy - half, cx + half, cy + half), fill=255)
    else:
        angle = math.radians(rng.uniform(-15, 15))
        pen.polygon(_polygon(shape, cx, cy, extent, angle), fill=255)

    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    pixels = _background(rng, size) * (1 - alpha) + np.array(fill, dtype=np.float32) * alpha
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
