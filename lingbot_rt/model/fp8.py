"""FP8 (e4m3) linears for inference through `torch._scaled_mm`, rowwise-scaled.

Weights are quantised once, per output channel (scale = amax / 448); activations per row
(token) at every call. `torch._scaled_mm` multiplies the e4m3 operands on the tensor cores
(Hopper: about 1.6-1.8x the bf16 GEMM rate measured here) and applies both scales, giving
bf16. Only the DiT blocks' large linears are converted; the embeddings, head, norms and
attention keep their dtype. A quality check against the bf16 model is part of
`benchmarks/bench_fps.py --fp8`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max          # 448
MIN_SCALE = 1e-12                        # an all-zero row quantises to zeros, not NaN


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scale [M, 1]) with x ~= q * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=MIN_SCALE) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Float8Linear(nn.Module):
    """y = x W^T + b with W and x in e4m3 (per-row scales), y in `out_dtype`."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"FP8 GEMMs need in/out features divisible by 16, got "
                             f"{linear.in_features} -> {linear.out_features}")
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)              # [out, in]
        self.register_buffer("weight_scale", scale.t().contiguous())   # [1, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(out_dtype))
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, scale = _rowwise(x.reshape(-1, x.shape[-1]))
        # mat2 must be column-major: the transpose of the row-major [out, in] weight is.
        y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             out_dtype=self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*lead, -1)


def convert_to_fp8(blocks: nn.Module, out_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every nn.Linear under `blocks` (the DiT's `model.blocks`) by a Float8Linear, in
    place. Returns how many were converted."""
    targets = [(parent, name, child) for parent in blocks.modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, Float8Linear(child, out_dtype))
    return len(targets)
