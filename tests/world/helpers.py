"""Hand-built maps, a colour table that encodes what each pixel shows, and a slow per-pixel
reference renderer (float64, one 2D grid march per pixel) for the world tests."""
from __future__ import annotations

import math

import numpy as np

from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.map import FREE, WorldMap
from lingbot_rt.world.textures import SKY_AZIMUTHS, SKY_ELEVATIONS, ColourTable, Material, Sky

WALL_BLUE = (100, 110)       # blue channel of wall texels, shade 0 (x-faces) and 1 (z-faces)
FLOOR_BLUE, SKY_BLUE = 50, 250


def box_world(rows: list[str], config: WorldConfig | None = None) -> WorldMap:
    """A map from ASCII rows ('#' wall, '.' free; row index = z, column = x) whose colour
    table encodes texels: walls (4u, 4v, 100 or 110), floor (4u, 4v, 50), sky (0, 0, 250)."""
    config = config or WorldConfig(grid_size=len(rows), room_size=(2, len(rows) - 2))
    grid = np.array([[0 if ch == "#" else FREE for ch in row] for row in rows], np.int16)
    world = WorldMap(config, seed=0, layout="rooms", grid=grid, materials=[Material("brick", "red", "grey", 0)],
                     floor=Material("tile", "grey", "white", 0), sky=Sky("clear blue", 0.0, 0.5),
                     num_pillars=0, num_panels=0)
    world.colour_table = coded_colour_table(config.texture_size)      # replaces the cached one
    return world


def coded_colour_table(size: int) -> ColourTable:
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    def texels(blue):
        return np.stack([u * (256 // size), v * (256 // size), np.full_like(u, blue)], -1).reshape(-1, 3)
    sky = np.zeros((SKY_ELEVATIONS * SKY_AZIMUTHS, 3), np.int64)
    sky[:, 2] = SKY_BLUE
    colours = np.concatenate([texels(WALL_BLUE[0]), texels(WALL_BLUE[1]), texels(FLOOR_BLUE), sky]).astype(np.uint8)
    return ColourTable(colours, np.array([[0, size * size]]), 2 * size * size, 3 * size * size, size)


def pose(x: float, z: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0, y: float = 0.0) -> np.ndarray:
    """c2w of an eye at (x, y, z), yaw about the world y axis, pitch up about the camera x."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    r_yaw = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    r_pitch = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    c2w = np.eye(4)
    c2w[:3, :3] = r_yaw @ r_pitch
    c2w[:3, 3] = x, y, z
    return c2w


def reference_render(world: WorldMap, c2w: np.ndarray, intrinsics, height: int, width: int) -> np.ndarray:
    """The same picture as `Renderer.render` for one pose, computed per pixel in float64 with a
    plain grid march: uint8 [H, W, 3]."""
    config, table = world.config, world.colour_table
    size, grid = config.texture_size, world.grid
    fx, fy, cx, cy = intrinsics
    ox, oy, oz = c2w[:3, 3]
    out = np.zeros((height, width, 3), np.uint8)
    for v in range(height):
        for u in range(width):
            d = c2w[:3, :3] @ np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
            t, axis, cell = _march(grid, ox, oz, d[0], d[2])
            hit_y = oy + t * d[1]
            if hit_y > config.floor_y:
                tf = (config.floor_y - oy) / d[1]
                fu = int(math.floor((ox + tf * d[0]) * size)) % size
                fv = int(math.floor((oz + tf * d[2]) * size)) % size
                texel = table.floor_offset + fv * size + fu
            elif hit_y < config.wall_top_y:
                row = min(int(-d[1] / np.linalg.norm(d) * SKY_ELEVATIONS), SKY_ELEVATIONS - 1)
                col = int((math.atan2(d[2], d[0]) + math.pi) / (2 * math.pi) * SKY_AZIMUTHS) % SKY_AZIMUTHS
                texel = table.sky_offset + row * SKY_AZIMUTHS + col
            else:
                along = (oz + t * d[2]) if axis == 0 else (ox + t * d[0])
                wu = int(math.floor((along - math.floor(along)) * size))
                wv = min(max(int((hit_y - config.wall_top_y) * size / config.wall_height), 0), size - 1)
                texel = table.wall_offsets[grid[cell[1], cell[0]], axis] + wv * size + wu
            out[v, u] = table.colours[texel]
    return out


def _march(grid, ox, oz, dx, dz):
    """First solid cell along the horizontal ray: (t, 0 for an x-face / 1 for a z-face, (x, z))."""
    cell = [math.floor(ox), math.floor(oz)]
    origin, direction = (ox, oz), (dx, dz)
    step = [1 if d > 0 else -1 for d in direction]
    boundary = [((c + (s > 0)) - o) / d if d != 0 else math.inf
                for c, s, o, d in zip(cell, step, origin, direction)]
    while True:
        axis = 0 if boundary[0] < boundary[1] else 1
        t = boundary[axis]
        cell[axis] += step[axis]
        boundary[axis] += abs(1 / direction[axis])
        if grid[cell[1], cell[0]] != FREE:
            return t, axis, cell
