"""Procedural materials: what a wall, the floor and the sky look like, baked into one colour table.

A `Material` is a small description (pattern, colour names, noise seed) that the map generator
draws and the prompt names. `build_colour_table` turns the materials of one map into a single
uint8 table of RGB rows that the renderer indexes per pixel:

* walls: per material two shades (0: faces whose normal is along x, 1: along z, 20% darker,
  a cheap directional light), each `size x size` texels: row = height below the wall top
  (the full wall height), column = position along the cell face (one world unit);
* floor: `size x size` texels covering one cell, repeated;
* sky: `SKY_ELEVATIONS x SKY_AZIMUTHS` texels: rows uniform in the sine of the elevation in
  [0, 1] (the renderer reads it off the unit ray direction without a trig call), columns uniform
  in the azimuth [-180, 180) deg of the ray's horizontal direction, atan2(z, x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named colours, so that prompts say what the frames show.
PALETTE = {
    "red": (176, 58, 46), "orange": (216, 122, 42), "yellow": (226, 196, 64), "green": (72, 146, 62),
    "teal": (42, 140, 138), "blue": (52, 92, 178), "purple": (122, 72, 164), "pink": (218, 122, 164),
    "brown": (122, 82, 52), "grey": (128, 128, 128), "white": (226, 224, 214), "beige": (206, 186, 146),
}
WALL_PATTERNS = {"brick": "brick", "stone": "stone block", "stripe": "striped", "checker": "checkered",
                 "plank": "wooden plank"}
LANDMARK_PATTERNS = {"circle": "circle", "diamond": "diamond", "cross": "cross", "bands": "banded"}
FLOOR_PATTERNS = {"tile": "tiled", "flagstone": "flagstone", "grass": "grassy", "sand": "sandy",
                  "wood": "wooden"}
SKIES = {  # name: (horizon RGB, zenith RGB, cloud cover 0..1, sun visible)
    "clear blue": ((196, 222, 240), (58, 112, 196), 0.15, True),
    "sunset": ((246, 168, 92), (92, 72, 140), 0.3, True),
    "overcast grey": ((196, 198, 202), (132, 138, 148), 0.9, False),
    "pale morning": ((236, 226, 206), (134, 176, 216), 0.4, True),
}
SKY_ELEVATIONS = 64
SKY_AZIMUTHS = 256
Z_FACE_SHADE = 0.8


@dataclass(frozen=True)
class Material:
    """A wall, landmark or floor surface: pattern name, main and accent colour names, noise seed."""
    pattern: str
    colour: str
    accent: str
    seed: int

    def describe(self) -> str:
        if self.pattern in LANDMARK_PATTERNS:
            return f"{self.colour} with a {self.accent} {LANDMARK_PATTERNS[self.pattern]}"
        phrase = WALL_PATTERNS.get(self.pattern) or FLOOR_PATTERNS[self.pattern]
        return f"{self.colour} {phrase}"


@dataclass(frozen=True)
class Sky:
    name: str                 # a key of SKIES
    sun_azimuth: float        # radians, same convention as the table's azimuth
    sun_elevation: float      # radians above the horizon


@dataclass(frozen=True)
class ColourTable:
    """RGB rows [N, 3] uint8 and where each surface's texels start (see the module docstring)."""
    colours: np.ndarray
    wall_offsets: np.ndarray  # [num_materials, 2] int: first row of (material, shade)
    floor_offset: int
    sky_offset: int
    texture_size: int


def _rgb(name: str) -> np.ndarray:
    return np.array(PALETTE[name], np.float64) / 255


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise [size, size] in [-1, 1], periodic, `cells` blobs per side."""
    coarse = rng.uniform(-1, 1, (cells, cells))
    pos = (np.arange(size) + 0.5) * cells / size - 0.5
    low = np.floor(pos).astype(int)
    frac = pos - low
    i0, i1 = low % cells, (low + 1) % cells
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i1] * frac[:, None]
    return rows[:, i0] * (1 - frac) + rows[:, i1] * frac


def _grid(size: int, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Texel centre coordinates (u along the face in [0, 1), v down from the top in [0, height))."""
    u = (np.arange(size) + 0.5) / size
    return np.meshgrid(u, u * height, indexing="xy")


def _wall_pattern(material: Material, size: int, wall_height: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Brightness/colour [size, size, 3] in [0, 1] of an ordinary wall pattern."""
    u, v = _grid(size, wall_height)
    base, accent = _rgb(material.colour), _rgb(material.accent)
    jitter = rng.uniform(0.8, 1.15, 64)
    if material.pattern in ("brick", "stone"):
        row_height, block_width = (0.25, 0.5) if material.pattern == "brick" else (0.375, 0.5)
        row = np.floor(v / row_height).astype(int)
        shifted = u + 0.5 * block_width * (row % 2)
        column = np.floor(shifted / block_width).astype(int)
        mortar = ((v % row_height) < 0.03) | ((shifted % block_width) < 0.03)
        shade = jitter[(row * 7 + column * 13) % 64]
        colour = base[None, None] * shade[..., None]
        return np.where(mortar[..., None], accent * 0.5 + 0.35, colour)
    if material.pattern == "stripe":
        stripe = (np.floor(u * 4) % 2).astype(bool)
        return np.where(stripe[..., None], base, base * 0.55 + accent * 0.25)
    if material.pattern == "checker":
        square = ((np.floor(u * 4) + np.floor(v * 4)) % 2).astype(bool)
        return np.where(square[..., None], base, base * 0.5 + 0.45)
    # plank: horizontal boards with seams and grain
    board = np.floor(v / 0.2).astype(int)
    seam = (v % 0.2) < 0.02
    grain = 0.9 + 0.1 * np.sin(u * 40 + jitter[board % 64] * 9)
    colour = base[None, None] * (grain * jitter[(board * 5) % 64])[..., None]
    return np.where(seam[..., None], base * 0.35, colour)


def _landmark_pattern(material: Material, size: int, wall_height: float) -> np.ndarray:
    """A bold emblem in the accent colour on the main colour, framed: easy to recognise."""
    u, v = _grid(size, wall_height)
    x, y = u - 0.5, (v - wall_height / 2) / wall_height   # centred, both in [-0.5, 0.5)
    if material.pattern == "circle":
        mark = x * x + y * y < 0.3 ** 2
    elif material.pattern == "diamond":
        mark = np.abs(x) + np.abs(y) < 0.35
    elif material.pattern == "cross":
        mark = (np.abs(x) < 0.09) | (np.abs(y) < 0.09)
    else:  # bands
        mark = (np.floor(v / wall_height * 6) % 2).astype(bool)
    frame = (np.abs(x) > 0.44) | (np.abs(y) > 0.46)
    colour = np.where(mark[..., None], _rgb(material.accent), _rgb(material.colour))
    return np.where(frame[..., None], 0.12, colour)


def wall_texture(material: Material, size: int, wall_height: float) -> np.ndarray:
    """uint8 [size, size, 3] texels of one cell face of `material` (rows: down from the top)."""
    rng = np.random.default_rng(material.seed)
    if material.pattern in LANDMARK_PATTERNS:
        colour = _landmark_pattern(material, size, wall_height)
    else:
        colour = _wall_pattern(material, size, wall_height, rng)
    colour = colour * (1 + 0.06 * _noise(rng, size, 8)[..., None] + 0.03 * rng.uniform(-1, 1, (size, size, 1)))
    return np.clip(colour * 255, 0, 255).astype(np.uint8)


def floor_texture(material: Material, size: int) -> np.ndarray:
    """uint8 [size, size, 3] texels of one floor cell: row = z, column = x within the cell."""
    rng = np.random.default_rng(material.seed)
    u, v = _grid(size, 1.0)
    base, accent = _rgb(material.colour), _rgb(material.accent)
    if material.pattern == "tile":
        square = ((np.floor(u * 2) + np.floor(v * 2)) % 2).astype(bool)
        grout = (u % 0.5 < 0.03) | (v % 0.5 < 0.03)
        colour = np.where(square[..., None], base, base * 0.8 + accent * 0.15)
        colour = np.where(grout[..., None], base * 0.45, colour)
    elif material.pattern == "flagstone":
        seam = (u < 0.04) | (v < 0.04) | ((np.abs(u - 0.55) < 0.02) & (v < 0.5))
        colour = np.where(seam[..., None], base * 0.4, base * (1 + 0.12 * _noise(rng, size, 4))[..., None])
    elif material.pattern == "wood":
        board = np.floor(u * 4)
        colour = base * (0.85 + 0.1 * np.sin(v * 30 + board * 2.1) + 0.05 * (board % 2))[..., None]
        colour = np.where((u % 0.25 < 0.02)[..., None], base * 0.4, colour)
    else:  # grass, sand: noise only
        colour = base * (1 + 0.25 * _noise(rng, size, 8) + 0.1 * _noise(rng, size, 32))[..., None]
    colour = colour * (1 + 0.05 * rng.uniform(-1, 1, (size, size, 1)))
    return np.clip(colour * 255, 0, 255).astype(np.uint8)


def sky_texture(sky: Sky, seed: int) -> np.ndarray:
    """uint8 [SKY_ELEVATIONS, SKY_AZIMUTHS, 3]: gradient, sun glow and disc, soft clouds."""
    horizon, zenith, cloud_cover, sun = SKIES[sky.name]
    horizon, zenith = np.array(horizon) / 255, np.array(zenith) / 255
    elevation = np.arcsin((np.arange(SKY_ELEVATIONS) + 0.5) / SKY_ELEVATIONS)
    azimuth = (np.arange(SKY_AZIMUTHS) + 0.5) / SKY_AZIMUTHS * 2 * np.pi - np.pi
    elevation, azimuth = np.meshgrid(elevation, azimuth, indexing="ij")
    blend = (elevation / (np.pi / 2)) ** 0.6
    colour = horizon * (1 - blend[..., None]) + zenith * blend[..., None]
    if sun:
        cos_angle = (np.cos(elevation) * np.cos(sky.sun_elevation) * np.cos(azimuth - sky.sun_azimuth)
                     + np.sin(elevation) * np.sin(sky.sun_elevation))
        glow = np.exp((cos_angle - 1) * 12)[..., None]
        colour = colour * (1 - 0.5 * glow) + np.array([1.0, 0.95, 0.8]) * 0.5 * glow
        colour = np.where((cos_angle > np.cos(np.radians(4)))[..., None], np.array([1.0, 0.98, 0.9]), colour)
    rng = np.random.default_rng(seed)
    clouds = (0.5 * _noise(rng, SKY_AZIMUTHS, 16) + 0.25 * _noise(rng, SKY_AZIMUTHS, 48))[:SKY_ELEVATIONS]
    # clouds thin out upwards: the azimuth x elevation grid pinches to a point at the zenith
    density = np.clip((clouds + cloud_cover - 0.5) * 2, 0, 1) * np.clip(1 - 1.3 * np.sin(elevation), 0, 1)
    colour = colour * (1 - density[..., None]) + 0.93 * density[..., None]
    return np.clip(colour * 255, 0, 255).astype(np.uint8)


def build_colour_table(materials: list[Material], floor: Material, sky: Sky, size: int,
                       wall_height: float, seed: int) -> ColourTable:
    """All texels of one map in one table (layout in the module docstring)."""
    rows, wall_offsets, offset = [], [], 0
    for material in materials:
        texels = wall_texture(material, size, wall_height).reshape(-1, 3)
        darker = (texels.astype(np.float64) * Z_FACE_SHADE).astype(np.uint8)
        rows += [texels, darker]
        wall_offsets.append([offset, offset + len(texels)])
        offset += 2 * len(texels)
    floor_offset = offset
    rows.append(floor_texture(floor, size).reshape(-1, 3))
    sky_offset = floor_offset + size * size
    rows.append(sky_texture(sky, seed).reshape(-1, 3))
    return ColourTable(np.concatenate(rows), np.array(wall_offsets, np.int64), floor_offset, sky_offset, size)
