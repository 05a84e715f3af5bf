"""An action-following loss for DMD: a camera-motion probe on latents, scoring the student's
rollouts against the motions their controls command.

DMD matches the student's distribution to the teacher's on clip-length windows; nothing in it
asks a window far into a rollout to move as its keys say. Measured on the built-in world
(`benchmarks/results/distill/README.md`, eighth run): the shipped student's forward following
over long play is 0.85 where the true frames through the VAE score 0.92, and the gap is the
DiT's. A reward of that kind, differentiable, is an inverse-dynamics model: given two
consecutive latent frames, the camera motion between them.

`LatentMotionProbe` is that model on the VAE's latents (trained on the true clips' latents and
exact poses, `train_latent_probe`; `lingbot-rt distill latent-probe`). It is a model of its own,
separate from the pixel `PoseProbe` that the evaluations score with, so the student is not
trained on the instrument it is measured with. `action_loss` runs it, frozen, on every pair of
consecutive latent frames of the student's samples (with their graph) and takes the smooth-L1
distance to the commanded motion, scaled as the probes' targets are (`MOTION_SCALE`).

Balanced (`balance=True`): the pairs fall into three groups by the commanded forward motion
(walking forward, walking back, neither: `FORWARD_MOVING` in 4 video frames, one latent frame)
and each group present weighs the same in the loss, whatever its count. Measured on the
built-in world (tenth run): over two minutes of long play, the shipped student's frames read
forward steps right 90% of the time and backward steps 47% (chance; the true frames through
the VAE 92%); backward pairs are a sixth of the moving pairs of the training windows, so an
unweighted loss spends little on them. Trained so
(weight 2, `lab`), the probe reads the training windows' backward pairs at 0.98, yet in long
play the student's backward following moves by seed and minute (0.34-0.86) and its 10-minute
runs stay within the bounds as often as the shipped student's (25 of 30 seeds).

Decoded (`DecodedMotionProbe`, `DMDConfig.action_decoder`): the samples through the stream's
tiny decoder (the frame ending each latent frame), read by a pixel `PoseProbe` trained on the
true latents decoded the same way (`train_decoded_probe`; `lingbot-rt distill decoded-probe`), a
model of its own beside the evaluations' probe, which reads the renderer's frames: the loss reads
what the player sees, not latents. Measured (eleventh run): neither training probe is a judge
of following. Both read the student's training windows walking back above the truth (latent:
0.90 at the first logged step of `lab`'s training, 0.98 at its end, true latents 0.88; decoded: 0.77 to 0.89
for `pab`, true latents decoded 0.69), while the evaluations' probe reads the same students'
held-out clips walking back at 0.48-0.70 (the true frames 0.85).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..model.controls import VIDEO_FRAMES_PER_LATENT
from ..model.tiny_decoder import TinyDecoder, load_tiny_decoder
from ..model.vae import video_to_uint8
from ..world.evaluate import FORWARD_MOVING, direction_accuracy
from ..world.latents import ConditionedClips
from ..world.pose_probe import MOTION_NAMES, MOTION_SCALE, PoseProbe, fit_probe, load_probe, read_probe_state

LATENT_CHANNELS = 16


class LatentMotionProbe(nn.Module):
    """Two latent frames [N, 16, h, w] -> their camera motion [N, 4], scaled by `MOTION_SCALE`."""

    def __init__(self, width: int = 64):
        super().__init__()
        widths = [2 * LATENT_CHANNELS, width, 2 * width, 2 * width, 4 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1)
                                   for i, (a, b) in enumerate(zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], len(MOTION_NAMES))

    def forward(self, latent_a: torch.Tensor, latent_b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([latent_a, latent_b], 1)
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.head(x.mean((2, 3)))

    def pairs(self, latents: torch.Tensor) -> torch.Tensor:
        """Clips [B, 16, F, h, w] -> scaled motion [B, F - 1, 4] of every consecutive pair."""
        batch, channels, frames, h, w = latents.shape
        first = latents[:, :, :-1].transpose(1, 2).reshape(-1, channels, h, w)
        second = latents[:, :, 1:].transpose(1, 2).reshape(-1, channels, h, w)
        return self(first, second).view(batch, frames - 1, -1)


def forward_groups(motion: torch.Tensor) -> list[torch.Tensor]:
    """Masks over the pairs of commanded motions [..., 4] (unscaled): walking forward, walking
    back, neither (|forward| <= `FORWARD_MOVING`)."""
    forward = motion[..., 1]
    return [forward > FORWARD_MOVING, forward < -FORWARD_MOVING, forward.abs() <= FORWARD_MOVING]


def action_loss(probe: LatentMotionProbe | DecodedMotionProbe, x: torch.Tensor, motion: torch.Tensor,
                balance: bool = False) -> tuple[torch.Tensor, dict]:
    """The student's samples x [B, 16, F, h, w] (with their graph) against the commanded motion
    [B, F - 1, 4] (unscaled) of their consecutive latent frames: the smooth-L1 loss of the
    probe's estimate (gradient to x only; the probe is frozen; `balance`: each of
    `forward_groups` present weighs the same) and the probe's direction accuracies on the
    samples, with its forward accuracy on the pairs walking back."""
    if motion.shape != (x.shape[0], x.shape[2] - 1, len(MOTION_NAMES)):
        raise ValueError(f"action loss: samples of {x.shape[2]} latent frames need motions [{x.shape[0]}, "
                         f"{x.shape[2] - 1}, {len(MOTION_NAMES)}] between them, got {list(motion.shape)}")
    scale = MOTION_SCALE.to(x.device)
    estimate = probe.pairs(x.float())
    per_pair = F.smooth_l1_loss(estimate, motion.float() / scale, beta=0.1, reduction="none").mean(-1)
    groups = forward_groups(motion)
    if balance:
        present = [group for group in groups if group.any()]
        loss = sum(per_pair[group].mean() for group in present) / len(present)
    else:
        loss = per_pair.mean()
    accuracy = direction_accuracy(estimate.detach().flatten(0, 1).double() * scale.double(),
                                  motion.detach().flatten(0, 1).double())
    stats = {"action_loss": loss.detach()}
    for name in ("yaw_direction_accuracy", "forward_direction_accuracy", "backward_direction_accuracy"):
        if accuracy[name] is not None:
            stats[f"probe_{name}"] = torch.tensor(accuracy[name])
    return loss, stats


def _fit_motion_probe(make_probe, inputs, motion: torch.Tensor, steps: int, batch_size: int, seed: int,
                      holdout: float, desc: str, progress: bool):
    """Fit a probe on pairs of consecutive frames of clips `inputs` [N, F, ...] (latents or decoded
    frames) against their motions [N, F - 1, 4], all but the last `holdout` of the clips; returns
    it (eval mode, frozen) and its direction accuracies on the held-out clips."""
    num_clips, num_frames = inputs.shape[:2]
    held = max(1, round(num_clips * holdout))
    if num_clips - held < 1 or num_frames < 2:
        raise ValueError(f"training a motion probe needs at least 2 clips of 2 latent frames, got {num_clips} of "
                         f"{num_frames}")
    device, train_clips = inputs.device, num_clips - held
    scale = MOTION_SCALE.to(device)

    def draw_batch(generator):
        clip = torch.randint(train_clips, (batch_size,), generator=generator, device=device)
        pair = torch.randint(num_frames - 1, (batch_size,), generator=generator, device=device)
        return inputs[clip, pair], inputs[clip, pair + 1], motion[clip, pair] / scale
    probe = fit_probe(make_probe, draw_batch, steps, seed, device, desc, progress).requires_grad_(False)
    with torch.no_grad():
        estimate = torch.cat([probe(inputs[clip, :-1], inputs[clip, 1:]) for clip in range(train_clips, num_clips)])
    accuracy = direction_accuracy(estimate.double().cpu() * scale.double().cpu(),
                                  motion[train_clips:].flatten(0, 1).double().cpu())
    return probe, {**accuracy, "held_out_clips": held}


def _clip_motion(data: ConditionedClips, probe: str) -> torch.Tensor:
    if data.motion is None:
        raise ValueError(f"the {probe} trains on the clips' camera motions: condition them with "
                         "`condition_clips` (ConditionedClips.motion is None)")
    return data.motion


def train_latent_probe(data: ConditionedClips, steps: int = 3000, batch_size: int = 256, seed: int = 0,
                       width: int = 64, holdout: float = 0.1, progress: bool = True) -> tuple[LatentMotionProbe, dict]:
    """Train on the clips' latents and motions, all but the last `holdout` of the clips; returns
    the probe (eval mode, frozen) and its direction accuracies on the held-out clips."""
    motion = _clip_motion(data, "latent probe")
    return _fit_motion_probe(lambda: LatentMotionProbe(width), data.x0.transpose(1, 2).float(), motion, steps,
                             batch_size, seed, holdout, "train-latent-probe", progress)


def latent_end_frames(decoder: TinyDecoder, latents: torch.Tensor) -> torch.Tensor:
    """Clips [B, 16, F, h, w] -> [B, F, 3, 8h, 8w] in [-1, 1]: the video frame that ends each latent
    frame, decoded by `decoder` as a new stream (latent 0 decodes to one frame)."""
    video = decoder.stream_decoder().decode_raw(latents).clamp(-1, 1)
    return video[:, :, ::VIDEO_FRAMES_PER_LATENT].transpose(1, 2)


class DecodedMotionProbe(nn.Module):
    """Latents -> the stream's tiny decoder -> a pixel `PoseProbe` on the frames that end
    consecutive latent frames (video frames 4 apart, the probe's gap): the action loss read in
    the pixels the player sees. Decoding keeps no activations for backward (recomputed there)."""

    def __init__(self, decoder: TinyDecoder, probe: PoseProbe):
        super().__init__()
        self.decoder, self.probe = decoder, probe

    def _pairs(self, latents: torch.Tensor) -> torch.Tensor:
        frames = latent_end_frames(self.decoder, latents)
        batch, num_frames = frames.shape[:2]
        estimate = self.probe.read(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1))
        return estimate.view(batch, num_frames - 1, -1)

    def pairs(self, latents: torch.Tensor) -> torch.Tensor:
        """Clips [B, 16, F, h, w] -> scaled motion [B, F - 1, 4] of every consecutive pair."""
        if torch.is_grad_enabled() and latents.requires_grad:
            return checkpoint(self._pairs, latents, use_reentrant=False)
        return self._pairs(latents)


@torch.no_grad()
def decoded_frames(decoder: TinyDecoder, x0: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """The clips' latents [N, 16, F, h, w] decoded by `decoder`: [N, F, 8h, 8w, 3] uint8, the frame
    that ends each latent frame, as a player's video stores it."""
    parts = [latent_end_frames(decoder, x0[i:i + chunk].to(decoder.dtype)) for i in range(0, len(x0), chunk)]
    return video_to_uint8(torch.cat(parts).transpose(1, 2))


def train_decoded_probe(data: ConditionedClips, decoder: TinyDecoder, steps: int = 3000, batch_size: int = 128,
                        seed: int = 1, width: int = 32, holdout: float = 0.1,
                        progress: bool = True) -> tuple[PoseProbe, dict]:
    """A pixel probe for `DecodedMotionProbe`: trained on the clips' true latents decoded by the
    stream's `decoder` and their exact motions (the evaluations' pose probe reads the renderer's
    own frames), all but the last `holdout` of the clips; returns it (eval mode, frozen) and its
    direction accuracies on the held-out clips."""
    motion = _clip_motion(data, "decoded-frame probe")
    frames = decoded_frames(decoder, data.x0)
    return _fit_motion_probe(lambda: PoseProbe(width), frames, motion, steps, batch_size, seed, holdout,
                             "train-decoded-probe", progress)


def load_latent_probe(path: str | Path, device: str | torch.device = "cpu") -> LatentMotionProbe:
    """A frozen probe from `save_probe`'s safetensors; its width is read from the weights."""
    state = read_probe_state(path, "latent motion probe", "lingbot-rt distill latent-probe")
    if "convs.0.weight" not in state or state["convs.0.weight"].shape[1] != 2 * LATENT_CHANNELS:
        raise ValueError(f"{path} is not a latent motion probe (its first layer must read 2 x {LATENT_CHANNELS} "
                         "latent channels)")
    probe = LatentMotionProbe(width=state["convs.0.weight"].shape[0])
    try:
        probe.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the latent motion probe's layers: {exc}") from None
    return probe.to(device).eval().requires_grad_(False)


def load_action_probe(probe: str | Path, decoder: str | Path | None,
                      device: str | torch.device = "cpu") -> LatentMotionProbe | DecodedMotionProbe:
    """The action loss's frozen probe: the latent motion probe at `probe`, or, with the tiny
    `decoder`'s directory, the pixel probe at `probe` (`distill decoded-probe`) behind it."""
    if decoder is None:
        return load_latent_probe(probe, device)
    pixel = load_probe(probe, made_by="lingbot-rt distill decoded-probe")
    return DecodedMotionProbe(load_tiny_decoder(decoder), pixel).to(device).eval().requires_grad_(False)
