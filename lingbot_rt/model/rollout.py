"""The block loop, written once: denoise a block of latent frames in a few steps against the
KV cache, then commit it. The streaming pipeline, the server's DiT stage and the
distillation rollouts all call `generate_block`.

Per block (Self-Forcing / LingBot-World-Fast, consistency-style sampling):
  1. x = noise at sigma_0.
  2. For each step k: v = DiT(x, t_k) reading the cache (no write); x0 = x - sigma_k * v;
     unless last: x = (1 - sigma_{k+1}) * x0 + sigma_{k+1} * fresh noise.
  3. Commit: a t = 0 pass on x0 writes the block's K/V ("clean", upstream's 5th forward), or
     the last denoising pass already wrote them ("last_step": 4 forwards, vllm-omni PR #7816),
     or nothing is written ("none": the last block of a training rollout, read by no one).

Action guidance (`action_guidance` g > 0, inference): each denoising pass is run twice, with
the block's control and with it zeroed (the teacher's null control), reading the same cache,
and v = v_control + g (v_control - v_null): classifier-free guidance on the current block's
camera motion only, the history in the cache kept as generated. It costs one more read-only pass
per step (9 forwards per block instead of 5).

Training (Self-Forcing) stops a block early at a random `exit_step` and keeps the autograd
graph of that one pass only: the earlier passes and the commit run without gradient, so no
gradient crosses blocks through the cache.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .dit import CausalWanModel
from .kv_cache import KVCache
from .sampler import FewStepSchedule

COMMIT_MODES = ("clean", "last_step")      # how a stream commits; training rollouts also skip ("none")
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape, generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Unit Gaussian noise [B, ...]; with one generator per sample, sample i draws from its own,
    so a session's noise does not depend on who else is in the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])


def generate_block(model: CausalWanModel, cache: KVCache, slot_ids: list[int], noise: torch.Tensor,
                   schedule: FewStepSchedule, *, y: torch.Tensor | None = None,
                   control: torch.Tensor | None = None, generator: Generators = None,
                   commit: str = "clean", exit_step: int | None = None,
                   action_guidance: float = 0.0) -> torch.Tensor:
    """Denoise one block per session and commit it. noise [B, 16, Fb, H, W] (unit Gaussian);
    returns the clean latents x0 [B, 16, Fb, H, W] float32. `generator` draws the re-noising:
    one for the batch, or one per session (see `randn`). `exit_step` (training): return the x0
    of that step instead of the last one; only that pass records gradients (when enabled).
    `action_guidance`: guidance on the block's control (module docstring; needs `control`)."""
    if action_guidance < 0:
        raise ValueError(f"action_guidance must be >= 0, got {action_guidance}")
    if action_guidance and control is None:
        raise ValueError("action_guidance needs the block's control")
    if commit not in (*COMMIT_MODES, "none"):
        raise ValueError(f"commit must be one of {(*COMMIT_MODES, 'none')}, got {commit!r}")
    last = len(schedule.sigmas) - 1
    if exit_step is not None and not (0 <= exit_step <= last and (commit != "last_step" or exit_step == last)):
        raise ValueError(f"exit_step must be in [0, {last}] (and {last} with commit='last_step'), got {exit_step}")
    stop = last if exit_step is None else exit_step
    batch, device = noise.shape[0], noise.device
    grad = torch.is_grad_enabled()
    x = noise.float()
    for step_index in range(stop + 1):
        sigma, t = schedule.sigmas[step_index], schedule.timesteps[step_index]
        commit_now = commit == "last_step" and step_index == last
        timestep = torch.full((batch,), t, device=device)
        with torch.set_grad_enabled(grad and step_index == stop):
            if action_guidance:      # the null pass first: the control pass may commit
                v_null = model.forward_block(x, timestep, cache, slot_ids, y=y, control=torch.zeros_like(control))
            v = model.forward_block(x, timestep, cache, slot_ids, y=y, control=control, commit=commit_now)
            if action_guidance:
                v = v + action_guidance * (v - v_null)
            x0 = x - sigma * v
        if step_index < stop:
            next_sigma = schedule.sigmas[step_index + 1]
            fresh = randn(x.shape, generator, device, x.dtype)
            x = (1 - next_sigma) * x0 + next_sigma * fresh
    if commit == "clean":
        with torch.no_grad():
            model.forward_block(x0.detach(), torch.zeros(batch, device=device), cache, slot_ids, y=y,
                                control=control, commit=True)
    return x0
