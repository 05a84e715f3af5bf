"""3D rotary position embedding of the Wan DiT.

Each head's `head_dim / 2` rotation pairs are split [c - 2(c//3), c//3, c//3] between the
time, height and width axes (22/21/21 for head_dim 128), theta = 10000, pairs are adjacent
channels (upstream views the last dim as complex numbers). Upstream precomputes a table of
1024 positions per axis; we evaluate the same formula for any integer position, so the table
end is no limit here. Streaming keeps positions small anyway (see `kv_cache.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis (time, height, width)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _inv_freq(pairs: int, theta: float, device) -> torch.Tensor:
    # Upstream `rope_params(1024, 2 * pairs)`: theta ** (-2i / (2 * pairs)), in float64.
    dim = 2 * pairs
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


@dataclass
class Rotary:
    """cos/sin of every token's rotation, [B or 1, L, head_dim/2] float32."""

    cos: torch.Tensor
    sin: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, L, H, D]; computed in float32, returned as float32 (as upstream)."""
        b, n, h, d = x.shape
        pairs = x.float().reshape(b, n, h, d // 2, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        cos, sin = self.cos.unsqueeze(2), self.sin.unsqueeze(2)  # [B, L, 1, D/2]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.reshape(b, n, h, d)

    @staticmethod
    def cat(parts: list["Rotary"]) -> "Rotary":
        return Rotary(torch.cat([p.cos for p in parts], 1), torch.cat([p.sin for p in parts], 1))


def rotary_for_frames(frame_positions: torch.Tensor, grid_hw: tuple[int, int], head_dim: int,
                      theta: float = 10000.0) -> Rotary:
    """Rotations of the tokens of whole latent frames.

    frame_positions: [B, F] integer time position of each frame (may differ per sample).
    grid_hw: (H, W) patch grid of a frame. Tokens are ordered (frame, h, w) as upstream's
    `flatten(2)` of the patch-embedded video. Returns cos/sin [B, F*H*W, head_dim/2].
    """
    h, w = grid_hw
    device = frame_positions.device
    pairs_t, pairs_h, pairs_w = axis_pairs(head_dim)
    b, f = frame_positions.shape
    ang_t = frame_positions.to(torch.float64).unsqueeze(-1) * _inv_freq(pairs_t, theta, device)
    ang_h = torch.arange(h, dtype=torch.float64, device=device).unsqueeze(-1) * _inv_freq(pairs_h, theta, device)
    ang_w = torch.arange(w, dtype=torch.float64, device=device).unsqueeze(-1) * _inv_freq(pairs_w, theta, device)
    angles = torch.cat([
        ang_t.view(b, f, 1, 1, pairs_t).expand(b, f, h, w, pairs_t),
        ang_h.view(1, 1, h, 1, pairs_h).expand(b, f, h, w, pairs_h),
        ang_w.view(1, 1, 1, w, pairs_w).expand(b, f, h, w, pairs_w),
    ], dim=-1).reshape(b, f * h * w, -1)
    return Rotary(torch.cos(angles).float(), torch.sin(angles).float())


def time_shift_rotary(shifts: torch.Tensor, head_dim: int, theta: float = 10000.0) -> Rotary:
    """The rotation that moves keys roped at frame p to frame p + shift: the time pairs turn
    by shift * their frequency, the height and width pairs stay. shifts [B] integer ->
    cos/sin [B, 1, head_dim/2] (broadcast over the tokens)."""
    pairs_t, pairs_h, pairs_w = axis_pairs(head_dim)
    angles = shifts.to(torch.float64).unsqueeze(-1) * _inv_freq(pairs_t, theta, shifts.device)
    angles = torch.cat([angles, angles.new_zeros(len(shifts), pairs_h + pairs_w)], dim=-1).unsqueeze(1)
    return Rotary(torch.cos(angles).float(), torch.sin(angles).float())
