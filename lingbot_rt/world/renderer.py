"""Exact pinhole rendering of a `WorldMap`, vectorised in torch: poses [B, 4, 4] -> uint8 frames.

    renderer = Renderer(world, device="cpu")
    frames = renderer.render(poses, intrinsics, height, width)      # [B, H, W, 3] uint8

Conventions: poses are OpenCV camera-to-world matrices (camera x right, y down, z forward; the
world frame of `lingbot_rt.world.config`), intrinsics are [fx, fy, cx, cy] in pixels of the
height x width frame, and the ray of pixel (u, v) is R K^-1 [u + 0.5, v + 0.5, 1].

Why this is exact. All walls have one height, the eye sits between the floor and the wall
tops, and walls are whole grid cells. So a ray is decided by the first wall its horizontal
projection meets (at ray parameter t, found in 2D): it shows the floor if it reaches the floor
plane before t, the sky if it passes above that wall's top (then, rising, it passes above every
later wall), the wall otherwise. Nothing is sampled or approximated; a pixel's colour is the
texel of its exact hit point.

Why it is fast. Finding the first wall per pixel with a grid march (DDA) costs tens of steps
per pixel. Instead, per frame:

1. Seen from the eye, the first wall along a horizontal direction can only change at the
   direction of a wall corner (a grid vertex where the wall outline turns or ends; straight
   runs of wall have none inside). Sorting the corners by azimuth splits the circle into
   intervals with one wall face each.
2. Each interval is traced once, down its middle, with a 2D DDA in float64: V+1 rays per frame
   (V = corners, ~60 for rooms and ~330 for a maze on a 32x32 grid) instead of H*W.
3. Each pixel finds its interval from its azimuth through a uniform table of `bins` azimuth
   bins (the index of the first corner in each bin), refined by comparing with the few corners
   inside its bin.
4. Per pixel, the exact distance to that interval's face line, then texel indices into one
   colour table (walls, floor, sky) and a single gather.

Steps 1-2 run on the whole batch; steps 3-4 a few frames at a time on a CPU, so that their
float32/int32 temporaries stay in cache. Frames rendered on one device type are reproducible
bit for bit (another device may round a float differently, hence differ at rare edge pixels).
The eye must be in a free cell, between the floor and the wall tops (what `Walker` keeps).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .map import WorldMap
from .textures import SKY_AZIMUTHS, SKY_ELEVATIONS

DEFAULT_BINS = SKY_AZIMUTHS * 32      # azimuth bins per frame; a multiple of the sky's azimuths
PIXELS_PER_CHUNK = 1 << 16            # CPU: pixels shaded per pass (temporaries of ~256 KiB each)


def wall_corners(solid: np.ndarray) -> np.ndarray:
    """Grid vertices [V, 2] (x, z) where the wall outline turns or ends: among the 4 cells
    around the vertex 1 or 3 are solid, or 2 diagonal ones. Outside the grid counts as solid."""
    padded = np.pad(solid, 1, constant_values=True)
    top_left, top_right = padded[:-1, :-1], padded[:-1, 1:]
    bottom_left, bottom_right = padded[1:, :-1], padded[1:, 1:]
    count = top_left.astype(int) + top_right + bottom_left + bottom_right
    diagonal = (count == 2) & (top_left == bottom_right)
    rows, cols = np.nonzero((count == 1) | (count == 3) | diagonal)
    return np.stack([cols, rows], axis=1).astype(np.float64)


def _face_texel_offsets(world: WorldMap) -> np.ndarray:
    """[4 * (G+1) * G] int32: the first texel of the solid cell behind each cell face, indexed
    by (kind, line c, along a). Kinds: 0/1 the face on the line x = c seen moving +x/-x (solid
    column c / c-1, row a), 2/3 the face on z = c seen moving +z/-z (solid row c / c-1, col a).
    Shade 0 for x-faces, 1 for z-faces. Faces with no solid cell behind them hold 0."""
    size, grid = world.size, world.grid
    offsets = world.colour_table.wall_offsets
    table = np.zeros((4, size + 1, size), np.int64)
    for line in range(size + 1):
        for kind, solid_line in ((0, line), (1, line - 1), (2, line), (3, line - 1)):
            if not 0 <= solid_line < size:
                continue
            materials = grid[:, solid_line] if kind < 2 else grid[solid_line, :]
            solid = materials >= 0
            table[kind, line, solid] = offsets[materials[solid], kind // 2]
    return table.reshape(-1).astype(np.int32)


@dataclass
class _FrameTables:
    """Per-frame lookups of one batch, flattened over frames (frame f's entries at f * stride)."""
    sorted_azimuth: torch.Tensor     # [B * stride] f32: corner azimuths ascending, then +inf
    first_in_bin: torch.Tensor       # [B * (bins+1)] i32: global index of the first corner in the bin
    max_corners_per_bin: int
    faces: torch.Tensor              # [4, B * stride] f32 per interval: normal is x (0/1), normal is z
                                     # (0/1), face line - eye along the normal, eye along the face
    face_line: torch.Tensor          # [B * stride] i32: (kind * (G+1) + line) * G, into face_texels


class Renderer:
    """Renders one map on one device; holds the map's tensors and per-resolution ray caches."""

    def __init__(self, world: WorldMap, device: str | torch.device = "cpu", bins: int = DEFAULT_BINS,
                 pixels_per_chunk: int = PIXELS_PER_CHUNK):
        if bins % SKY_AZIMUTHS:
            raise ValueError(f"bins must be a multiple of {SKY_AZIMUTHS}, got {bins}")
        config, table = world.config, world.colour_table
        self.device = torch.device(device)
        self.size = world.size
        self.bins = bins
        self.pixels_per_chunk = pixels_per_chunk
        self.floor_y, self.top_y = config.floor_y, config.wall_top_y
        self.texture_size = config.texture_size
        self.texels_per_unit_height = config.texture_size / config.wall_height
        self.floor_offset, self.sky_offset = table.floor_offset, table.sky_offset
        self.solid = torch.from_numpy(world.solid.reshape(-1)).to(self.device)
        self.corners = torch.from_numpy(wall_corners(world.solid)).to(self.device)          # [V, 2] f64
        self.face_texels = torch.from_numpy(_face_texel_offsets(world)).to(self.device)
        self.colours = torch.from_numpy(table.colours).to(self.device)                       # [N, 3] u8
        self._rays: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- per resolution ------------------------------------------------------------------------
    def camera_rays(self, intrinsics: Sequence[float], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame ray directions [3, H*W] float32 (x, y, z = 1, not normalised) and the
        factor [H*W] that turns a world ray's y into its sky-table row (-rows / norm: y is down);
        cached per (intrinsics, height, width)."""
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        key = (fx, fy, cx, cy, height, width)
        if key not in self._rays:
            rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                        torch.arange(width, dtype=torch.float64), indexing="ij")
            rays = torch.stack([(cols + 0.5 - cx) / fx, (rows + 0.5 - cy) / fy, torch.ones_like(cols)])
            rays = rays.reshape(3, -1)
            sky_rows = -SKY_ELEVATIONS / rays.norm(dim=0)
            self._rays[key] = (rays.float().to(self.device), sky_rows.float().to(self.device))
        return self._rays[key]

    def _azimuth_bins(self, azimuth: torch.Tensor) -> torch.Tensor:
        """Azimuth in [-pi, pi] (float32) -> bin in [0, bins] (int32; bins only for +pi). Pixels
        and corners go through this same function so that equal angles land in equal bins."""
        return (azimuth * (self.bins / (2 * math.pi)) + self.bins / 2).int()

    # ---- per frame -----------------------------------------------------------------------------
    def _trace(self, origin: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2D grid march (Amanatides & Woo DDA) of rays [R, 2] (x, z) float64 from free cells:
        the face each first meets, as (kind, line) int64 [R] in `_face_texel_offsets` terms."""
        size = self.size
        cell = origin.floor().long()
        step = torch.where(direction > 0, 1, -1)
        delta = direction.reciprocal().abs()                 # t per crossed cell, inf if parallel
        first = torch.where(direction > 0, cell + 1 - origin, origin - cell) * delta
        boundary = torch.where(direction == 0, math.inf, first)   # t of the next x / z crossing
        kind = torch.empty(len(origin), dtype=torch.long, device=origin.device)
        line = torch.empty_like(kind)
        alive = torch.arange(len(origin), device=origin.device)
        for _ in range(2 * size + 2):    # a ray reaches the solid border within 2G crossings
            cross_z = (boundary[:, 1] <= boundary[:, 0]).long()          # 0: crosses x = c, 1: z = c
            axis = torch.stack([1 - cross_z, cross_z], 1)
            cell = cell + axis * step
            boundary = boundary + axis * delta
            hit = self.solid[cell[:, 1] * size + cell[:, 0]]
            if hit.any():
                moved = step.gather(1, cross_z[:, None])[:, 0]
                coordinate = cell.gather(1, cross_z[:, None])[:, 0]
                kind[alive[hit]] = (2 * cross_z + (moved < 0))[hit]
                line[alive[hit]] = (coordinate + (moved < 0))[hit]
                keep = ~hit
                alive, cell, boundary, step, delta = alive[keep], cell[keep], boundary[keep], step[keep], delta[keep]
                if len(alive) == 0:
                    break
        return kind, line

    def _frame_tables(self, poses: torch.Tensor) -> _FrameTables:
        """Steps 1 and 2 of the module docstring for a batch of poses [B, 4, 4]."""
        num_frames, num_corners = len(poses), len(self.corners)
        stride = num_corners + 1
        origin = poses[:, [0, 2], 3].double()                                     # [B, 2] (x, z)
        to_corner = self.corners[None] - origin[:, None]
        azimuth = torch.atan2(to_corner[..., 1], to_corner[..., 0]).sort(dim=1).values     # [B, V]
        padding = azimuth.new_full((num_frames, 1), math.inf)
        sorted32 = torch.cat([azimuth, padding], 1).float()
        corner_bins = self._azimuth_bins(sorted32[:, :-1]).long()
        counts = torch.zeros(num_frames, self.bins + 1, dtype=torch.int32, device=self.device)
        counts.scatter_add_(1, corner_bins, torch.ones_like(corner_bins, dtype=torch.int32))
        frame_start = torch.arange(num_frames, device=self.device, dtype=torch.int32)[:, None] * stride
        first_in_bin = counts.cumsum(1, dtype=torch.int32) - counts + frame_start

        # interval k lies between sorted corners k-1 and k (cyclically): trace its middle
        low = torch.cat([azimuth[:, -1:] - 2 * math.pi, azimuth], 1)
        high = torch.cat([azimuth, azimuth[:, :1] + 2 * math.pi], 1)
        middle = ((low + high) / 2).reshape(-1)
        eye = origin.repeat_interleave(stride, 0)
        kind, line = self._trace(eye, torch.stack([middle.cos(), middle.sin()], 1))
        normal_x = kind < 2                                # x-faces: normal along x, along-face axis z
        faces = torch.stack([normal_x.double(), (~normal_x).double(),
                             line - torch.where(normal_x, eye[:, 0], eye[:, 1]),  # line - eye along the normal
                             torch.where(normal_x, eye[:, 1], eye[:, 0])]).float()  # eye along the face
        face_line = ((kind * (self.size + 1) + line) * self.size).int()
        return _FrameTables(sorted32.reshape(-1), first_in_bin.reshape(-1), int(counts.max()), faces, face_line)

    def render(self, poses, intrinsics: Sequence[float], height: int, width: int) -> torch.Tensor:
        """c2w poses [B, 4, 4] (eyes in free cells, between floor and wall tops) -> uint8
        frames [B, H, W, 3] on the renderer's device. One intrinsics [fx, fy, cx, cy] for all."""
        poses = torch.as_tensor(poses, device=self.device)
        if poses.dim() != 3 or poses.shape[1:] != (4, 4):
            raise ValueError(f"poses must be [B, 4, 4], got {tuple(poses.shape)}")
        rays, sky_rows = self.camera_rays(intrinsics, height, width)
        tables = self._frame_tables(poses)
        frames = torch.empty(len(poses), height * width, 3, dtype=torch.uint8, device=self.device)
        # shade a few frames at a time: on a CPU their temporaries then stay in the L2 cache
        chunk = max(1, self.pixels_per_chunk // (height * width)) if self.device.type == "cpu" else len(poses)
        for start in range(0, len(poses), chunk):
            stop = min(start + chunk, len(poses))
            frame_ids = torch.arange(start, stop, device=self.device)
            frames[start:stop] = self._shade(poses[start:stop].float(), frame_ids, tables, rays, sky_rows)
        return frames.view(len(poses), height, width, 3)

    def _shade(self, poses: torch.Tensor, frame_ids: torch.Tensor, tables: _FrameTables, rays: torch.Tensor,
               sky_rows: torch.Tensor) -> torch.Tensor:
        """Steps 3 and 4 of the module docstring for some frames: float32 poses [b, 4, 4] ->
        colours [b, H*W, 3]."""
        direction = torch.matmul(poses[:, :3, :3], rays)                    # [b, 3, H*W]
        dir_x, dir_y, dir_z = direction[:, 0], direction[:, 1], direction[:, 2]
        shape = dir_x.shape
        azimuth = torch.atan2(dir_z, dir_x)
        pixel_bins = self._azimuth_bins(azimuth)

        # 3. each pixel's interval: frame * stride + (number of corners below its azimuth)
        azimuth_offsets = (frame_ids * (self.bins + 1)).int()[:, None]
        interval = tables.first_in_bin.index_select(0, (pixel_bins + azimuth_offsets).reshape(-1))
        for _ in range(tables.max_corners_per_bin):
            interval += (tables.sorted_azimuth.index_select(0, interval).view(shape) < azimuth).int().view(-1)

        # 4. exact hit on the interval's face; products with exact 0/1 masks select a direction
        # component without rounding (cheaper than torch.where)
        normal_is_x, normal_is_z, numerator, along_origin = (
            tables.faces[k].index_select(0, interval).view(shape) for k in range(4))
        normal_dir = torch.addcmul(dir_x * normal_is_x, dir_z, normal_is_z)
        along_dir = torch.addcmul(dir_x * normal_is_z, dir_z, normal_is_x)
        t = numerator / normal_dir                               # ray parameter of the wall hit
        along = torch.addcmul(along_origin, t, along_dir)
        along_floor = along.floor()
        along_cell = along_floor.int().clamp_(0, self.size - 1)
        face_line = tables.face_line.index_select(0, interval).view(shape)
        texel_base = self.face_texels.index_select(0, (face_line + along_cell).reshape(-1)).view(shape)
        eye_y = poses[:, 1, 3:4]
        floor_rel, top_rel = self.floor_y - eye_y, self.top_y - eye_y       # [b, 1], relative to the eye
        hit_y = t * dir_y
        size = self.texture_size
        wall_u = ((along - along_floor) * size).int() & (size - 1)
        wall_v = ((hit_y - top_rel) * self.texels_per_unit_height).int().clamp_(0, size - 1)
        wall = texel_base + wall_v * size + wall_u

        t_floor = (floor_rel * size) / dir_y                       # scaled: floor hit in texels
        floor_u = torch.addcmul(poses[:, 0, 3:4] * size, t_floor, dir_x).int() & (size - 1)
        floor_v = torch.addcmul(poses[:, 2, 3:4] * size, t_floor, dir_z).int() & (size - 1)
        floor = floor_v * size + floor_u + self.floor_offset

        elevation = (dir_y * sky_rows).int().clamp_(0, SKY_ELEVATIONS - 1)
        sky = elevation * SKY_AZIMUTHS + ((pixel_bins // (self.bins // SKY_AZIMUTHS)) & (SKY_AZIMUTHS - 1))
        sky += self.sky_offset

        on_floor = (hit_y > floor_rel).int()
        in_sky = (hit_y < top_rel).int()
        texel = wall + on_floor * (floor - wall) + in_sky * (sky - wall)
        return self.colours.index_select(0, texel.reshape(-1)).view(*shape, 3)
