"""Few-step flow-matching schedules.

Flow matching as in Wan: x_t = (1 - sigma) x_0 + sigma * eps, the DiT predicts v = eps - x_0
at timestep t = sigma * 1000. LingBot-World-Fast picks 4 entries of a 1000-step schedule
built like Wan's `FlowUniPCMultistepScheduler.set_timesteps(1000, shift)`:
sigma_i = shift * s / (1 + (shift - 1) * s) with s = linspace(0.999, 0, 1001)[i], and
t_i = int64(sigma_i * 1000). Indices [0, 179, 358, 679] at shift 10 give t = 999, 978, 947, 825
(upstream `image2video_fast.py`). Upstream reads sigma for x0-recovery and re-noising at
neighbouring duplicate indices of its table (0.1% off); we use the nominal entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
SIGMA_MAX = 1.0 - 1.0 / NUM_TRAIN_TIMESTEPS   # first entry of Wan's training sigma table
FAST_INDICES = (0, 179, 358, 679)
FAST_SHIFT = 10.0


def shift_sigma(sigma: float, shift: float) -> float:
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@dataclass(frozen=True)
class FewStepSchedule:
    """The denoising steps of one block: sigma and the timestep fed to the DiT, per step."""

    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]

    def __post_init__(self):
        if not self.sigmas or len(self.sigmas) != len(self.timesteps):
            raise ValueError("a schedule needs one timestep per sigma, at least one step")
        if any(b >= a for a, b in zip(self.sigmas, self.sigmas[1:])) or not 0 < self.sigmas[-1] <= 1:
            raise ValueError(f"sigmas must decrease within (0, 1], got {self.sigmas}")

    @classmethod
    def from_indices(cls, indices=FAST_INDICES, shift: float = FAST_SHIFT,
                     num_steps: int = NUM_TRAIN_TIMESTEPS) -> "FewStepSchedule":
        """Entries `indices` of a `num_steps`-step shifted schedule (LingBot-World-Fast's by default)."""
        if any(not 0 <= i < num_steps for i in indices):
            raise ValueError(f"schedule indices {indices} must lie in [0, {num_steps})")
        sigmas = [shift_sigma(SIGMA_MAX * (1 - i / num_steps), shift) for i in indices]
        return cls(tuple(sigmas), tuple(float(int(s * NUM_TRAIN_TIMESTEPS)) for s in sigmas))


def euler_sigmas(num_steps: int, shift: float) -> list[float]:
    """The `num_steps + 1` sigmas of a shifted uniform Euler schedule, from 1 down to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [shift_sigma(1.0 - i / num_steps, shift) for i in range(num_steps + 1)]


def ode_grid(num_steps: int, shift: float) -> list[float]:
    """The `num_steps + 1` sigmas of the teacher ODE the distillation records: entry i is
    shift(SIGMA_MAX (1 - i / num_steps)), the last is 0. Entry i equals entry
    i * 1000 / num_steps of `FewStepSchedule.from_indices`' table, so a student whose schedule
    indices are multiples of 1000 / num_steps steps exactly through recorded points."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [shift_sigma(SIGMA_MAX * (1.0 - i / num_steps), shift) for i in range(num_steps)] + [0.0]


def euler_trajectory(model, noise, context, y, control, sigmas, *, record: tuple[int, ...] = (),
                     guidance: float = 1.0, uncond_context=None, uncond_control=None,
                     attention: str = "bidirectional") -> list[torch.Tensor]:
    """Integrate the flow ODE along `sigmas` (decreasing, ending at 0) from noise
    [B, 16, F, H, W] with the whole-clip `model.forward`: Euler steps x += (sigma_next - sigma) v.
    With guidance != 1, v = v_u + guidance * (v_c - v_u), the unconditional pass taking
    `uncond_context` / `uncond_control` (the dropped prompt and control of training).
    Returns x at each grid index in `record` (x at index i is at sigmas[i]), then the end point."""
    if any(not 0 <= i < len(sigmas) - 1 for i in record):
        raise ValueError(f"record indices {record} must lie in [0, {len(sigmas) - 1})")
    x = noise.float()
    guided = guidance != 1.0
    if guided and uncond_context is None:
        raise ValueError("guidance needs uncond_context (and uncond_control if the model is steered)")
    recorded = []
    for index, (sigma, next_sigma) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        if index in record:
            recorded.append(x.clone())
        t = torch.full((x.shape[0],), sigma * NUM_TRAIN_TIMESTEPS, device=x.device)
        if guided:
            v_both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, uncond_context]),
                           None if y is None else torch.cat([y, y]),
                           None if control is None else torch.cat([control, uncond_control]), attention=attention)
            v_cond, v_uncond = v_both.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        else:
            v = model(x, t, context, y, control, attention=attention)
        x = x + (next_sigma - sigma) * v
    return recorded + [x]


def sample_euler(model, noise, context, y, control, *, num_steps: int = 50, shift: float = 3.0,
                 guidance: float = 1.0, uncond_context=None, uncond_control=None, attention: str = "bidirectional"):
    """The teacher's sampler: `euler_trajectory` over `euler_sigmas(num_steps, shift)`; returns
    the clean latents."""
    return euler_trajectory(model, noise, context, y, control, euler_sigmas(num_steps, shift), guidance=guidance,
                            uncond_context=uncond_context, uncond_control=uncond_control, attention=attention)[-1]
