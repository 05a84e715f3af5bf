"""A camera-motion probe: from two frames 4 apart, the motion between them.

A small CNN trained on the renderer's frames and exact poses. It turns "does the generated
video follow the actions?" into numbers: run it on generated frames and compare its estimate
with the commanded motion (and run it on the true frames for its own error floor).

Motion of frame t -> t + 4, in frame t's camera (OpenCV axes): right (x), forward (z),
yaw (about the vertical, + = turning right, as L), pitch change (+ = looking up, as I);
targets are divided by their largest value under the controls (0.2 units, 8 degrees).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .clips import ClipTensors

GAP = 4
MOTION_SCALE = torch.tensor([0.2, 0.2, math.radians(8.0), math.radians(8.0)])
MOTION_NAMES = ("right", "forward", "yaw", "pitch")


def relative_motion(poses_a: torch.Tensor, poses_b: torch.Tensor) -> torch.Tensor:
    """c2w [N, 4, 4] pairs -> [N, 4] (right, forward, yaw, pitch change), unscaled (units, radians)."""
    # horizontal motion in camera a's yaw-only frame (its forward axis projected onto the floor)
    yaw_a = torch.atan2(poses_a[:, 0, 2], poses_a[:, 2, 2])
    delta = poses_b[:, :3, 3] - poses_a[:, :3, 3]
    right = delta[:, 0] * torch.cos(yaw_a) - delta[:, 2] * torch.sin(yaw_a)
    forward = delta[:, 0] * torch.sin(yaw_a) + delta[:, 2] * torch.cos(yaw_a)
    yaw = torch.atan2(poses_b[:, 0, 2], poses_b[:, 2, 2]) - yaw_a
    yaw = torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi

    def pitch(poses):            # elevation of the forward axis; +y is down, so up is -y
        return torch.asin((-poses[:, 1, 2]).clamp(-1, 1))
    return torch.stack([right, forward, yaw, pitch(poses_b) - pitch(poses_a)], -1)


class PoseProbe(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        widths = [6, width, 2 * width, 4 * width, 4 * width, 8 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], len(MOTION_NAMES))

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] pairs -> scaled motion [N, 4]."""
        return self.read(*(frame.permute(0, 3, 1, 2).float() / 127.5 - 1.0 for frame in (frame_a, frame_b)))

    def read(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        """Float [N, 3, H, W] pairs in [-1, 1] -> scaled motion [N, 4] (differentiable)."""
        x = torch.cat([frame_a, frame_b], 1)
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.head(x.mean((2, 3)))

    @torch.no_grad()
    def motion(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames uint8 [F, H, W, 3] -> unscaled motion [F - GAP, 4] of every (t, t + GAP) pair."""
        first, second = frames[:-GAP], frames[GAP:]
        scaled = torch.cat([self(a, b) for a, b in zip(first.split(64), second.split(64))])
        return scaled * MOTION_SCALE.to(scaled.device)


def fit_probe(make_probe: Callable[[], nn.Module], draw_batch: Callable[[torch.Generator], tuple], steps: int,
              seed: int, device, desc: str, progress: bool = True) -> nn.Module:
    """The probes' training loop: `make_probe()` (built after seeding torch with `seed`) fitted
    for `steps` AdamW steps (lr 1e-3, cosine) of smooth-L1 on batches `draw_batch(generator)` ->
    (input a, input b, scaled target), the generator seeded with `seed`. Returns it in eval mode."""
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    probe = make_probe().to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False, disable=not progress):
        first, second, target = draw_batch(generator)
        loss = F.smooth_l1_loss(probe(first, second), target, beta=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return probe.eval()


def train_probe(clips: ClipTensors, steps: int = 2000, batch_size: int = 128, seed: int = 0,
                width: int = 32) -> PoseProbe:
    device = clips.frames.device
    scale = MOTION_SCALE.to(device)

    def draw_batch(generator):
        clip = torch.randint(len(clips), (batch_size,), generator=generator, device=device)
        start = torch.randint(clips.num_frames - GAP, (batch_size,), generator=generator, device=device)
        target = relative_motion(clips.poses[clip, start].double(), clips.poses[clip, start + GAP].double()).float()
        return clips.frames[clip, start], clips.frames[clip, start + GAP], target / scale
    return fit_probe(lambda: PoseProbe(width), draw_batch, steps, seed, device, "train-probe")


def save_probe(probe: nn.Module, path: str | Path, **metadata) -> Path:
    """Write a probe's weights as safetensors (fp32), `metadata` (how it was trained) alongside
    (this probe, or the latent motion probe of `distillation/action_loss.py`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in probe.state_dict().items()}, path,
              metadata={k: str(v) for k, v in metadata.items()})
    return path


def read_probe_state(path: str | Path, what: str, made_by: str) -> dict[str, torch.Tensor]:
    """A probe file's tensors, with a clear error for a missing or malformed file: `what` names
    the probe, `made_by` the command that writes one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path} (write one with `{made_by}`)")
    try:
        return load_file(path)
    except Exception as exc:           # safetensors raises its own error types for a malformed header
        raise ValueError(f"{path} is not a safetensors file: {exc}") from None


def load_probe(path: str | Path, device: str | torch.device = "cpu",
               made_by: str = "lingbot-rt world train-probe") -> PoseProbe:
    """A probe from `save_probe`'s safetensors, in eval mode; its width is read from the weights.
    `made_by`: the command that writes one, for the error when the file is missing."""
    state = read_probe_state(path, "pose probe", made_by)
    if "convs.0.weight" not in state or state["convs.0.weight"].shape[1] != 6:
        raise ValueError(f"{path} is not a pose probe (its first layer must read two RGB frames)")
    probe = PoseProbe(width=state["convs.0.weight"].shape[0])
    try:
        probe.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the pose probe's layers: {exc}") from None
    return probe.to(device).eval()
