"""The student's training rollout (Self-Forcing): the student generates whole clips block by
block with its own KV cache, exactly as it streams, so DMD trains it on its own outputs.

Per rollout (one batch of clips: start image, prompt and camera path from the data):
  1. a KV cache holding the batch, prompts written once (`start_sessions`);
  2. one exit step s, drawn per rollout and shared by every block (and, distributed, every
     rank: draw it from a generator seeded the same on all ranks);
  3. per block: the 4-step loop of `rollout.generate_block` stopped at step s; only that pass
     keeps the autograd graph; the block's x0 is committed by a clean pass without gradient,
     except the last block's, whose K/V no pass reads.
Returns the clip's latents [B, 16, F, h, w]; a block's gradient reaches only its exit pass.
A long-horizon rollout (`long_horizon.py`) streams its first `grad_from` frames as inference
does (the full schedule, no gradient) and only the window after them as above.

Activation checkpointing recomputes a block's exit pass in backward, reading the cache again:
the rollout must not overwrite a slot a gradient-carrying pass read (`check_recompute_safe`).
With the last commit skipped, a clip of 21 latent frames in blocks of 3 commits 18 frames,
which 3 sink + 15 window slots hold without evicting any.
"""
from __future__ import annotations

import torch

from ..model.config import CacheConfig
from ..model.dit import CausalWanModel
from ..model.rollout import generate_block
from ..model.sampler import FewStepSchedule


def rollout_trains(name: str) -> bool:
    """Whether the rollout gives the student's parameter `name` a gradient: not the text path
    (text embedding, cross-attention K/V projections), which acts only through
    `start_sessions`, run once per rollout without gradient. The trainer freezes it (no
    gradients or optimiser states; a checkpoint then holds a state for every trained tensor)."""
    return not name.startswith("text_embedding.") and not any(f"cross_attn.{p}." in name for p in ("k", "v", "norm_k"))


def check_recompute_safe(cache_cfg: CacheConfig, num_frames: int) -> None:
    """Refuse a rollout whose commits evict frames (the last block is not committed): a
    checkpointed block recomputed in backward would read the overwritten slots and give
    wrong gradients."""
    last_block = (num_frames - 1) % cache_cfg.block_frames + 1
    committed = num_frames - last_block
    if committed > cache_cfg.committed_without_rewrite:
        raise ValueError(f"activation checkpointing needs the rollout's committed frames ({committed} of "
                         f"{num_frames}) to fit the KV cache without rewriting a slot (at most "
                         f"{cache_cfg.committed_without_rewrite}: {cache_cfg.sink_frames} sink + "
                         f"{cache_cfg.window_frames} window frames, {cache_cfg.recent_frames} of them at full "
                         "resolution): a recomputed block would read slots overwritten after its forward. "
                         "Shorten the clips or widen the window.")


def student_rollout(student: CausalWanModel, context: torch.Tensor, y: torch.Tensor, control: torch.Tensor,
                    schedule: FewStepSchedule, cache_cfg: CacheConfig, generator: torch.Generator,
                    exit_step: int | None = None, cache_dtype: torch.dtype = torch.float32,
                    grad_from: int = 0, action_guidance: float = 0.0) -> torch.Tensor:
    """Generate clips [B, 16, F, h, w] (F = y's latent frames) with the student streaming.
    `exit_step` None = the full schedule (inference); gradients as described above when
    enabled by the caller, for the blocks from latent frame `grad_from` (a block boundary) on;
    the blocks before it take the full schedule without gradient. `cache_dtype`: the K/V
    cache's, normally the compute dtype (bf16 under autocast, where K/V are computed in bf16:
    what inference stores). `action_guidance`: inference only (`generate_block`)."""
    batch, _, num_frames, h, w = y.shape
    if grad_from % cache_cfg.block_frames or not 0 <= grad_from < num_frames:
        raise ValueError(f"grad_from must be a block boundary (a multiple of {cache_cfg.block_frames}) before "
                         f"the rollout's {num_frames} frames, got {grad_from}")
    cache = student.new_cache(cache_cfg, batch, (h, w), dtype=cache_dtype)
    slots = list(range(batch))
    with torch.no_grad():
        student.start_sessions(cache, slots, context)
    blocks = []
    for start in range(0, num_frames, cache_cfg.block_frames):
        frames = slice(start, min(start + cache_cfg.block_frames, num_frames))
        noise = torch.randn((batch, student.cfg.out_dim, frames.stop - start, h, w), generator=generator,
                            device=y.device)
        commit = "clean" if frames.stop < num_frames else "none"
        context_block = start < grad_from
        with torch.set_grad_enabled(torch.is_grad_enabled() and not context_block):
            blocks.append(generate_block(student, cache, slots, noise, schedule, y=y[:, :, frames],
                                         control=control[:, :, frames], generator=generator, commit=commit,
                                         exit_step=None if context_block else exit_step,
                                         action_guidance=action_guidance))
    return torch.cat(blocks, 2)
