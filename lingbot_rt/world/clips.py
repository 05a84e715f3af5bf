"""A generated dataset in memory as tensors, for training and evaluation on one device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import ClipDataset, ClipError


@dataclass
class ClipTensors:
    frames: torch.Tensor          # uint8 [N, F, H, W, 3]
    poses: torch.Tensor           # float32 [N, F, 4, 4] c2w
    intrinsics: torch.Tensor      # float32 [N, 4] [fx, fy, cx, cy] in pixels of the H x W frame
    keys: torch.Tensor            # float32 [N, F, 8]
    prompts: list[str]
    paths: list[Path]

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]


def load_clip_tensors(data_dir: str | Path, *, max_clips: int | None = None, first_clip: int = 0,
                      height: int | None = None, width: int | None = None,
                      device: str | torch.device = "cpu") -> ClipTensors:
    """Load clips [first_clip, first_clip + max_clips) of a dataset; all must share one shape."""
    dataset = ClipDataset(data_dir)
    stop = len(dataset) if max_clips is None else min(len(dataset), first_clip + max_clips)
    if first_clip >= stop:
        raise ValueError(f"{data_dir} has {len(dataset)} clips; none from index {first_clip}")
    clips = [dataset[i] for i in tqdm(range(first_clip, stop), desc="load clips", unit="clip", leave=False)]
    shape = clips[0].frames.shape
    for clip in clips:
        if clip.frames.shape != shape:
            raise ClipError(f"{clip.path}: frames {list(clip.frames.shape)} differ from {list(shape)} of the "
                            f"first clip; a dataset has one frame count and size")
    if (height or shape[1]) != shape[1] or (width or shape[2]) != shape[2]:
        raise ClipError(f"{data_dir} holds {shape[1]}x{shape[2]} frames, not the {height}x{width} asked for")
    return ClipTensors(
        frames=torch.from_numpy(np.stack([c.frames for c in clips])).to(device),
        poses=torch.from_numpy(np.stack([c.poses for c in clips])).to(device),
        intrinsics=torch.from_numpy(np.stack([c.render_intrinsics() for c in clips]).astype(np.float32)).to(device),
        keys=torch.from_numpy(np.stack([c.keys for c in clips])).to(device),
        prompts=[c.prompt for c in clips], paths=[c.path for c in clips])
