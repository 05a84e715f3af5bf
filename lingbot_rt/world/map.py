"""The grid map of the built-in world, generated from a seed, and where a walk may start.

`generate_map(seed, config)` is deterministic: the same seed and config give the same map,
materials, landmarks and prompt. A map is a square grid of cells (conventions in
`lingbot_rt.world.config`): free cells are walkable floor, solid cells are full-height wall
blocks, each with a material. Two layouts:

* "rooms": rectangular rooms joined by L-shaped corridors (1-2 cells wide), a few extra loops;
* "maze": a braided maze of 1-cell corridors with a few open plazas.

Every free cell is reachable from every other. Landmarks make places recognisable: pillars
(single solid cells inside rooms and plazas) and wall panels (single exposed wall cells), each
with its own emblem material that appears nowhere else on the map.

The walk's start pose comes from `spawn_pose`. Key-driven poses (`lingbot_rt.model.controls`)
start at the identity; in the world they are `spawn @ pose`. Because act2cam only yaws about
the vertical and moves horizontally, integrating the keys from `spawn` directly
(`poses_from_actions(actions, start_pose=spawn)`) gives the same poses: what `Walker` does.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .config import LAYOUTS, WorldConfig
from .textures import (FLOOR_PATTERNS, LANDMARK_PATTERNS, PALETTE, SKIES, WALL_PATTERNS, ColourTable, Material,
                       Sky, build_colour_table)

FREE = -1                      # grid value of a walkable cell; solid cells hold a material index
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))
_LANDMARK_SPACING = 4          # min Chebyshev distance in cells between two landmarks


@dataclass
class WorldMap:
    """A generated map. grid [G, G] int: `FREE` or the material index of a solid cell,
    indexed grid[row, column] = grid[z, x]."""
    config: WorldConfig
    seed: int
    layout: str
    grid: np.ndarray
    materials: list[Material]        # wall materials, then one per landmark
    floor: Material
    sky: Sky
    num_pillars: int
    num_panels: int

    @property
    def size(self) -> int:
        return self.config.grid_size

    @property
    def solid(self) -> np.ndarray:
        return self.grid != FREE

    def is_free(self, x: float, z: float, radius: float = 0.0) -> bool:
        """Whether the square box of half-size `radius` centred at (x, z) touches no solid cell."""
        rows = range(int(np.floor(z - radius)), int(np.floor(z + radius)) + 1)
        cols = range(int(np.floor(x - radius)), int(np.floor(x + radius)) + 1)
        return all(0 <= r < self.size and 0 <= c < self.size and self.grid[r, c] == FREE
                   for r in rows for c in cols)

    def free_distance(self, x: float, z: float, yaw: float, max_distance: float, radius: float = 0.0,
                      step: float = 0.05) -> float:
        """How far the box can slide from (x, z) along the heading `yaw` (forward = (sin, cos))
        before touching a wall, checked every `step` units, up to `max_distance`."""
        dx, dz = np.sin(yaw), np.cos(yaw)
        distance = 0.0
        while distance + step <= max_distance and self.is_free(x + dx * (distance + step),
                                                               z + dz * (distance + step), radius):
            distance += step
        return distance

    @cached_property
    def colour_table(self) -> ColourTable:
        return build_colour_table(self.materials, self.floor, self.sky, self.config.texture_size,
                                  self.config.wall_height, self.seed)

    @property
    def prompt(self) -> str:
        """A one-sentence description of the map's style, for `prompt.txt`."""
        layout = {"rooms": "rooms joined by corridors", "maze": "a maze of narrow corridors"}[self.layout]
        exposed = _exposed(self.grid)
        num_walls = len(self.materials) - self.num_pillars - self.num_panels
        counts = np.bincount(self.grid[exposed], minlength=len(self.materials))[:num_walls]
        walls = [f"{self.materials[m].describe()} walls" for m in np.argsort(-counts, kind="stable")[:3]
                 if counts[m] > 0]
        landmarks = [phrase for count, phrase in ((self.num_pillars, "colourful pillars"),
                                                  (self.num_panels, "painted wall panels")) if count]
        parts = [_join(walls)] + ([_join(landmarks)] if landmarks else [])
        return (f"a first-person walk through {layout}, with {', '.join(parts)}, "
                f"{_article(self.floor.describe())} floor, under {_article(self.sky.name)} sky")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _exposed(grid: np.ndarray) -> np.ndarray:
    """Solid cells with a free 4-neighbour: the cells whose faces can be seen."""
    free = np.pad(grid == FREE, 1)
    near_free = free[:-2, 1:-1] | free[2:, 1:-1] | free[1:-1, :-2] | free[1:-1, 2:]
    return (grid != FREE) & near_free


# ---- carving the free space ------------------------------------------------------------------
def _carve_corridor(free: np.ndarray, start: tuple[int, int], end: tuple[int, int], width: int,
                    horizontal_first: bool) -> None:
    (r1, c1), (r2, c2) = start, end
    corner = (r1, c2) if horizontal_first else (r2, c1)
    for (ra, ca), (rb, cb) in ((start, corner), (corner, end)):
        r_lo, r_hi = min(ra, rb), max(ra, rb) + width
        c_lo, c_hi = min(ca, cb), max(ca, cb) + width
        free[max(r_lo, 1):min(r_hi, len(free) - 1), max(c_lo, 1):min(c_hi, len(free) - 1)] = True


def _carve_rooms(rng: np.random.Generator, config: WorldConfig) -> tuple[np.ndarray, list]:
    size, (low, high) = config.grid_size, config.room_size
    free = np.zeros((size, size), bool)
    rooms = []
    for _ in range(config.max_rooms * 10):
        if len(rooms) == config.max_rooms:
            break
        h, w = rng.integers(low, high + 1, 2)
        r, c = rng.integers(1, size - h), rng.integers(1, size - w)
        if any(r < r2 + h2 + 1 and r2 < r + h + 1 and c < c2 + w2 + 1 and c2 < c + w + 1
               for r2, c2, h2, w2 in rooms):
            continue
        rooms.append((int(r), int(c), int(h), int(w)))
        free[r:r + h, c:c + w] = True
    centres = [(r + h // 2, c + w // 2) for r, c, h, w in rooms]
    links = [(i, min(range(i), key=lambda j: (centres[i][0] - centres[j][0]) ** 2
                                              + (centres[i][1] - centres[j][1]) ** 2))
             for i in range(1, len(rooms))]
    links += [tuple(rng.choice(len(rooms), 2, replace=False)) for _ in range(len(rooms) // 3)]
    for i, j in links:
        _carve_corridor(free, centres[i], centres[j], int(rng.integers(1, 3)), bool(rng.integers(2)))
    return free, rooms


def _carve_maze(rng: np.random.Generator, config: WorldConfig) -> tuple[np.ndarray, list]:
    """Depth-first maze on the odd cells, braided (10% of the inner walls removed), plus plazas."""
    size = config.grid_size
    nodes = (size - 2) // 2                       # maze nodes per side, at cells 2i+1
    free = np.zeros((size, size), bool)
    visited = np.zeros((nodes, nodes), bool)
    stack = [(int(rng.integers(nodes)), int(rng.integers(nodes)))]
    visited[stack[0]] = True
    free[2 * stack[0][0] + 1, 2 * stack[0][1] + 1] = True
    while stack:
        i, j = stack[-1]
        options = [(i + di, j + dj) for di, dj in _NEIGHBOURS
                   if 0 <= i + di < nodes and 0 <= j + dj < nodes and not visited[i + di, j + dj]]
        if not options:
            stack.pop()
            continue
        ni, nj = options[rng.integers(len(options))]
        visited[ni, nj] = True
        free[2 * ni + 1, 2 * nj + 1] = free[i + ni + 1, j + nj + 1] = True
        stack.append((ni, nj))
    inner = np.zeros_like(free)
    inner[1:2 * nodes, 1:2 * nodes] = True
    walls = np.argwhere(inner & ~free & ((np.indices(free.shape).sum(0) % 2) == 1))
    for r, c in walls[rng.random(len(walls)) < 0.1]:
        free[r, c] = True
    plazas = []
    for _ in range(max(2, size // 12)):
        h = w = int(rng.choice([3, 5]))
        r, c = (int(v) for v in rng.integers(1, 2 * nodes - h + 1, 2))
        free[r:r + h, c:c + w] = True
        plazas.append((r, c, h, w))
    return free, plazas


def _largest_component(free: np.ndarray) -> np.ndarray:
    """The largest 4-connected set of free cells (everything else becomes solid)."""
    labels = np.full(free.shape, -1)
    best, best_size = -1, 0
    for label, start in enumerate(map(tuple, np.argwhere(free))):
        if labels[start] >= 0:
            continue
        count, queue = 0, deque([start])
        labels[start] = label
        while queue:
            r, c = queue.popleft()
            count += 1
            for dr, dc in _NEIGHBOURS:
                nr, nc = r + dr, c + dc
                if free[nr, nc] and labels[nr, nc] < 0:
                    labels[nr, nc] = label
                    queue.append((nr, nc))
        if count > best_size:
            best, best_size = label, count
    return labels == best


# ---- materials and landmarks -----------------------------------------------------------------
def _draw_materials(rng: np.random.Generator, config: WorldConfig) -> tuple[list[Material], Material, Sky]:
    colours = list(PALETTE)
    wall_colours = rng.choice(colours, config.num_wall_materials, replace=config.num_wall_materials > len(colours))
    walls = [Material(str(rng.choice(list(WALL_PATTERNS))), str(colour), str(rng.choice(colours)),
                      int(rng.integers(2**31))) for colour in wall_colours]
    landmark_colours = ["red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "white"]
    landmarks = []
    for _ in range(config.num_landmarks):
        main, accent = rng.choice(landmark_colours, 2, replace=False)
        landmarks.append(Material(str(rng.choice(list(LANDMARK_PATTERNS))), str(main), str(accent),
                                  int(rng.integers(2**31))))
    floor_colours = {"tile": ["beige", "grey", "white", "teal"], "flagstone": ["grey", "beige", "brown"],
                     "grass": ["green"], "sand": ["beige", "yellow"], "wood": ["brown", "orange"]}
    pattern = str(rng.choice(list(FLOOR_PATTERNS)))
    floor = Material(pattern, str(rng.choice(floor_colours[pattern])), str(rng.choice(colours)),
                     int(rng.integers(2**31)))
    sky = Sky(str(rng.choice(list(SKIES))), float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.2, 0.7)))
    return walls + landmarks, floor, sky


def _paint_regions(rng: np.random.Generator, free: np.ndarray, open_areas: list, num_materials: int) -> np.ndarray:
    """Material of each solid cell: that of the nearest region site (an open area's centre, or
    random sites in a maze), so each room or part of the maze has its own walls."""
    size = len(free)
    sites = [(r + h / 2, c + w / 2) for r, c, h, w in open_areas]
    sites += [tuple(rng.uniform(1, size - 1, 2)) for _ in range(max(0, num_materials - len(sites)))]
    sites = np.array(sites)
    rows, cols = np.indices(free.shape) + 0.5
    distance = (rows[..., None] - sites[:, 0]) ** 2 + (cols[..., None] - sites[:, 1]) ** 2
    region = np.argmin(distance, axis=-1)
    site_material = rng.permutation(np.arange(len(sites)) % num_materials)
    return np.where(free, FREE, site_material[region])


def _place_landmarks(rng: np.random.Generator, grid: np.ndarray, open_areas: list, first: int,
                     count: int) -> tuple[int, int]:
    """Pillars in open areas with a 2-cell margin (so never blocking a way), then wall panels on
    exposed wall cells, spread `_LANDMARK_SPACING` apart. Returns (num_pillars, num_panels)."""
    placed: list[tuple[int, int]] = []

    def far_enough(r: int, c: int) -> bool:
        return all(max(abs(r - r2), abs(c - c2)) >= _LANDMARK_SPACING for r2, c2 in placed)

    for index in rng.permutation(len(open_areas))[:count // 2]:
        r, c, h, w = open_areas[index]
        if h < 5 or w < 5:
            continue
        pr, pc = int(rng.integers(r + 2, r + h - 2)), int(rng.integers(c + 2, c + w - 2))
        if far_enough(pr, pc):
            grid[pr, pc] = first + len(placed)
            placed.append((pr, pc))
    num_pillars = len(placed)
    candidates = np.argwhere(_exposed(grid))
    for r, c in candidates[rng.permutation(len(candidates))]:
        if len(placed) == count:
            break
        if grid[r, c] < first and far_enough(r, c):
            grid[r, c] = first + len(placed)
            placed.append((int(r), int(c)))
    return num_pillars, len(placed) - num_pillars


def generate_map(seed: int, config: WorldConfig | None = None) -> WorldMap:
    """The map of `seed` (deterministic), see the module docstring."""
    config = config or WorldConfig()
    rng = np.random.default_rng([seed, 0x5EED])
    layout = config.layout if config.layout != "random" else str(rng.choice(LAYOUTS))
    carve = _carve_rooms if layout == "rooms" else _carve_maze
    free, open_areas = carve(rng, config)
    free = _largest_component(free)
    materials, floor, sky = _draw_materials(rng, config)
    grid = _paint_regions(rng, free, open_areas, config.num_wall_materials)
    num_pillars, num_panels = _place_landmarks(rng, grid, open_areas, config.num_wall_materials,
                                               config.num_landmarks)
    materials = materials[:config.num_wall_materials + num_pillars + num_panels]
    return WorldMap(config, seed, layout, grid.astype(np.int16), materials, floor, sky, num_pillars, num_panels)


# ---- where a walk starts ---------------------------------------------------------------------
def pose_at(x: float, z: float, yaw: float) -> np.ndarray:
    """c2w [4, 4] float64 of a level eye at (x, 0, z) facing `yaw` (forward = (sin, 0, cos))."""
    pose = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    pose[0, 3], pose[2, 3] = x, z
    return pose


def spawn_pose(world: WorldMap, seed: int) -> np.ndarray:
    """A start pose for `seed`: a random free cell's centre at eye height (y = 0), facing the
    most open of 16 headings (so the first frame is not a wall close up), level."""
    rng = np.random.default_rng([world.seed, seed, 0x57A7])
    cells = np.argwhere(world.grid == FREE)
    r, c = cells[rng.integers(len(cells))]
    x, z = c + 0.5, r + 0.5
    headings = rng.uniform(0, 2 * np.pi) + np.arange(16) * (2 * np.pi / 16)
    reach = [world.free_distance(x, z, yaw, max_distance=6.0, step=0.25) for yaw in headings]
    return pose_at(x, z, float(headings[int(np.argmax(reach))]))
