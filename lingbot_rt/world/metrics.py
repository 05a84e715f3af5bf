"""Image metrics against the renderer's ground truth: PSNR and SSIM per frame.

SSIM is Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2,
C2 = (0.03 L)^2, computed per channel on [0, 1] images and averaged (what skimage's
`structural_similarity(..., gaussian_weights=True, channel_axis=-1, data_range=1)` computes,
up to its border handling: we use valid windows only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [..., H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0


def mse(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame mean squared error of uint8 frames [..., H, W, 3] on [0, 1] (flattened to [N])."""
    a, b = _as_float(frames), _as_float(reference)
    return (a - b).square().flatten(1).mean(1)


def psnr_of_mse(mse_value: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a mean squared error on [0, 1]; identical frames (0) read as 100 dB."""
    return 10 * torch.log10(1.0 / mse_value.clamp_min(1e-10))


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of uint8 frames [..., H, W, 3] (flattened to [N])."""
    return psnr_of_mse(mse(frames, reference))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of uint8 frames [..., H, W, 3] (flattened to [N])."""
    a, b = _as_float(frames), _as_float(reference)
    window = _gaussian_window().to(a.device)[None, None].repeat(3, 1, 1, 1)

    def blur(x):
        return F.conv2d(x, window, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1)
