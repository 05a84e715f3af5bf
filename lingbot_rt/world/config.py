"""`WorldConfig`: the sizes and camera of the built-in world, with their defaults in one place.

World conventions (used by every module of `lingbot_rt.world`):

* Units: one grid cell is 1 x 1 world unit. Cell (row r, column c) of `WorldMap.grid` covers
  x in [c, c+1) and z in [r, r+1).
* Axes follow the OpenCV camera poses of `lingbot_rt.model.controls`: x and z are horizontal,
  +y points DOWN. The eye is at y = 0, the floor is the plane y = +eye_height and every wall
  spans y in [eye_height - wall_height, eye_height] (one uniform height, taller than the eye).
  Above the walls is the sky.
* A move key moves the eye by `MOVE_PER_FRAME` = 0.05 units per video frame: 20 frames per cell.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LAYOUTS = ("rooms", "maze")


@dataclass(frozen=True)
class WorldConfig:
    grid_size: int = 32             # cells per side of the square map (the border is always wall)
    layout: str = "random"          # "rooms", "maze" or "random" (picked by the map seed)
    max_rooms: int = 8              # rooms layout: placement attempts that succeed at most
    room_size: tuple[int, int] = (3, 8)     # rooms layout: min, max room side in cells
    num_wall_materials: int = 4     # ordinary wall materials per map (regions of the map)
    num_landmarks: int = 6          # pillars and wall panels with unique landmark materials
    wall_height: float = 1.5        # world units (a cell is ~2 m: walls ~3 m)
    eye_height: float = 0.6         # world units above the floor
    collision_radius: float = 0.25  # half-size of the eye's square collision box
    hfov_deg: float = 80.0          # horizontal field of view (upstream's examples/00: ~79 deg)
    texture_size: int = 64          # texels per wall cell face (and per floor cell), a power of 2

    def __post_init__(self):
        if self.grid_size < 8:
            raise ValueError(f"grid_size must be >= 8, got {self.grid_size}")
        if self.layout not in (*LAYOUTS, "random"):
            raise ValueError(f"layout must be one of {LAYOUTS} or 'random', got {self.layout!r}")
        low, high = self.room_size
        if not 2 <= low <= high <= self.grid_size - 2:
            raise ValueError(f"room_size must be (min, max) with 2 <= min <= max <= grid_size - 2, "
                             f"got {self.room_size}")
        if not 0 < self.eye_height < self.wall_height:
            # the renderer relies on it: a ray that clears one wall top clears them all
            raise ValueError(f"need 0 < eye_height < wall_height, got {self.eye_height}, {self.wall_height}")
        if not 0 < self.collision_radius < 0.5:
            raise ValueError(f"collision_radius must be in (0, 0.5), got {self.collision_radius}")
        if not 0 < self.hfov_deg < 180:
            raise ValueError(f"hfov_deg must be in (0, 180), got {self.hfov_deg}")
        if self.texture_size < 4 or self.texture_size & (self.texture_size - 1):
            raise ValueError(f"texture_size must be a power of 2 >= 4, got {self.texture_size}")

    @property
    def floor_y(self) -> float:
        return self.eye_height

    @property
    def wall_top_y(self) -> float:
        return self.eye_height - self.wall_height

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """[fx, fy, cx, cy] in pixels of a height x width frame: square pixels, centred."""
        fx = width / 2 / math.tan(math.radians(self.hfov_deg) / 2)
        return fx, fx, width / 2, height / 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> WorldConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown WorldConfig key(s) {unknown}")
        values = dict(values)
        if "room_size" in values:
            values["room_size"] = tuple(values["room_size"])
        return cls(**values)
