"""Training clips from the built-in world, in LingBot-World's own input format, and their loader.

    generate_dataset("data/world", num_clips=1000, frames_per_clip=81, height=240, width=416)
    clip = load_clip("data/world/shard_00000/clip_000000")

Layout of `out_dir`:

    dataset.json                  the generation settings (a resumed run must match them; it may
                                  ask for more clips)
    shard_00000/manifest.json     the shard's clips: seeds, layout, prompt (written at the end of a run)
    shard_00000/clip_000000/
        frames.npy       uint8 [F, H, W, 3]   the rendered frames (lossless)
        image.jpg                             frame 0 (upstream's start image)
        poses.npy        float32 [F, 4, 4]    c2w world poses, OpenCV, exactly as rendered
        intrinsics.npy   float32 [F, 4]       [fx, fy, cx, cy] in pixels of a 480x832 frame, as
                                              upstream expects (it rescales them to its size)
        action.npy       float32 [F, 4]       W, A, S, D multi-hot (upstream's act format)
        keys.npy         float32 [F, 8]       all keys, columns `KEYS` ("wasdijkl")
        prompt.txt                            the map's style in one sentence
        meta.json                             seeds, layout, render size and intrinsics

Frame 0 is the start pose with no keys; keys[i] move the camera from frame i-1 to frame i.
The render intrinsics are `scale_intrinsics(intrinsics[0], H, W)` (what upstream computes from
the file): re-rendering poses.npy with them reproduces frames.npy on the same device type.

Clip i gets its own map and walk, seeded from (seed, i): clips are independent, so a run can
stop anywhere and resume. A clip is written to a hidden temporary directory and renamed when
complete; complete clips are skipped.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..model.controls import INTRINSICS_SOURCE_HW, KEYS, scale_intrinsics
from .config import WorldConfig
from .map import generate_map, spawn_pose
from .players import play
from .renderer import Renderer

CLIP_FILES = ("frames.npy", "image.jpg", "poses.npy", "intrinsics.npy", "action.npy", "keys.npy", "prompt.txt",
              "meta.json")
RENDER_BATCH = 32          # frames per render call


class ClipError(ValueError):
    """A clip directory that is missing a file or holds one of the wrong shape or type."""


@dataclass(frozen=True)
class DatasetSettings:
    """What a dataset's clips are generated with (dataset.json), whatever their number."""
    frames_per_clip: int
    height: int
    width: int
    seed: int
    shard_size: int
    world: WorldConfig

    def __post_init__(self):
        if self.frames_per_clip < 1 or (self.frames_per_clip - 1) % 4:
            raise ValueError(f"frames_per_clip must be 4n+1 (VAE temporal stride), got {self.frames_per_clip}")
        if min(self.height, self.width, self.shard_size) < 1:
            raise ValueError("height, width and shard_size must be positive")

    def to_dict(self) -> dict:
        """As stored in dataset.json (JSON types: tuples become lists)."""
        return json.loads(json.dumps({**asdict(self), "world": self.world.to_dict()}))


def clip_seeds(seed: int, clip_index: int) -> tuple[int, int]:
    """(map seed, player seed) of clip `clip_index` of a dataset."""
    map_seed, player_seed = np.random.SeedSequence([seed, clip_index]).generate_state(2)
    return int(map_seed), int(player_seed)


def source_intrinsics(world: WorldConfig, height: int, width: int) -> np.ndarray:
    """[fx, fy, cx, cy] float32 of a height x width render, in 480x832 pixel units."""
    source_height, source_width = INTRINSICS_SOURCE_HW
    scale = np.array([source_width / width, source_height / height] * 2)
    return (np.array(world.intrinsics(height, width)) * scale).astype(np.float32)


def _save_jpeg(path: Path, frame: np.ndarray) -> None:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("writing image.jpg needs Pillow: pip install Pillow") from exc
    Image.fromarray(frame).save(path, quality=95)


def write_clip(clip_dir: Path, settings: DatasetSettings, clip_index: int, device: str | torch.device) -> dict:
    """Generate and write clip `clip_index` (atomically: temp dir, then rename). Returns its
    manifest entry."""
    map_seed, player_seed = clip_seeds(settings.seed, clip_index)
    world = generate_map(map_seed, settings.world)
    start = spawn_pose(world, player_seed)
    keys, poses = play(world, start, settings.frames_per_clip, player_seed)
    poses = poses.astype(np.float32)                       # stored and rendered: the same numbers
    intrinsics = source_intrinsics(settings.world, settings.height, settings.width)
    render_intrinsics = scale_intrinsics(intrinsics, settings.height, settings.width)
    renderer = Renderer(world, device)
    frames = np.concatenate([
        renderer.render(torch.from_numpy(poses[start_index:start_index + RENDER_BATCH]), render_intrinsics,
                        settings.height, settings.width).cpu().numpy()
        for start_index in range(0, len(poses), RENDER_BATCH)])
    entry = {"name": clip_dir.name, "clip_index": clip_index, "map_seed": map_seed, "player_seed": player_seed,
             "layout": world.layout, "num_frames": len(frames), "prompt": world.prompt}
    temp_dir = clip_dir.with_name(f".{clip_dir.name}.tmp")
    if temp_dir.exists():
        shutil.rmtree(temp_dir)                            # left over from an interrupted run
    temp_dir.mkdir(parents=True)
    np.save(temp_dir / "frames.npy", frames)
    _save_jpeg(temp_dir / "image.jpg", frames[0])
    np.save(temp_dir / "poses.npy", poses)
    np.save(temp_dir / "intrinsics.npy", np.tile(intrinsics, (len(frames), 1)))
    np.save(temp_dir / "action.npy", keys[:, :4])          # KEYS starts with w, a, s, d
    np.save(temp_dir / "keys.npy", keys)
    (temp_dir / "prompt.txt").write_text(world.prompt + "\n")
    meta = {**entry, "height": settings.height, "width": settings.width,
            "render_intrinsics": [float(v) for v in render_intrinsics], "world": settings.world.to_dict()}
    (temp_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    temp_dir.rename(clip_dir)
    return entry


def _check_settings(out_dir: Path, settings: DatasetSettings) -> None:
    path = out_dir / "dataset.json"
    if path.exists():
        stored, wanted = json.loads(path.read_text()), settings.to_dict()
        if stored != wanted:
            changed = sorted(key for key in wanted if stored.get(key) != wanted[key])
            raise ValueError(f"{out_dir} holds a dataset generated with other settings (differing: {changed}); "
                             "use another --out or the same settings to resume")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")


def generate_dataset(out_dir, num_clips: int, frames_per_clip: int = 81, height: int = 240, width: int = 416,
                     seed: int = 0, shard_size: int = 100, world: WorldConfig | None = None,
                     device: str | torch.device = "cpu", progress: bool = True, workers: int = 1) -> Path:
    """Write `num_clips` clips under `out_dir` (layout in the module docstring), skipping clips
    already complete. 240x416 is half of upstream's 480x832. Returns `out_dir`.

    `workers` > 1 generates clips in that many processes (one torch thread each): a clip's
    walk, map and files cost more CPU than its rendering (1200 clips of 81 frames at 128x128
    took 100 s in one process with the renderer on an H100)."""
    out_dir = Path(out_dir)
    if num_clips < 1:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    settings = DatasetSettings(frames_per_clip, height, width, seed, shard_size, world or WorldConfig())
    _check_settings(out_dir, settings)
    clip_dirs = [out_dir / f"shard_{i // shard_size:05d}" / f"clip_{i:06d}" for i in range(num_clips)]
    todo = [i for i, clip_dir in enumerate(clip_dirs) if not clip_dir.is_dir()]
    with tqdm(total=num_clips, initial=num_clips - len(todo), unit="clip", disable=not progress) as bar:
        if workers == 1:
            for clip_index in todo:
                write_clip(clip_dirs[clip_index], settings, clip_index, device)
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(1,)) as pool:
                jobs = [pool.submit(write_clip, clip_dirs[i], settings, i, device) for i in todo]
                for job in as_completed(jobs):
                    job.result()
                    bar.update()
    for shard_start in range(0, num_clips, shard_size):
        shard_dirs = clip_dirs[shard_start:shard_start + shard_size]
        clips = [json.loads((clip_dir / "meta.json").read_text()) for clip_dir in shard_dirs]
        manifest = {"shard": shard_start // shard_size, "num_clips": len(clips),
                    "clips": [{key: clip[key] for key in ("name", "clip_index", "map_seed", "player_seed", "layout",
                                                          "num_frames", "prompt")} for clip in clips]}
        (shard_dirs[0].parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


# ---- reading clips back ----------------------------------------------------------------------
@dataclass
class Clip:
    """One clip as stored (see the module docstring for each field's meaning)."""
    path: Path
    frames: np.ndarray        # uint8 [F, H, W, 3]
    poses: np.ndarray         # float32 [F, 4, 4]
    intrinsics: np.ndarray    # float32 [F, 4], 480x832 pixel units
    actions: np.ndarray       # float32 [F, 4] W, A, S, D
    keys: np.ndarray          # float32 [F, 8] columns KEYS
    prompt: str

    def render_intrinsics(self) -> np.ndarray:
        """[fx, fy, cx, cy] in pixels of the stored frames (what they were rendered with)."""
        return scale_intrinsics(self.intrinsics[0], self.frames.shape[1], self.frames.shape[2])


def _load(path: Path, shape: tuple, dtype: type) -> np.ndarray:
    """np.load with a check of rank, sizes (None: any) and dtype, naming the file on failure."""
    try:
        array = np.load(path)
    except (ValueError, OSError) as exc:
        raise ClipError(f"{path} is not a readable .npy file: {exc}") from exc
    want = "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"
    if array.ndim != len(shape) or any(size is not None and size != got for size, got in zip(shape, array.shape)):
        raise ClipError(f"{path} must have shape {want}, got {list(array.shape)}")
    if array.dtype != dtype:
        raise ClipError(f"{path} must be {np.dtype(dtype).name}, got {array.dtype}")
    return array


def load_clip(path) -> Clip:
    """Read a clip directory and check that every file is there and every array's shape, dtype
    and frame count."""
    path = Path(path)
    missing = [name for name in CLIP_FILES if not (path / name).is_file()]
    if missing:
        raise ClipError(f"{path / missing[0]} is missing" + (f" (and {missing[1:]})" if missing[1:] else ""))
    frames = _load(path / "frames.npy", (None, None, None, 3), np.uint8)
    num_frames = len(frames)
    actions = _load(path / "action.npy", (num_frames, 4), np.float32)
    keys = _load(path / "keys.npy", (num_frames, len(KEYS)), np.float32)
    if not np.array_equal(actions, keys[:, :4]):
        raise ClipError(f"{path / 'action.npy'} disagrees with the W, A, S, D columns of {path / 'keys.npy'}")
    return Clip(path, frames, poses=_load(path / "poses.npy", (num_frames, 4, 4), np.float32),
                intrinsics=_load(path / "intrinsics.npy", (num_frames, 4), np.float32), actions=actions, keys=keys,
                prompt=(path / "prompt.txt").read_text().strip())


class ClipDataset(torch.utils.data.Dataset):
    """The complete clips under a dataset directory (`shard_*/clip_*`), in order, as `Clip`s."""

    def __init__(self, root):
        self.root = Path(root)
        self.clip_dirs = sorted(self.root.glob("shard_*/clip_*"))
        if not self.clip_dirs:
            raise FileNotFoundError(f"no clips under {self.root} (expected shard_*/clip_*)")

    def __len__(self) -> int:
        return len(self.clip_dirs)

    def __getitem__(self, index: int) -> Clip:
        return load_clip(self.clip_dirs[index])
