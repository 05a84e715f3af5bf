"""Camera and WASD conditioning: keys -> camera poses -> the folded ray tensor the DiT reads.

Who calls what:

* a session's `WASDController` holds the live keys (w,a,s,d move; i,j,k,l look) and
  integrates them into camera poses, one per video frame, across calls;
* `control_embedding` turns the poses of one block of latent frames into the control signal
  `[control_channels, F_lat, H/8, W/8]` that `CausalWanModel.forward_block(control=...)` takes
  (batch it with `torch.stack`);
* `control_from_files` reproduces upstream's whole-clip preprocessing of an example directory
  (`poses.npy`, `intrinsics.npy`, `action.npy`), for offline runs and as the reference the
  streaming path is tested against.

Conventions and constants (upstream LingBot-World @9660e94, read for facts only):

* Poses are camera-to-world 4x4 matrices in the OpenCV convention: camera x right, y down,
  z forward. The stream starts at the identity.
* Keys move the camera like upstream's act2cam (`wan/utils/wasd_ijkl_to_c2ws.py`): per video
  frame, W/S/D/A move 0.05 along the yaw-only (horizontal) forward/right axes; J/L turn by
  -/+2 degrees about the world y axis (L turns right); I/K pitch by +/-2 degrees about the
  camera x axis (I looks up) and a step that would leave +-85 degrees is dropped. The new
  rotation is `R_yaw @ R @ R_pitch`, applied before the move.
* The pitch that the clamp checks is read from the pose (the elevation of the forward axis),
  not tracked separately: every key-driven rotation from the identity is `R_y(yaw) R_x(pitch)`,
  so this equals upstream's tracked pitch and lets a stream continue from any pose.
* One latent frame is 4 video frames (VAE temporal stride) and a latent cell is 8x8 pixels.

Translation scale. The DiT sees, per latent frame, the camera motion since the previous latent
frame (a relative pose) as ray origins and directions. Upstream divides the translations of
a clip by the clip's largest per-latent-frame translation (`compute_relative_poses`), which a
stream cannot do: it does not know the future. We multiply by a fixed scale instead,
`STREAM_TRANSLATION_SCALE = 1 / (0.05 * 4) = 5`: with W held, upstream's latent frames sit
4 video frames apart (resampling at `linspace(0, F-1, (F-1)//4 + 1)` hits every 4th frame), so
every delta has norm 0.2 and upstream scales it to 1; the fixed scale gives the same 1. Motions
that differ from the clip's fastest one differ: W+D held has norm sqrt(2) here, 1 upstream.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .config import CONTROL_CHANNELS

KEYS = "wasdijkl"                       # column order of a multi-hot action row [.., 8]
MOVE_PER_FRAME = 0.05                    # world units per video frame
TURN_PER_FRAME = np.deg2rad(2.0)         # radians per video frame
PITCH_LIMIT = np.deg2rad(85.0)
# upstream normalises the flattened forward/right axes by (norm + 1e-6): a held W moves
# 0.05 / (1 + 1e-6) per frame, and we keep that to give upstream's poses.
AXIS_NORM_EPS = 1e-6
VIDEO_FRAMES_PER_LATENT = 4
PIXELS_PER_CELL = 8
STREAM_TRANSLATION_SCALE = 1.0 / (MOVE_PER_FRAME * VIDEO_FRAMES_PER_LATENT)
# upstream's intrinsics.npy is in pixels of a 480x832 frame (get_Ks_transformed(480, 832, ...))
INTRINSICS_SOURCE_HW = (480, 832)


# ---- keys -----------------------------------------------------------------------------------
def check_key(key: str) -> str:
    """A key name, lower-cased, or a ValueError naming it."""
    if not isinstance(key, str) or len(key) != 1 or key.lower() not in KEYS:
        raise ValueError(f"unknown key {key!r}; keys are {', '.join(KEYS)}")
    return key.lower()


def parse_action_string(action_string: str) -> np.ndarray:
    """"w-10,a-10,iw-15,none-5" -> multi-hot actions [F, 8] float32, columns `KEYS`.

    Each comma-separated token is `<keys>-<frames>`: keys held (any of w,a,s,d,i,j,k,l, or
    `none`) for a positive number of video frames. Whitespace is ignored and a full-width
    comma counts as a comma, as upstream's parser does.
    """
    compact = "".join(action_string.replace("，", ",").split())
    if not compact:
        raise ValueError("action string is empty")
    rows = []
    for token in compact.split(","):
        keys, _, count = token.rpartition("-")
        if not token or not keys or not count.isdigit() or int(count) == 0:
            raise ValueError(f"bad token {token!r} in action string {action_string!r}: "
                             "expected <keys>-<positive frame count>, e.g. w-10 or none-5")
        row = np.zeros(len(KEYS), np.float32)
        if keys.lower() != "none":
            bad = sorted({c for c in keys.lower() if c not in KEYS})
            if bad:
                raise ValueError(f"bad token {token!r} in action string {action_string!r}: "
                                 f"unknown key(s) {bad}; keys are {', '.join(KEYS)} or none")
            row[[KEYS.index(c) for c in keys.lower()]] = 1.0
        rows.append(np.tile(row, (int(count), 1)))
    return np.concatenate(rows)


# ---- keys -> poses (act2cam) ------------------------------------------------------------------
def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _pitch_of(rotation: np.ndarray) -> float:
    """Elevation of the camera's forward axis (positive = looking up, as y points down)."""
    return float(np.arcsin(np.clip(-rotation[1, 2], -1.0, 1.0)))


def _horizontal_unit(axis: np.ndarray) -> np.ndarray:
    flat = np.array([axis[0], 0.0, axis[2]])
    return flat / (np.linalg.norm(flat) + AXIS_NORM_EPS)


def _apply_keys(pose: np.ndarray, held: dict[str, float]) -> np.ndarray:
    """One video frame of act2cam: rotate (yaw in the world, pitch in the camera), then move."""
    pitch_delta = TURN_PER_FRAME * (held["i"] - held["k"])
    if abs(_pitch_of(pose[:3, :3]) + pitch_delta) > PITCH_LIMIT:
        pitch_delta = 0.0
    yaw_delta = TURN_PER_FRAME * (held["l"] - held["j"])
    rotation = _rotation_y(yaw_delta) @ pose[:3, :3] @ _rotation_x(pitch_delta)
    forward = _horizontal_unit(rotation[:, 2])
    right = _horizontal_unit(rotation[:, 0])
    move = (MOVE_PER_FRAME * (held["w"] - held["s"]) * forward
            + MOVE_PER_FRAME * (held["d"] - held["a"]) * right)
    new_pose = np.eye(4)
    new_pose[:3, :3] = rotation
    new_pose[:3, 3] = pose[:3, 3] + move
    return new_pose


def poses_from_actions(actions: np.ndarray, start_pose: np.ndarray | None = None) -> np.ndarray:
    """Multi-hot actions [F, 8] (columns `KEYS`, > 0.5 = held) -> c2w poses [F+1, 4, 4] float64,
    the start pose (default identity) followed by the pose after each frame's keys."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] != len(KEYS):
        raise ValueError(f"actions must be [F, {len(KEYS)}] (columns {KEYS}), got {actions.shape}")
    pose = np.eye(4) if start_pose is None else np.asarray(start_pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"start_pose must be [4, 4], got {pose.shape}")
    poses = [pose]
    for row in (actions > 0.5).astype(np.float64):            # 1.0 = held
        pose = _apply_keys(pose, dict(zip(KEYS, row)))
        poses.append(pose)
    return np.stack(poses)


class WASDController:
    """Live keys of one session and the camera pose they drive, continued across `step` calls.

    A streaming loop advances 4 video frames per latent frame, except for the stream's first
    latent frame (the start image, at the start pose), and hands the pose after each latent
    frame's last video frame (`poses[3::4]` of a step) to `control_embedding`.
    """

    def __init__(self, start_pose: np.ndarray | None = None):
        self.pose = np.eye(4) if start_pose is None else np.array(start_pose, dtype=np.float64)
        self.held_keys: set[str] = set()

    def press(self, key: str) -> None:
        self.held_keys.add(check_key(key))

    def release(self, key: str) -> None:
        self.held_keys.discard(check_key(key))

    def set_keys(self, keys: Iterable[str]) -> None:
        self.held_keys = {check_key(key) for key in keys}

    def step(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Advance `num_frames` video frames with the held keys. Returns the actions
        [num_frames, 8] multi-hot and the pose after each frame [num_frames, 4, 4]."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        row = np.array([key in self.held_keys for key in KEYS], np.float32)
        actions = np.tile(row, (num_frames, 1))
        poses = poses_from_actions(actions, self.pose)[1:]
        self.pose = poses[-1]
        return actions, poses


# ---- pose resampling and relative poses ------------------------------------------------------
def _quaternions_from_matrices(rotations: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> unit quaternions [N, 4] (w, x, y, z), from the largest of the four
    candidate components for numerical stability."""
    m = rotations
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # candidate k is the quaternion scaled by 4 * (its k-th component)
    candidates = np.stack([
        np.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                  m[:, 0, 2] + m[:, 2, 0]], -1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                  m[:, 1, 2] + m[:, 2, 1]], -1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                  1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)                                                               # [N, 4 candidates, 4]
    best = np.argmax(np.diagonal(candidates, axis1=1, axis2=2), axis=1)
    quats = candidates[np.arange(len(m)), best]
    return quats / np.linalg.norm(quats, axis=-1, keepdims=True)


def _matrices_from_quaternions(quats: np.ndarray) -> np.ndarray:
    w, x, y, z = quats.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def _slerp(q0: np.ndarray, q1: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Shortest-path spherical interpolation of unit quaternions [N, 4] (what scipy's Slerp,
    used upstream, computes)."""
    dot = np.sum(q0 * q1, -1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    angle = np.arccos(np.clip(np.abs(dot), -1.0, 1.0))
    fraction = fraction[:, None]
    sin_angle = np.sin(angle)
    nearly_equal = sin_angle < 1e-8
    safe_sin = np.where(nearly_equal, 1.0, sin_angle)
    w0 = np.where(nearly_equal, 1 - fraction, np.sin((1 - fraction) * angle) / safe_sin)
    w1 = np.where(nearly_equal, fraction, np.sin(fraction * angle) / safe_sin)
    quats = w0 * q0 + w1 * q1
    return quats / np.linalg.norm(quats, axis=-1, keepdims=True)


def resample_to_latent_frames(poses: np.ndarray) -> np.ndarray:
    """Video-frame poses [N, 4, 4] -> one pose per latent frame [(N-1)//4 + 1, 4, 4] at
    `linspace(0, N-1, (N-1)//4 + 1)`: SLERP for rotation, linear for translation (upstream
    `interpolate_camera_poses`). For N = 4n+1 the samples are every 4th frame exactly."""
    num_poses = len(poses)
    targets = np.linspace(0, num_poses - 1, (num_poses - 1) // VIDEO_FRAMES_PER_LATENT + 1)
    lower = np.clip(np.floor(targets).astype(int), 0, max(num_poses - 2, 0))
    upper = np.minimum(lower + 1, num_poses - 1)
    fraction = targets - lower
    quats = _quaternions_from_matrices(poses[:, :3, :3])
    resampled = np.zeros((len(targets), 4, 4))
    resampled[:, :3, :3] = _matrices_from_quaternions(_slerp(quats[lower], quats[upper], fraction))
    translations = poses[:, :3, 3]
    resampled[:, :3, 3] = translations[lower] + fraction[:, None] * (translations[upper] - translations[lower])
    resampled[:, 3, 3] = 1.0
    return resampled


def _invert_rigid(poses: torch.Tensor) -> torch.Tensor:
    rotation_t = poses[:, :3, :3].transpose(-1, -2)
    inverse = torch.eye(4, dtype=poses.dtype).repeat(len(poses), 1, 1)
    inverse[:, :3, :3] = rotation_t
    inverse[:, :3, 3:] = -rotation_t @ poses[:, :3, 3:]
    return inverse


def framewise_relative_poses(poses: torch.Tensor) -> torch.Tensor:
    """c2w poses [F, 4, 4] -> [F, 4, 4]: the identity, then each pose relative to the one
    before it (upstream `compute_relative_poses(framewise=True)` before its normalisation,
    in its order of operations: relative to the first pose, then frame to frame)."""
    relative = _invert_rigid(poses[:1]) @ poses
    relative[0] = torch.eye(4, dtype=poses.dtype)
    framewise = relative.clone()
    framewise[1:] = _invert_rigid(relative[:-1]) @ relative[1:]
    return framewise


def _normalise_by_max_translation(relative: torch.Tensor) -> torch.Tensor:
    """Upstream's per-clip normalisation: translations / their largest norm, if moving."""
    max_norm = relative[:, :3, 3].norm(dim=-1).max()
    if max_norm > 0:
        relative[:, :3, 3] /= max_norm
    return relative


# ---- rays and the 8x8 fold -----------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _camera_ray_directions(fx: float, fy: float, cx: float, cy: float, height: int, width: int,
                           device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Unit directions [H*W, 3] through pixel centres in camera axes, on `device`: fixed per
    camera, so a stream computes them once, not every block. Shared: read only."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                torch.arange(width, dtype=torch.float32), indexing="ij")
    camera_dirs = torch.stack([(cols + 0.5 - cx) / fx, (rows + 0.5 - cy) / fy, torch.ones_like(cols)], -1)
    return (camera_dirs / camera_dirs.norm(dim=-1, keepdim=True)).view(-1, 3).to(device)


def pixel_ray_directions(rotations: torch.Tensor, intrinsics: torch.Tensor, height: int,
                         width: int) -> torch.Tensor:
    """Unit ray directions [F, H, W, 3] through pixel centres (+0.5), rotated by [F, 3, 3] (on
    their device)."""
    camera_dirs = _camera_ray_directions(*intrinsics.tolist(), height, width, rotations.device)
    world_dirs = camera_dirs[None] @ rotations.transpose(-1, -2)                 # [F, H*W, 3]
    return world_dirs.view(len(rotations), height, width, 3)


def fold_pixels(per_pixel: torch.Tensor) -> torch.Tensor:
    """[F, H, W, C] -> [C*64, F, H/8, W/8]: pixel (row r, col c) of a latent cell lands in
    channel `channel * 64 + r * 8 + c`, upstream's `'f (h c1) (w c2) c -> (f h w) (c c1 c2)'`."""
    num_frames, height, width, channels = per_pixel.shape
    cells = per_pixel.reshape(num_frames, height // PIXELS_PER_CELL, PIXELS_PER_CELL,
                              width // PIXELS_PER_CELL, PIXELS_PER_CELL, channels)
    # [F, h, r, w, c, C] -> [C, r, c, F, h, w]
    return cells.permute(5, 2, 4, 0, 1, 3).reshape(channels * PIXELS_PER_CELL ** 2, num_frames,
                                                    height // PIXELS_PER_CELL, width // PIXELS_PER_CELL)


def _check_embedding_args(intrinsics, height, width, control_type, wasd, num_frames):
    if control_type not in CONTROL_CHANNELS:
        raise ValueError(f"control_type must be one of {sorted(CONTROL_CHANNELS)}, got {control_type!r}")
    if height % PIXELS_PER_CELL or width % PIXELS_PER_CELL:
        raise ValueError(f"height and width must be multiples of {PIXELS_PER_CELL}, got {height}x{width}")
    if tuple(intrinsics.shape) != (4,) or intrinsics[0] <= 0 or intrinsics[1] <= 0:
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy] with fx, fy > 0, got {intrinsics.tolist()}")
    if control_type == "act" and (wasd is None or tuple(wasd.shape) != (num_frames, 4)):
        raise ValueError(f"act control needs wasd [{num_frames}, 4] (one W,A,S,D row per latent frame), "
                         f"got {None if wasd is None else tuple(wasd.shape)}")
    if control_type == "cam" and wasd is not None:
        raise ValueError("cam control takes no wasd: keys reach the cam model through the poses")


def _embed_relative_poses(relative: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
                          control_type: str, wasd: torch.Tensor | None, dtype: torch.dtype,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Relative poses [F, 4, 4] (translation already scaled) -> [C*64, F, H/8, W/8] on `device`
    (default: the poses'). cam: per pixel concat(origin, direction), 6 ch; act: concat(direction,
    W,A,S,D), 7 ch."""
    if device is not None:
        relative = relative.to(device)
        wasd = None if wasd is None else wasd.to(device)
    directions = pixel_ray_directions(relative[:, :3, :3], intrinsics, height, width)
    if control_type == "cam":
        origins = relative[:, None, None, :3, 3].expand_as(directions)
        per_pixel = torch.cat([origins, directions], -1)
    else:
        keys = wasd.float()[:, None, None, :].expand(-1, height, width, -1)
        per_pixel = torch.cat([directions, keys], -1)
    # upstream rounds the control tensor to bf16 (param_dtype) whatever the model's dtype
    return fold_pixels(per_pixel).to(dtype)


def control_embedding(latent_poses, intrinsics, height: int, width: int, control_type: str, *,
                      previous_pose=None, wasd=None, translation_scale: float = STREAM_TRANSLATION_SCALE,
                      dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None) -> torch.Tensor:
    """The control signal of one streamed block: [control_channels, F_lat, H/8, W/8], built on
    `device` (default the CPU; the pose maths stay on the CPU, the per-pixel rays and their fold
    run where the model is: on the CPU they held a wan-1.3b 480p block's GPU idle for 20-34 ms).

    latent_poses: c2w [F_lat, 4, 4], the pose of each latent frame of the block (the pose
        after its last video frame; the stream's first latent frame is the start image).
    previous_pose: c2w [4, 4] of the stream's latent frame before the block; None for the
        first block, whose first delta is then the identity as upstream's clip start.
    intrinsics: [fx, fy, cx, cy] in pixels of the height x width frame.
    wasd: act only, W,A,S,D multi-hot [F_lat, 4] (upstream takes `action.npy[::4]`).
    translation_scale: multiplies each frame-to-frame translation in place of upstream's
        per-clip max-norm division; the default maps a held W to norm 1 (module docstring).
    dtype: bf16 by default, as upstream rounds the tensor; float32 keeps the exact values.
    """
    latent_poses = torch.as_tensor(np.asarray(latent_poses), dtype=torch.float32)
    if latent_poses.dim() != 3 or latent_poses.shape[1:] != (4, 4):
        raise ValueError(f"latent_poses must be [F_lat, 4, 4], got {tuple(latent_poses.shape)}")
    intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
    wasd = None if wasd is None else torch.as_tensor(np.asarray(wasd), dtype=torch.float32)
    _check_embedding_args(intrinsics, height, width, control_type, wasd, len(latent_poses))
    if previous_pose is None:
        relative = framewise_relative_poses(latent_poses)
    else:
        previous_pose = torch.as_tensor(np.asarray(previous_pose), dtype=torch.float32)
        relative = framewise_relative_poses(torch.cat([previous_pose[None], latent_poses]))[1:]
    relative[:, :3, 3] *= translation_scale
    return _embed_relative_poses(relative, intrinsics, height, width, control_type, wasd, dtype, device)


# ---- offline: upstream's example directories -------------------------------------------------
def _load_array(action_dir: Path, name: str, trailing_shape: tuple[int, ...]) -> np.ndarray:
    path = action_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    array = np.load(path)
    if array.ndim != 1 + len(trailing_shape) or array.shape[1:] != trailing_shape or len(array) == 0:
        want = ", ".join(["F", *map(str, trailing_shape)])
        raise ValueError(f"{path} must have shape [{want}], got {list(array.shape)}")
    return array


def scale_intrinsics(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """[.., 4] [fx, fy, cx, cy] in 480x832 pixels -> pixels of height x width (upstream
    `get_Ks_transformed` with resize = final size, i.e. no crop)."""
    source_height, source_width = INTRINSICS_SOURCE_HW
    scale = np.array([width / source_width, height / source_height] * 2)
    return np.asarray(intrinsics, dtype=np.float32) * scale.astype(np.float32)


def control_from_files(action_dir, num_frames: int, height: int, width: int, control_type: str,
                       dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Upstream's whole-clip control signal [control_channels, F_lat, H/8, W/8] of an example
    directory (`WanI2V.generate` @9660e94): poses trimmed to 4n+1 frames and to num_frames
    (which must be 4n+1), resampled to latent frames, framewise relative poses with the
    per-clip max-norm translation, rays with `intrinsics.npy[0]` rescaled to height x width;
    act adds `action.npy[:frames][::4]` (W,A,S,D)."""
    if num_frames < 1 or (num_frames - 1) % VIDEO_FRAMES_PER_LATENT:
        raise ValueError(f"num_frames must be 4n+1, got {num_frames}")
    action_dir = Path(action_dir)
    poses = _load_array(action_dir, "poses.npy", (4, 4)).astype(np.float64)
    intrinsics = _load_array(action_dir, "intrinsics.npy", (4,))
    usable_frames = (len(poses) - 1) // VIDEO_FRAMES_PER_LATENT * VIDEO_FRAMES_PER_LATENT + 1
    num_frames = min(num_frames, usable_frames)
    wasd = None
    if control_type == "act":
        actions = _load_array(action_dir, "action.npy", (4,))
        if len(actions) < num_frames:
            raise ValueError(f"{action_dir / 'action.npy'} has {len(actions)} frames, fewer than the "
                             f"{num_frames} poses used")
        wasd = actions[:num_frames:VIDEO_FRAMES_PER_LATENT]
    latent_poses = torch.from_numpy(resample_to_latent_frames(poses[:num_frames])).float()
    relative = _normalise_by_max_translation(framewise_relative_poses(latent_poses))
    intrinsics = torch.from_numpy(scale_intrinsics(intrinsics[0], height, width))
    wasd = None if wasd is None else torch.from_numpy(wasd.astype(np.float32))
    _check_embedding_args(intrinsics, height, width, control_type, wasd, len(relative))
    return _embed_relative_poses(relative, intrinsics, height, width, control_type, wasd, dtype)
