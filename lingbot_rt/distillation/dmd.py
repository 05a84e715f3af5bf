"""Distribution Matching Distillation losses (DMD, Yin et al. 2024; DMD2; as Self-Forcing
implements them in `model/dmd.py`).

The generator's samples x (the student's rollouts) are noised to one level per clip,
x_t = (1 - s) x + s eps, and denoised by two bidirectional models over the whole clip:
* the real score: the frozen teacher with guidance w on prompt + control,
  x0_real = x0_u + w (x0_c - x0_u);
* the fake score: the critic, trained to denoise the generator's own samples.
The KL gradient (DMD eq. 7) is proportional to x0_fake - x0_real; Self-Forcing normalises it
per clip by mean |x - x0_real| (DMD eq. 8's weighting) and applies it through the surrogate
loss 0.5 ||x - sg(x - grad)||^2, whose gradient in x is exactly `grad`.
The critic learns by flow matching on stop-gradient generator samples.

Both bidirectional models read a batch's `Conditions`: a data clip's own (`Conditions.of_clips`),
or, in long-horizon DMD, those of a window of a longer rollout (`long_horizon.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.dit import CausalWanModel
from ..model.sampler import NUM_TRAIN_TIMESTEPS, shift_sigma
from ..world.latents import ConditionedClips


@dataclass(frozen=True)
class Conditions:
    """What the teacher and the critic read for a batch of B clips of F latent frames."""

    context: torch.Tensor         # [B, text_len, text_dim]
    y: torch.Tensor               # [B, 20, F, h, w]: the I2V condition (mask, image latents)
    control: torch.Tensor         # [B, C, F, h, w]
    empty_context: torch.Tensor   # [text_len, text_dim]: the dropped prompt (guidance)

    @classmethod
    def of_clips(cls, data: ConditionedClips, index: torch.Tensor) -> Conditions:
        return cls(data.context[index], data.y[index], data.control[index], data.empty_context)


def sample_sigma(batch: int, shift: float, low: float, high: float, generator: torch.Generator,
                 device) -> torch.Tensor:
    """One noise level per clip: shift(U(0, 1)) clamped to [low, high]."""
    return shift_sigma(torch.rand(batch, generator=generator, device=device), shift).clamp(low, high)


def noised(x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1, 1)
    return (1 - s) * x + s * noise


def predict_x0(model: CausalWanModel, x_t: torch.Tensor, sigma: torch.Tensor, context, y, control) -> torch.Tensor:
    v = model(x_t, sigma * NUM_TRAIN_TIMESTEPS, context, y, control)
    return x_t - sigma.view(-1, 1, 1, 1, 1) * v


@torch.no_grad()
def guided_x0(teacher: CausalWanModel, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditions,
              guidance: float) -> torch.Tensor:
    """The real score's x0: the teacher, guided on prompt + control (one batched forward)."""
    batch = x_t.shape[0]
    context = torch.cat([cond.context, cond.empty_context.expand(batch, -1, -1)])
    control = torch.cat([cond.control, torch.zeros_like(cond.control)])
    x0 = predict_x0(teacher, torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), context,
                    torch.cat([cond.y, cond.y]), control)
    x0_cond, x0_uncond = x0.float().chunk(2)
    return x0_uncond + guidance * (x0_cond - x0_uncond)


def dmd_loss(x: torch.Tensor, teacher: CausalWanModel, critic: CausalWanModel, cond: Conditions,
             sigma: torch.Tensor, noise: torch.Tensor, guidance: float, first_frame: int = 0) -> tuple[torch.Tensor, dict]:
    """The generator's loss on its samples x [B, 16, F, h, w] (with their graph). Both scores
    read the whole clip; the loss (and its normalisation) covers latent frames `first_frame:`
    (1 for a long-horizon window, whose first latent the condition gives the scores)."""
    x_t = noised(x.detach(), sigma, noise)
    x0_real = guided_x0(teacher, x_t, sigma, cond, guidance)[:, :, first_frame:]
    with torch.no_grad():
        x0_fake = predict_x0(critic, x_t, sigma, cond.context, cond.y, cond.control).float()[:, :, first_frame:]
    x = x[:, :, first_frame:]
    x64 = x.double()
    weight = (x64 - x0_real.double()).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    grad = torch.nan_to_num((x0_fake.double() - x0_real.double()) / weight)
    loss = 0.5 * F.mse_loss(x64, (x64 - grad).detach(), reduction="mean")
    return loss.float(), {"dmd_grad_norm": grad.norm().detach() / x.shape[0] ** 0.5,
                          "real_fake_gap": (x0_fake - x0_real).abs().mean().detach()}


def critic_loss(critic: CausalWanModel, x: torch.Tensor, cond: Conditions, sigma: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
    """Flow matching on the generator's samples (stop-gradient): v regressed onto noise - x."""
    x = x.detach().float()
    v = critic(noised(x, sigma, noise), sigma * NUM_TRAIN_TIMESTEPS, cond.context, cond.y, cond.control)
    return F.mse_loss(v.float(), noise - x)
