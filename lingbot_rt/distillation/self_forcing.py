"""The student's training rollout (Self-Forcing): the student generates whole clips block by
block with its own KV cache, exactly as it streams, so DMD trains it on its own outputs.

Per rollout (one batch of clips: start image, prompt and camera path from the data):
  1. a KV cache holding the batch, prompts written once (`start_sessions`);
  2. one exit step s, drawn per rollout and shared by every block (and, distributed, every
     rank: draw it from a generator seeded the same on all ranks);
  3. per block: the 4-step loop of `rollout.generate_block` stopped at step s; only that pass
     keeps the autograd graph; the block's x0 is committed by a clean pass without gradient.
Returns the clip's latents [B, 16, F, h, w]; a block's gradient reaches only its exit pass.
"""
from __future__ import annotations

import torch

from ..model.config import CacheConfig
from ..model.dit import CausalWanModel
from ..model.rollout import generate_block
from ..model.sampler import FewStepSchedule


def student_rollout(student: CausalWanModel, context: torch.Tensor, y: torch.Tensor, control: torch.Tensor,
                    schedule: FewStepSchedule, cache_cfg: CacheConfig, generator: torch.Generator,
                    exit_step: int | None = None) -> torch.Tensor:
    """Generate clips [B, 16, F, h, w] (F = y's latent frames) with the student streaming.
    `exit_step` None = the full schedule (inference); gradients as described above when
    enabled by the caller."""
    batch, _, num_frames, h, w = y.shape
    cache = student.new_cache(cache_cfg, batch, (h, w), dtype=torch.float32)
    slots = list(range(batch))
    with torch.no_grad():
        student.start_sessions(cache, slots, context)
    blocks = []
    for start in range(0, num_frames, cache_cfg.block_frames):
        frames = slice(start, min(start + cache_cfg.block_frames, num_frames))
        noise = torch.randn((batch, student.cfg.out_dim, frames.stop - start, h, w), generator=generator,
                            device=y.device)
        blocks.append(generate_block(student, cache, slots, noise, schedule, y=y[:, :, frames],
                                     control=control[:, :, frames], generator=generator, exit_step=exit_step))
    return torch.cat(blocks, 2)
