"""Tiny random models and synthetic conditioned clips for the distillation tests (CPU, seconds)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lingbot_rt.distillation.config import StudentSchedule
from lingbot_rt.model.checkpoint import save_model
from lingbot_rt.model.config import model_config
from lingbot_rt.model.dit import CausalWanModel
from lingbot_rt.world.latents import ConditionedClips

NUM_FRAMES, LATENT_HW = 6, (4, 4)
# 2 blocks of 3 latent frames; the window is as long as the clip (as the world's 21 frames are)
SCHEDULE = StudentSchedule(indices=(0, 500), teacher_steps=4, guidance=2.0, sink_frames=1, window_frames=3)


def tiny_model(seed: int) -> CausalWanModel:
    torch.manual_seed(seed)
    model = CausalWanModel(model_config("tiny"))
    torch.nn.init.normal_(model.head.head.weight, std=0.02)        # upstream zero-inits the head
    return model


def save_tiny(path: Path, seed: int) -> Path:
    save_model(tiny_model(seed), path)
    return path


def synthetic_clips(num: int = 4, seed: int = 0, frames: int = NUM_FRAMES) -> ConditionedClips:
    cfg = model_config("tiny")
    g = torch.Generator().manual_seed(seed)
    shape = (num, 16, frames, *LATENT_HW)
    y = torch.zeros(num, 20, frames, *LATENT_HW)
    y[:, :4, 0] = 1.0
    y[:, 4:, 0] = torch.randn(num, 16, *LATENT_HW, generator=g)
    return ConditionedClips(
        x0=torch.randn(shape, generator=g).to(torch.bfloat16), y=y.to(torch.bfloat16),
        control=torch.randn(num, cfg.control_channels, frames, *LATENT_HW, generator=g).to(torch.bfloat16),
        context=torch.randn(num, cfg.text_len, cfg.text_dim, generator=g).to(torch.bfloat16),
        empty_context=torch.zeros(cfg.text_len, cfg.text_dim, dtype=torch.bfloat16))


def load_clips(device: torch.device) -> ConditionedClips:
    """A DMDJob's `load_data`: the synthetic clips on this rank's device (module level, so
    worker processes can unpickle it)."""
    clips = synthetic_clips(4)
    return dataclasses.replace(clips, **{f.name: getattr(clips, f.name).to(device) for f in dataclasses.fields(clips)
                                          if getattr(clips, f.name) is not None})
