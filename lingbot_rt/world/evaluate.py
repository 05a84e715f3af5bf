"""`lingbot-rt world eval`: generate held-out clips from their first frame and actions, and
compare them with the renderer's ground truth.

Report (JSON): PSNR and SSIM per frame and per second of rollout, against two references: the copy-the-first-frame baseline and the VAE's own reconstruction (the
ceiling any latent model can reach); action following from the pose probe on generated frames
vs the commanded motion: mean absolute error of yaw (deg) and forward motion (units) per
4-frame step, and direction accuracy (the sign of yaw / forward motion where the command
turns or moves), with the probe's error on the true frames as its floor. A PNG strip shows,
per clip, true frames above generated ones.

PSNR is that of the mean squared error over the clips (and the frames) it summarises, never
a mean of per-clip PSNRs: a clip whose player stands still has frames identical to its first
frame, infinite PSNR for the copy baseline (100 dB once clamped), and one such clip of 32
lifted the baseline's mean by 3 dB. The conventional mean of per-frame PSNRs is reported too
(`psnr_frame_mean*`). Frame 0, the given start image, is left out of every summary.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..model.config import CacheConfig
from ..model.sampler import FewStepSchedule, sample_euler
from ..model.tiny_decoder import TinyDecoder
from ..model.vae import video_to_uint8
from .clips import ClipTensors
from .latents import ConditionedClips, condition_clips
from .metrics import mse, psnr_of_mse, ssim
from .pose_probe import GAP, PoseProbe, relative_motion

FPS = 16
HORIZON_SECONDS = 3                  # the headline: the first 3 s of rollout
YAW_MOVING = math.radians(3.0)       # a step "turns" when the command turns more than this in 4 frames
FORWARD_MOVING = 0.1                 # a step "moves" when the command moves more than this


def _db(mse_value) -> float:
    return round(float(psnr_of_mse(torch.as_tensor(mse_value, dtype=torch.float64))), 3)


def direction_accuracy(estimated: torch.Tensor, commanded: torch.Tensor) -> dict:
    """Motions [N, 4] (right, forward, yaw, pitch; unscaled) -> the fraction of the steps that
    turn (yaw) or move (forward) by the command where the estimate has the command's sign, and
    the forward one over the steps that move back alone (the hardest to follow); None where no
    step does."""
    turning = commanded[:, 2].abs() > YAW_MOVING
    moving = commanded[:, 1].abs() > FORWARD_MOVING
    back = commanded[:, 1] < -FORWARD_MOVING

    def agree(steps, axis):
        return round((estimated[steps, axis].sign() == commanded[steps, axis].sign()).double().mean().item(), 4) \
            if steps.any() else None
    return {"yaw_direction_accuracy": agree(turning, 2), "forward_direction_accuracy": agree(moving, 1),
            "backward_direction_accuracy": agree(back, 1), "turning_steps": int(turning.sum()),
            "moving_steps": int(moving.sum()), "backward_steps": int(back.sum())}


def motions(probe: PoseProbe, frames: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames uint8 [N, F, H, W, 3], poses [N, F, 4, 4] -> the probe's motions and the commanded
    ones between frames GAP apart, [N * (F - GAP), 4] each, float64 on the CPU."""
    estimated = torch.cat([probe.motion(clip) for clip in frames]).double().cpu()
    commanded = torch.cat([relative_motion(p[:-GAP].double(), p[GAP:].double()) for p in poses]).cpu()
    return estimated, commanded


def action_following(probe: PoseProbe, frames: torch.Tensor, poses: torch.Tensor) -> dict:
    """frames uint8 [N, F, H, W, 3], poses [N, F, 4, 4] -> errors and direction accuracy."""
    estimated, commanded = motions(probe, frames, poses)
    accuracy = direction_accuracy(estimated, commanded)
    return {
        "yaw_error_deg": round(math.degrees((estimated[:, 2] - commanded[:, 2]).abs().mean().item()), 3),
        "forward_error": round((estimated[:, 1] - commanded[:, 1]).abs().mean().item(), 4),
        **accuracy,
    }


def image_metrics(frames: torch.Tensor, truth: torch.Tensor) -> dict:
    """uint8 [N, F, H, W, 3] each -> PSNR and SSIM over the first 3 s and all frames (frame 0
    left out), per second (second 0 from frame 1) and per frame."""
    n, f = frames.shape[:2]
    errors = mse(frames, truth).view(n, f).double().cpu()                 # [N, F]
    frame_psnr = psnr_of_mse(errors)
    similarity = ssim(frames, truth).view(n, f).double().cpu()
    horizon = slice(1, 1 + HORIZON_SECONDS * FPS)
    seconds = [slice(max(1, start), start + FPS) for start in range(0, f, FPS) if max(1, start) < f]
    return {"psnr_3s": _db(errors[:, horizon].mean()), "ssim_3s": round(float(similarity[:, horizon].mean()), 4),
            "psnr": _db(errors[:, 1:].mean()), "ssim": round(float(similarity[:, 1:].mean()), 4),
            "psnr_frame_mean_3s": round(float(frame_psnr[:, horizon].mean()), 3),
            "psnr_frame_mean": round(float(frame_psnr[:, 1:].mean()), 3),
            "psnr_per_second": [_db(errors[:, s].mean()) for s in seconds],
            "ssim_per_second": [round(float(similarity[:, s].mean()), 4) for s in seconds],
            "psnr_per_frame": [round(float(v), 2) for v in psnr_of_mse(errors.mean(0))]}


def save_strip(path: Path, truth: torch.Tensor, generated: torch.Tensor, every: int = 8) -> None:
    """Rows: per clip, true frames then generated frames, every `every`-th frame."""
    rows = []
    for t, g in zip(truth, generated):
        rows += [torch.cat(list(t[::every]), 1), torch.cat(list(g[::every]), 1)]
    Image.fromarray(torch.cat(rows, 0).cpu().numpy()).save(path)


Sampler = Callable[[ConditionedClips, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def teacher_sampler(model, *, num_steps: int = 50, shift: float = 3.0, guidance: float = 3.0) -> Sampler:
    """The bidirectional teacher: `num_steps` Euler steps, guidance on prompt + control."""
    def sample(data: ConditionedClips, index, noise, generator):
        return sample_euler(model, noise, data.context[index], data.y[index], data.control[index],
                            num_steps=num_steps, shift=shift, guidance=guidance,
                            uncond_context=data.empty_context.expand(len(index), -1, -1),
                            uncond_control=torch.zeros_like(data.control[index]))
    sample.info = {"kind": "teacher", "steps": num_steps, "shift": shift, "guidance": guidance}
    return sample


def student_sampler(model, schedule: FewStepSchedule, cache_cfg: CacheConfig, action_guidance: float = 0.0) -> Sampler:
    """The block-causal student streaming with its KV cache (`student_rollout`), guided on the
    control by `action_guidance` only (`generate_block`)."""
    from ..distillation.self_forcing import student_rollout

    def sample(data: ConditionedClips, index, noise, generator):
        return student_rollout(model, data.context[index], data.y[index], data.control[index], schedule,
                               cache_cfg, generator, action_guidance=action_guidance)
    sample.info = {"kind": "student", "sigmas": list(schedule.sigmas), "block_frames": cache_cfg.block_frames,
                   "sink_frames": cache_cfg.sink_frames, "window_frames": cache_cfg.window_frames,
                   "full_frames": cache_cfg.recent_frames, "memory_pool": list(cache_cfg.memory_pool),
                   "action_guidance": action_guidance}
    return sample


def dit_flops_per_frame(sample: Sampler, data: ConditionedClips, video_frames: int) -> float:
    """DiT FLOPs per video frame of one clip, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    index = torch.arange(1, device=data.x0.device)
    noise = torch.randn(data.x0[index].shape, device=data.x0.device)
    with FlopCounterMode(display=False) as counter:
        sample(data, index, noise, torch.Generator(data.x0.device).manual_seed(0))
    return counter.get_total_flops() / video_frames


@torch.no_grad()
def evaluate_model(sample: Sampler, vae, text_encoder, clips: ClipTensors, probe: PoseProbe, *, text_len: int,
                   batch_size: int = 8, seed: int = 0, out_dir: str | Path | None = None,
                   decoder: TinyDecoder | None = None) -> dict:
    """Generate every clip of `clips` from its first frame, prompt and poses with `sample` (a
    `teacher_sampler` or `student_sampler`), and score it. With `decoder`, the same latents
    are also decoded by that tiny decoder and scored (`tiny_decoder` in the report). Returns
    the report (also written to out_dir)."""
    device = clips.frames.device
    data = condition_clips(clips, vae, text_encoder, text_len, device)
    generator = torch.Generator(device).manual_seed(seed)
    generated, recon, tiny = [], [], []
    for start in tqdm(range(0, len(clips), batch_size), desc=f"sample ({sample.info['kind']})", unit="batch",
                      leave=False):
        index = torch.arange(start, min(start + batch_size, len(clips)), device=device)
        noise = torch.randn(data.x0[index].shape, generator=generator, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            latents = sample(data, index, noise, generator)
        generated.append(video_to_uint8(vae.decode(latents.float())))
        recon.append(video_to_uint8(vae.decode(data.x0[index].float())))
        if decoder is not None:
            tiny.append(video_to_uint8(decoder.stream_decoder().decode(latents.float())))
    generated, recon = torch.cat(generated), torch.cat(recon)
    truth = clips.frames
    copy_first = truth[:, :1].expand_as(truth)
    report = {
        "clips": len(clips), "frames": clips.num_frames, "resolution": list(truth.shape[2:4]),
        "sampler": {**sample.info, "seed": seed},
        "dit_flops_per_frame": dit_flops_per_frame(sample, data, clips.num_frames),
        "model": image_metrics(generated, truth),
        "copy_first_frame": image_metrics(copy_first, truth),
        "vae_reconstruction": image_metrics(recon, truth),
        "action_following": {"model": action_following(probe, generated, clips.poses),
                             "true_frames": action_following(probe, truth, clips.poses)},
    }
    if decoder is not None:
        tiny = torch.cat(tiny)
        report["tiny_decoder"] = {"model": image_metrics(tiny, truth),
                                  "against_vae_decode": image_metrics(tiny, generated),
                                  "action_following": action_following(probe, tiny, clips.poses)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        save_strip(out / "eval_strip.png", truth[:4], generated[:4])
        torch.save(generated[:4].cpu(), out / "generated_first4.pt")
    return report
