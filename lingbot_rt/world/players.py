"""Scripted players: deterministic, person-like key sequences for walks through a `WorldMap`.

A `ScriptedPlayer` holds keys in segments of several frames: walks (sometimes while turning or
strafing), turns on the spot, stops, short strafes and steps back, looks up then back down, and
retraces (the inverse of its last 1-3 segments in reverse order: walk out and back, look away
and back), so that places already seen come back into view. It plans from what it sees (the
current pose and whether the last move hit a wall): walks are cut to the free distance ahead,
and a wall ahead or three blocked frames in a row make it turn toward the most open heading.

`play` runs a player with a `Walker` and returns the keys and poses of one clip.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..model.controls import KEYS, MOVE_PER_FRAME, TURN_PER_FRAME
from .map import WorldMap
from .walker import Walker

_INVERSE = str.maketrans("wasdijkl", "sdwaklij")
_MOVE_HEADINGS = {"w": 0.0, "d": np.pi / 2, "s": np.pi, "a": -np.pi / 2}     # relative to the yaw
_SEGMENT_WEIGHTS = {"walk": 0.42, "turn": 0.12, "stop": 0.08, "strafe": 0.07, "back": 0.04, "look": 0.09,
                    "retrace": 0.18}
_MIN_WALK_FRAMES = 10
_STUCK_FRAMES = 3


@dataclass(frozen=True)
class Segment:
    keys: str           # held keys ("" for none), a subset of KEYS
    num_frames: int


def yaw_of(pose: np.ndarray) -> float:
    """Heading of the camera's forward axis projected on the floor (forward = (sin, cos))."""
    return float(np.arctan2(pose[0, 2], pose[2, 2]))


class ScriptedPlayer:
    """Chooses the keys of each frame; deterministic given the map and `seed`."""

    def __init__(self, world: WorldMap, seed: int):
        self.world = world
        self.rng = np.random.default_rng([world.seed, seed, 0x91A7])
        self.plan: deque[Segment] = deque()
        self.history: deque[Segment] = deque(maxlen=6)     # executed segments, newest last
        self.current: Segment | None = None
        self.frames_left = 0
        self.blocked_frames = 0

    def act(self, pose: np.ndarray, blocked: bool) -> np.ndarray:
        """Keys [8] float32 (columns `KEYS`) for the next frame, seeing the current pose and
        whether the last frame's move was cut short by a wall."""
        moving = self.current is not None and any(key in "wasd" for key in self.current.keys)
        self.blocked_frames = self.blocked_frames + 1 if blocked and moving else 0
        if self.blocked_frames >= _STUCK_FRAMES:
            self._finish_current()
            self.plan.clear()
            self.plan.extend(self._turn_to_open(pose))
            self.blocked_frames = 0
        if self.frames_left == 0:
            self._finish_current()
            if not self.plan:
                self.plan.extend(self._choose(pose))
            self.current = self.plan.popleft()
            self.frames_left = self.current.num_frames
        self.frames_left -= 1
        return np.array([key in self.current.keys for key in KEYS], np.float32)

    def _finish_current(self) -> None:
        """Record the current segment for retracing; looks are not retraced (they come back
        level on their own)."""
        if self.current is not None and not set(self.current.keys) & set("ik"):
            done = self.current.num_frames - self.frames_left
            if done > 0:
                self.history.append(Segment(self.current.keys, done))
        self.current, self.frames_left = None, 0

    # ---- planning ------------------------------------------------------------------------------
    def _frames(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def _choose(self, pose: np.ndarray) -> list[Segment]:
        kinds = list(_SEGMENT_WEIGHTS)
        weights = np.array(list(_SEGMENT_WEIGHTS.values()))
        kind = kinds[self.rng.choice(len(kinds), p=weights / weights.sum())]
        if kind == "retrace" and self.history:
            depth = min(len(self.history), self._frames(1, 3))
            recent = list(self.history)[-depth:]
            return [Segment(s.keys.translate(_INVERSE), s.num_frames) for s in reversed(recent)]
        if kind == "turn":
            return [self._turn(pose, self._frames(8, 45))]
        if kind == "stop":
            return [Segment("", self._frames(4, 16))]
        if kind == "look":
            first, second = ("i", "k") if self.rng.random() < 0.6 else ("k", "i")
            frames = self._frames(5, 18)
            return [Segment(first, frames), Segment("", self._frames(0, 8) or 1), Segment(second, frames)]
        keys, low, high = {"strafe": (str(self.rng.choice(["a", "d"])), 6, 20), "back": ("s", 6, 16)}.get(
            kind, (str(self.rng.choice(["w", "w", "w", "wj", "wl", "wa", "wd"])), 15, 50))
        return self._walk(pose, keys, self._frames(low, high))

    def _walk(self, pose: np.ndarray, keys: str, num_frames: int) -> list[Segment]:
        """A walk cut to the free distance along its heading; if that is too short, a turn
        toward open space and a walk there."""
        x, z, yaw = pose[0, 3], pose[2, 3], yaw_of(pose)
        offsets = [_MOVE_HEADINGS[key] for key in keys if key in _MOVE_HEADINGS]
        heading = yaw + float(np.arctan2(np.mean(np.sin(offsets)), np.mean(np.cos(offsets))))
        step = MOVE_PER_FRAME * np.hypot(np.mean(np.sin(offsets)), np.mean(np.cos(offsets))) * len(offsets)
        free = self.world.free_distance(x, z, heading, num_frames * step, self.world.config.collision_radius)
        possible = int(free / step)
        if possible < min(num_frames, _MIN_WALK_FRAMES):
            return self._turn_to_open(pose)
        return [Segment(keys, min(num_frames, possible))]

    def _turn(self, pose: np.ndarray, num_frames: int) -> Segment:
        """A turn on the spot, usually (4 in 5) to the side that ends facing more free space."""
        x, z, yaw = pose[0, 3], pose[2, 3], yaw_of(pose)
        angle = num_frames * TURN_PER_FRAME
        radius = self.world.config.collision_radius
        reach = {key: self.world.free_distance(x, z, yaw + sign * angle, 3.0, radius, step=0.1)
                 for key, sign in (("j", -1), ("l", 1))}
        key = max(reach, key=reach.get) if self.rng.random() < 0.8 else str(self.rng.choice(["j", "l"]))
        return Segment(key, num_frames)

    def _turn_to_open(self, pose: np.ndarray) -> list[Segment]:
        """A turn on the spot toward the heading with the most free space (3 units looked at),
        then a walk along it if there is room."""
        x, z, yaw = pose[0, 3], pose[2, 3], yaw_of(pose)
        radius = self.world.config.collision_radius
        offsets = np.radians([-135, -90, -60, -30, 30, 60, 90, 135, 180])
        reach = np.array([self.world.free_distance(x, z, yaw + offset, 3.0, radius, step=0.1)
                          for offset in offsets])
        best = int(np.argmax(reach + self.rng.uniform(0, 0.3, len(offsets))))
        turn = Segment("l" if offsets[best] > 0 else "j", max(1, int(round(abs(offsets[best]) / TURN_PER_FRAME))))
        walk_frames = min(self._frames(15, 50), int(reach[best] / MOVE_PER_FRAME) - 4)
        return [turn] + ([Segment("w", walk_frames)] if walk_frames >= _MIN_WALK_FRAMES else [])


def play(world: WorldMap, start_pose: np.ndarray, num_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One clip of a scripted walk: keys [F, 8] float32 and world poses [F, 4, 4] float64.

    Frame 0 is the start pose with no keys; keys[i] move the camera from poses[i-1] to poses[i]
    (the order of `WASDController.step`: actions and the pose after each)."""
    walker, player = Walker(world, start_pose), ScriptedPlayer(world, seed)
    keys = np.zeros((num_frames, len(KEYS)), np.float32)
    poses = np.empty((num_frames, 4, 4))
    poses[0] = walker.pose
    for frame_index in range(1, num_frames):
        keys[frame_index] = player.act(walker.pose, walker.blocked)
        poses[frame_index] = walker.step(keys[frame_index][None])[0]
    return keys, poses
