"""FP8 (e4m3) attention for the streaming self-attention: our own Triton kernel.

PyTorch's SDPA has no FP8 kernel on any backend (`benchmarks/attention_fp8.py`), and attention
is over half of a streaming pass (a block's queries over sink + window + block keys), so this
is the one hand-written kernel of the model. Forward only, unmasked (the streaming passes whose
cache rows are all filled alike: `kv_cache.CacheView.read_tokens`), inference only.

Scales: queries per row (quantised in the kernel from the bf16 tile, so free), keys and values
per (batch, head): amax over tokens and channels (e4m3 is floating point: the scale only keeps
the largest value in range). Scores are formed in FP8, rescaled to log2 units in fp32, and the
online softmax runs in fp32; the probabilities, scaled by 448 (so that the row's largest is
e4m3's largest) go back to FP8 for the product with V, accumulated in fp32. Values are stored
transposed ([B, H, D, L]): Hopper's FP8 tensor-core product takes both operands K-major.

    fp8_attention(q, k, v)        # q [B, Lq, H, D], k/v [B, Lk, H, D] bf16 -> [B, Lq, H, D] bf16
"""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from .fp8 import FP8, FP8_MAX, MIN_SCALE

try:
    import triton
    import triton.language as tl
except ImportError:                      # the CPU build of torch comes without Triton
    triton = None

HEAD_DIMS = (64, 128)                    # the head sizes the kernel is built for (Wan: 128; the world: 64)
LOG2_E = 1.4426950408889634
VALUE_ROW_ALIGN = 16                     # elements between the starts of v8's rows: a multiple of this


def available(device: torch.device | str) -> bool:
    """Whether `fp8_attention` runs on `device`: Triton present and a CUDA GPU with FP8 tensor
    cores (compute capability 8.9+), or Triton's interpreter (TRITON_INTERPRET=1) on any device."""
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return _interpreting()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def quantize_kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """k, v [B, L, H, D] -> k8 [B, H, L, D], v8 [B, H, D, L] (e4m3) and their float32 scales
    [B, H] (x ~= x8 * scale). v8's rows are stored VALUE_ROW_ALIGN apart (a view of a padded
    buffer): the kernel's loads of them are vectorised only when it knows that alignment
    (measured: L = 32760, rows unpadded, 2.5x slower)."""
    def scale_of(x):
        return x.abs().amax(dim=(1, 3)).float().clamp(min=MIN_SCALE) / FP8_MAX

    length = v.shape[1]
    k_scale, v_scale = scale_of(k), scale_of(v)
    k8 = (k.float() / k_scale[:, None, :, None]).to(FP8).transpose(1, 2).contiguous()
    padded = -(-length // VALUE_ROW_ALIGN) * VALUE_ROW_ALIGN
    # padded before the cast (Inductor, torch 2.11, cannot build the e4m3 zero a padded e4m3 copy needs)
    v_t = (v.float() / v_scale[:, None, :, None]).permute(0, 2, 3, 1)
    v8 = F.pad(v_t, (0, padded - length)).to(FP8)[..., :length]
    return k8, v8, k_scale, v_scale


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming what the kernel cannot take."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"fp8_attention takes q [B, Lq, H, D] and k, v [B, Lk, H, D] of one shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, heads or head size")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"fp8_attention is built for head sizes {HEAD_DIMS}, got {q.shape[-1]}")
    if q.requires_grad or k.requires_grad or v.requires_grad:
        raise ValueError("fp8_attention is inference only (no backward)")
    if q.stride(-1) != 1:
        raise ValueError("fp8_attention needs q contiguous in its last dimension")


@functools.cache
def _compiled_quantize_kv():
    return torch.compile(quantize_kv, dynamic=False)      # its reads, scales and casts fused


def quantize_kv_fast(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`quantize_kv`, compiled on CUDA (eager: 5.4 ms for the 14B's 40 heads of 32760 keys)."""
    return _compiled_quantize_kv()(k, v) if k.is_cuda else quantize_kv(k, v)


@torch.compiler.disable
def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v with FP8 products: q [B, Lq, H, D], k/v [B, Lk, H, D] -> the
    output [B, Lq, H, D] in q's dtype. Unmasked, no grad. Outside the compiled blocks' graphs
    (Inductor fails to compile the kernel into them: "CompilationError at 22:24", torch 2.11):
    the quantisation is compiled on its own."""
    if triton is None:
        raise RuntimeError("fp8_attention needs Triton (pip install triton; a CUDA build of torch brings it)")
    check_inputs(q, k, v)
    return torch.ops.lingbot_rt.fp8_attention_quantized(q, *quantize_kv_fast(k, v))


if triton is not None:
    @triton.jit
    def _attend_tile(acc, l_i, m_i, q8, row_scale, k_base, v_base, start, Lk, stride_kl, stride_vd,
                     D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
        cols = start + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        k_ptrs = k_base + cols[None, :].to(tl.int64) * stride_kl + dims[:, None]   # [D, BLOCK_N]
        v_ptrs = v_base + dims[None, :].to(tl.int64) * stride_vd + cols[:, None]   # [BLOCK_N, D], K-major
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[None, :] < Lk, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < Lk, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q8, k) * row_scale[:, None]                  # scores in log2 units, fp32
        if MASKED:
            s = tl.where(cols[None, :] < Lk, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None]) * 448.0            # the row's largest at e4m3's largest
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.float8e4nv), v, acc * alpha[:, None])
        return acc, l_i, m_new

    # (BLOCK_M, BLOCK_N, warps, stages) tried on the first call of each shape; the interpreter
    # (no GPU to time them on) takes the first
    _CONFIGS = ((128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 4, 3), (128, 128, 8, 4), (64, 128, 4, 3),
                (128, 256, 8, 2), (128, 64, 8, 4), (256, 64, 8, 3))

    @triton.autotune(configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                              for m, n, w, s in _CONFIGS[:1 if _interpreting() else None]],
                     key=["Lq", "Lk", "D"])
    @triton.jit
    def _fp8_attention_kernel(Q, K8, V8, KS, VS, Out, sm_scale_log2, Lq, Lk,
                              stride_qb, stride_ql, stride_qh, stride_kb, stride_kh, stride_kl,
                              stride_vb, stride_vh, stride_vd, stride_ob, stride_ol, stride_oh,
                              H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // H, bh % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        row_ok = rows[:, None] < Lq
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_ql + dims[None, :],
                    mask=row_ok, other=0.0).to(tl.float32)
        q_amax = tl.maximum(tl.max(tl.abs(q), 1), 1e-12)
        q8 = (q * (448.0 / q_amax)[:, None]).to(tl.float8e4nv)
        row_scale = q_amax / 448.0 * tl.load(KS + bh) * sm_scale_log2
        k_base = K8 + b * stride_kb + h * stride_kh
        v_base = V8 + b * stride_vb + h * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        whole = (Lk // BLOCK_N) * BLOCK_N
        for start in range(0, whole, BLOCK_N):
            acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q8, row_scale, k_base, v_base, start, Lk, stride_kl, stride_vd,
                                         D, BLOCK_N, False)
        if whole < Lk:
            acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q8, row_scale, k_base, v_base, whole, Lk, stride_kl, stride_vd,
                                         D, BLOCK_N, True)
        out = acc * (tl.load(VS + bh) / l_i)[:, None]
        tl.store(Out + b * stride_ob + h * stride_oh + rows[:, None].to(tl.int64) * stride_ol + dims[None, :],
                 out.to(Out.dtype.element_ty), mask=row_ok)

    def launch(q, k8, v8, k_scale, v_scale, kernel=None, **config) -> torch.Tensor:
        """Run the kernel on quantised K/V (`quantize_kv`): autotuned, or `kernel` (the untuned
        `_fp8_attention_kernel.fn`, with BLOCK_M, BLOCK_N, num_warps, num_stages in `config`)."""
        batch, lq, heads, dim = q.shape
        # a compiled `quantize_kv` may hand back another layout; the loads need unit-stride rows
        k8, v8 = (x if x.stride(-1) == 1 else x.contiguous() for x in (k8, v8))
        out = torch.empty_like(q)
        k_scale, v_scale = k_scale.contiguous(), v_scale.contiguous()

        def grid(meta):
            return (triton.cdiv(lq, meta["BLOCK_M"]), batch * heads)
        kernel = torch.library.wrap_triton(_fp8_attention_kernel) if kernel is None else kernel
        kernel[grid](q, k8, v8, k_scale, v_scale, out, LOG2_E / math.sqrt(dim), lq, k8.shape[2],
                     q.stride(0), q.stride(1), q.stride(2), *k8.stride()[:3], *v8.stride()[:3],
                     out.stride(0), out.stride(1), out.stride(2),
                     H=heads, D=dim, **config)
        return out

    @torch.library.triton_op("lingbot_rt::fp8_attention_quantized", mutates_args=())
    def fp8_attention_quantized(q: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
                                k_scale: torch.Tensor, v_scale: torch.Tensor) -> torch.Tensor:
        """q [B, Lq, H, D]; k8 [B, H, Lk, D], v8 [B, H, D, Lk] e4m3 with scales [B, H]
        (`quantize_kv`; v8's rows VALUE_ROW_ALIGN-aligned) -> [B, Lq, H, D] in q's dtype."""
        return launch(q, k8, v8, k_scale, v_scale)
