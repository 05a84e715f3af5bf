"""Keys -> camera poses inside a `WorldMap`, with collisions: the eye never enters a wall.

Each frame the keys go through `lingbot_rt.model.controls.poses_from_actions` from the current
world pose (act2cam: rotate, then move 0.05 horizontally), and the move is then clamped: its x
and z parts are applied one after the other, each only if the eye's square collision box
(half-size `WorldConfig.collision_radius`) stays clear of solid cells. So walking into a wall
stops at it and walking along a wall at an angle slides along it. Rotation is never blocked.
The poses returned are the ones to render and to store.
"""
from __future__ import annotations

import numpy as np

from ..model.controls import KEYS, poses_from_actions
from .map import WorldMap


class Walker:
    """The camera of one walk: `pose` (c2w [4, 4] float64) advanced by `step`."""

    def __init__(self, world: WorldMap, start_pose: np.ndarray):
        self.world = world
        self.radius = world.config.collision_radius
        self.pose = np.array(start_pose, dtype=np.float64)
        if not world.is_free(self.pose[0, 3], self.pose[2, 3], self.radius):
            raise ValueError(f"start pose at x={self.pose[0, 3]:.3f}, z={self.pose[2, 3]:.3f} is inside a wall")
        self.blocked = False          # whether the last frame's move was cut short by a wall

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Multi-hot actions [F, 8] (columns `KEYS`) -> the pose after each frame [F, 4, 4]."""
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != len(KEYS):
            raise ValueError(f"actions must be [F, {len(KEYS)}] (columns {KEYS}), got {actions.shape}")
        poses = np.empty((len(actions), 4, 4))
        for frame_index, row in enumerate(actions):
            poses[frame_index] = self.pose = self._collide(poses_from_actions(row[None], self.pose)[1])
        return poses

    def _collide(self, proposed: np.ndarray) -> np.ndarray:
        x, z = self.pose[0, 3], self.pose[2, 3]
        new_x, new_z = proposed[0, 3], proposed[2, 3]
        if not self.world.is_free(new_x, z, self.radius):
            new_x = x
        if not self.world.is_free(new_x, new_z, self.radius):
            new_z = z
        self.blocked = (new_x, new_z) != (proposed[0, 3], proposed[2, 3])
        pose = proposed.copy()
        pose[0, 3], pose[2, 3] = new_x, new_z
        return pose
