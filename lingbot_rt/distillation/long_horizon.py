"""Long-horizon DMD (Self-Forcing++, Cui et al. 2025): rollouts past the KV window.

A student trained only on rollouts as long as the data's clips (21 latent frames) never sees
its cache roll: 21 frames fit the sink and the window, so the attention pattern it streams
with for minutes (sink + a window of its own frames far from the sink, re-roped) and the
errors that build up in it are never trained. Long-horizon DMD rolls the student out further
and applies DMD to the last clip-length window, which the bidirectional teacher can score.
Measured on the built-in world (`benchmarks/results/distill/README.md`, fourth run): 80 such
updates kept held-out quality at the teacher's and did not reduce the minute-to-minute scatter
of the 10-minute rollouts' frame statistics.

Per step, with `DMDConfig.rollout_frames` R longer than the clips' F latent frames:
  1. a rollout length L from F, F + b, ..., R (b = block frames), shared by the ranks;
  2. L frames of controls: the clip's own, then the camera motions of other clips of the data
     (a latent frame's control is the motion since the previous one, so motions chain); the
     image condition continues with the clip's last latent, the black frames' latent (with the
     world VAE, latent 20 is within 1e-6 of the fixed point streaming reaches at latent 28);
  3. the student streams L frames: the first L - F as inference does (no gradient), the last F,
     the window, as in Self-Forcing (a random exit step, gradient there);
  4. the teacher and the critic score the window as a clip of its own (`window_conditions`):
     an image encoded with black frames as the I2V condition, as the data's clips are; its
     controls with the first replaced by a clip start's (no motion). The window's first
     latent, which that condition hands the scores, takes no DMD gradient
     (`dmd_loss(first_frame=1)`).
With L = F a step is the plain Self-Forcing step on the clip with its own condition.

The image (`DMDConfig.window_anchor`): "rollout", the window's first latent decoded (the
scores take the student's scenery as given, as Self-Forcing++ does); or "truth", the true frame
of the world at the window's start. A student past its window keeps the map's style only in
part (through the prompt and the attention sink) and drifts toward other maps' styles; a
window conditioned on its own drifted frame cannot show that drift to the scores, one
conditioned on the true frame can. "truth" needs clips at least `rollout_frames` long, loaded
with their start images (`ConditionedClips.starts`), and streams along them instead of
chaining other clips' motions; the scores' window length is then `score_frames` (the plain
steps and the data loss read the clips' first `score_frames` frames).
"""
from __future__ import annotations

import torch

from ..model.controls import VIDEO_FRAMES_PER_LATENT
from ..model.vae import WanVAE
from ..world.latents import ConditionedClips, image_condition
from .dmd import Conditions


def rollout_lengths(clip_frames: int, rollout_frames: int, block_frames: int) -> list[int]:
    """The rollout lengths a step draws from: F, F + b, ... up to `rollout_frames`."""
    if rollout_frames < clip_frames:
        raise ValueError(f"rollout_frames ({rollout_frames}) must be at least the clips' {clip_frames} latent "
                         "frames (0 turns long-horizon rollouts off)")
    return list(range(clip_frames, rollout_frames + 1, block_frames))


def long_controls(data: ConditionedClips, index: torch.Tensor, frames: int,
                  generator: torch.Generator) -> torch.Tensor:
    """[B, C, frames, h, w]: each clip's controls, then the motions (latent frames 1..F-1) of
    other clips drawn at random."""
    control = data.control[index]
    parts, have = [control], control.shape[2]
    while have < frames:
        others = torch.randint(len(data), (len(index),), generator=generator, device=index.device)
        parts.append(data.control[others, :, 1:])
        have += parts[-1].shape[2]
    return torch.cat(parts, 2)[:, :, :frames]


def long_image_condition(y: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, 20, frames, h, w]: the clips' condition, continued with their last latent frame."""
    extra = frames - y.shape[2]
    return torch.cat([y, y[:, :, -1:].expand(-1, -1, extra, -1, -1)], 2) if extra > 0 else y[:, :, :frames]


@torch.no_grad()
def decoded_first_frame(vae: WanVAE, window: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1]: the window's [B, 16, F, h, w] first latent, decoded on its own."""
    return vae.decode(window[:, :, :1].detach().float().to(vae.dtype))[:, :, 0].clamp(-1, 1)


@torch.no_grad()
def window_conditions(vae: WanVAE, image: torch.Tensor, control: torch.Tensor, data: ConditionedClips,
                      index: torch.Tensor) -> Conditions:
    """The scores' conditions for a window of F latent frames whose controls are `control`
    [B, C, F, h, w], anchored on `image` [B, 3, H, W] in [-1, 1] (the window's decoded first
    frame, or the true frame there): `image` encoded with black frames as the I2V condition, a
    clip start's control for the first frame, the clips' prompts."""
    y = image_condition(vae, image.to(vae.dtype), VIDEO_FRAMES_PER_LATENT * (control.shape[2] - 1) + 1)
    control = torch.cat([data.control[index, :, :1], control[:, :, 1:].to(data.control.dtype)], 2)
    return Conditions(data.context[index], y.to(data.y.dtype), control, data.empty_context)
