"""Where a stream's actions come from: a script known in advance, or keys held live.

Both give, per block, one multi-hot row (columns `controls.KEYS`) per video frame of the
block; row f is the keys held while the camera moves from frame f - 1 to frame f (frame 0 is
the start image at the start pose). A block's rows are read once, when the block starts:
whatever the player does while a block is being generated conditions the next block.

* `ScriptedActions`: an action string (`"w-10,d-5"`) or a per-frame array [F, 8] (the offline
  `action.npy`-style input); F actions make a clip of F + 1 frames; past its end, no keys.
* `LiveKeys`: a callable returning the keys held now (the demo's browser page, a server
  session); the block's frames all take the keys read at its start.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, Union

import numpy as np

from ..model.controls import KEYS, check_key, parse_action_string


class ActionSource(Protocol):
    num_frames: int | None      # frames of the clip it scripts (start image included); None = unbounded

    def block(self, first_frame: int, num_frames: int) -> np.ndarray:
        """Multi-hot rows [num_frames, len(KEYS)] float32 for video frames first_frame, ..."""


class ScriptedActions:
    def __init__(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != len(KEYS) or len(actions) == 0:
            raise ValueError(f"actions must be a multi-hot array [F, {len(KEYS)}] (columns {KEYS}), "
                             f"got shape {list(actions.shape)}")
        if not np.isin(actions, (0, 1)).all():
            raise ValueError("actions must be multi-hot: every entry 0 or 1")
        self.actions = actions.astype(np.float32)
        self.num_frames = len(actions) + 1

    def block(self, first_frame: int, num_frames: int) -> np.ndarray:
        if first_frame < 1:
            raise ValueError(f"frame 0 is the start image and takes no action; first_frame={first_frame}")
        rows = np.zeros((num_frames, len(KEYS)), np.float32)
        scripted = self.actions[first_frame - 1:first_frame - 1 + num_frames]
        rows[:len(scripted)] = scripted
        return rows


class LiveKeys:
    def __init__(self, read_keys: Callable[[], Iterable[str]]):
        self.read_keys = read_keys
        self.num_frames = None

    def block(self, first_frame: int, num_frames: int) -> np.ndarray:
        held = {check_key(key) for key in self.read_keys()}
        row = np.array([key in held for key in KEYS], np.float32)
        return np.tile(row, (num_frames, 1))


Actions = Union[str, np.ndarray, Callable[[], Iterable[str]], ActionSource, None]


def action_source(actions: Actions) -> ActionSource:
    """An action string, a multi-hot array [F, 8], a callable giving the held keys, an
    `ActionSource`, or None (no keys, unbounded)."""
    if actions is None:
        return LiveKeys(lambda: ())
    if isinstance(actions, str):
        return ScriptedActions(parse_action_string(actions))
    if isinstance(actions, np.ndarray):
        return ScriptedActions(actions)
    if hasattr(actions, "block") and hasattr(actions, "num_frames"):
        return actions
    if callable(actions):
        return LiveKeys(actions)
    raise TypeError(f"actions must be an action string, a multi-hot array [F, {len(KEYS)}], a callable returning "
                    f"held keys, or None; got {type(actions).__name__}")
