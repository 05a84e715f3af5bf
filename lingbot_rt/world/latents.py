"""Clips -> what the DiT reads: clean latents, the I2V condition, the ray control, the prompt.

Every tensor is made exactly as the streaming pipeline makes it at play time, so the teacher,
the student and the server see one input distribution:

* x0: `vae.encode(frames)`, normalised, [16, F_lat, h, w];
* y: mask (1 on latent frame 0) + `vae.encode(image + black frames)` (upstream's I2V latent);
* control: `control_embedding` of the latent frames' poses (every 4th video frame, as
  upstream resamples a 4n+1 clip) with the fixed streaming translation scale, cam rays, bf16;
* context: the prompt's umT5 features, zero-padded to the DiT's text_len.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..model.controls import VIDEO_FRAMES_PER_LATENT, control_embedding
from ..model.image_condition import with_mask
from ..model.text_encoder import TextEncoder
from ..model.vae import WanVAE
from .clips import ClipTensors
from .pose_probe import relative_motion


@dataclass
class ConditionedClips:
    x0: torch.Tensor          # [N, 16, F_lat, h, w] bf16
    y: torch.Tensor           # [N, 20, F_lat, h, w] bf16
    control: torch.Tensor     # [N, 384, F_lat, h, w] bf16
    context: torch.Tensor     # [N, text_len, text_dim] bf16
    empty_context: torch.Tensor   # [text_len, text_dim]: the dropped prompt ("")
    # [N, F_lat, H, W, 3] uint8, kept on request: the video frame each latent frame would start
    # a clip from (frame 0, then 4t): a long clip's true image at any latent frame
    starts: torch.Tensor | None = None
    # [N, F_lat - 1, 4] float32: the camera motion from each latent frame to the next (right,
    # forward, yaw, pitch change; `pose_probe.relative_motion` of frames 4t and 4t + 4)
    motion: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x0.shape[0]

    @property
    def num_frames(self) -> int:
        return self.y.shape[2]

    def prefix(self, frames: int) -> ConditionedClips:
        """The clips' first `frames` latent frames (views): what a clip that short would hold,
        the I2V condition and the controls being causal."""
        if not 1 <= frames <= self.num_frames:
            raise ValueError(f"a prefix of {frames} latent frames of clips of {self.num_frames}")
        cut = (slice(None), slice(None), slice(0, frames))
        starts = None if self.starts is None else self.starts[:, :frames]
        motion = None if self.motion is None else self.motion[:, :frames - 1]
        return ConditionedClips(self.x0[cut], self.y[cut], self.control[cut], self.context, self.empty_context,
                                starts, motion)

    def start_images(self, index: torch.Tensor, frame: int) -> torch.Tensor:
        """[B, 3, H, W] float in [-1, 1]: clips `index`' true image at latent frame `frame`."""
        if self.starts is None:
            raise ValueError("these clips were loaded without their frames (condition_clips(keep_starts=True))")
        return self.starts[index, frame].permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pad_features(features: torch.Tensor, text_len: int) -> torch.Tensor:
    out = torch.zeros(text_len, features.shape[1], dtype=features.dtype, device=features.device)
    out[:min(text_len, len(features))] = features[:text_len]
    return out


def video_tensor(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1]."""
    return frames_uint8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


@torch.no_grad()
def image_condition(vae: WanVAE, images: torch.Tensor, num_video_frames: int) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> the I2V condition y [B, 20, F_lat, h, w] float32 of clips
    of `num_video_frames` (4n+1) starting at them: the mask (1 on latent frame 0) and
    `vae.encode(image + black frames)`, encoded as a stream: the image, then the black frames
    with `encode_black`, which skips the encoder steps at their fixed point (bitwise the
    whole-clip encode; 4.6x faster for 81 frames of 128x128 on the CPU)."""
    if num_video_frames < 1 or (num_video_frames - 1) % VIDEO_FRAMES_PER_LATENT:
        raise ValueError(f"an I2V clip has 4n+1 video frames, got {num_video_frames}")
    encoder = vae.stream_encoder()
    latents = [encoder.encode(images[:, :, None])]
    latents += [encoder.encode_black() for _ in range((num_video_frames - 1) // VIDEO_FRAMES_PER_LATENT)]
    return with_mask(torch.cat(latents, 2), starts_clip=True)


@torch.no_grad()
def condition_clips(clips: ClipTensors, vae: WanVAE, text_encoder: TextEncoder, text_len: int,
                    device: torch.device | str, batch_size: int = 8, control_type: str = "cam",
                    keep_starts: bool = False) -> ConditionedClips:
    """`keep_starts`: also keep each latent frame's start image (`ConditionedClips.starts`)."""
    device = torch.device(device)
    height, width = clips.frames.shape[2:4]
    x0, y, control, motion = [], [], [], []
    for start in tqdm(range(0, len(clips), batch_size), desc="encode clips", unit="batch", leave=False):
        frames = video_tensor(clips.frames[start:start + batch_size].to(device))
        x0.append(vae.encode(frames).to(torch.bfloat16))
        y.append(image_condition(vae, frames[:, :, 0], frames.shape[2]).to(torch.bfloat16))
        for index in range(start, min(start + batch_size, len(clips))):
            poses = clips.poses[index, ::VIDEO_FRAMES_PER_LATENT].cpu()
            control.append(control_embedding(poses.numpy(), clips.intrinsics[index].cpu().numpy(), height, width,
                                             control_type).to(device))
            motion.append(relative_motion(poses[:-1].double(), poses[1:].double()).float())
    features = text_encoder.encode(clips.prompts + [""])
    padded = [pad_features(f, text_len).to(device, torch.bfloat16) for f in features]
    starts = clips.frames[:, ::VIDEO_FRAMES_PER_LATENT].to(device) if keep_starts else None
    return ConditionedClips(torch.cat(x0), torch.cat(y), torch.stack(control), torch.stack(padded[:-1]), padded[-1],
                            starts, torch.stack(motion).to(device))


def load_conditioned_clips(data_dir, vae_dir, device: torch.device | str, max_clips: int | None = None,
                           keep_starts: bool = False) -> ConditionedClips:
    """A dataset directory's clips, conditioned with a trained VAE (a train-vae directory) and
    the world's text encoder, on `device` (`keep_starts`: see `condition_clips`)."""
    from .clips import load_clip_tensors
    from .text import TEXT_LEN, world_text_encoder
    from .train_vae import load_trained_vae
    vae = load_trained_vae(vae_dir, device=device)
    clips = load_clip_tensors(data_dir, max_clips=max_clips, device=device)
    return condition_clips(clips, vae, world_text_encoder(device), TEXT_LEN, device, keep_starts=keep_starts)
