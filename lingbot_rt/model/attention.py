"""Attention kernels and masks: SDPA for dense and padded attention, FlexAttention for
the block-causal training layouts.

Block-causal: the tokens of latent frame f belong to block f // block_frames; a query sees
every key of its own block (bidirectional) and of earlier blocks (causal across blocks).
Teacher forcing (Self-Forcing `_prepare_teacher_forcing_mask`): the sequence is
[clean copy | noisy copy]; the clean copy is block-causal, noisy block i sees clean blocks
< i and its own noisy block.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention


@functools.cache
def _compiled_flex():
    # On CUDA the fused kernel needs torch.compile; eager flex materialises the score matrix.
    return torch.compile(flex_attention, dynamic=False)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              block_mask: BlockMask | None = None,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    block_mask: a FlexAttention mask (training layouts). attn_mask: bool [B, 1, Lq, Lk],
    True = may attend (streaming with per-sample cache lengths). Neither: full attention.
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if block_mask is not None and q.is_cuda:
        out = _compiled_flex()(q, k, v, block_mask=block_mask)
    elif block_mask is not None and not torch.is_grad_enabled():
        out = _eager_flex(q, k, v, block_mask)
    elif block_mask is not None:
        # FlexAttention has no CPU backward: same mask, dense, through SDPA.
        dense = create_mask(block_mask.mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2)


def _eager_flex(q, k, v, block_mask):
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask)


def block_causal_mask(num_frames: int, tokens_per_frame: int, block_frames: int,
                      device: torch.device | str) -> BlockMask:
    """Block-causal mask over one clip of `num_frames` latent frames."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx // tokens_per_frame) // block_frames <= (q_idx // tokens_per_frame) // block_frames
    n = num_frames * tokens_per_frame
    return create_block_mask(mask_mod, None, None, n, n, device=device)


def teacher_forcing_mask(num_frames: int, tokens_per_frame: int, block_frames: int,
                         device: torch.device | str) -> BlockMask:
    """Mask over [clean | noisy] copies of a clip (2 * num_frames frames of tokens)."""
    half = num_frames * tokens_per_frame
    tokens_per_block = tokens_per_frame * block_frames

    def mask_mod(b, h, q_idx, kv_idx):
        q_noisy, kv_noisy = q_idx >= half, kv_idx >= half
        q_block = (q_idx - q_noisy * half) // tokens_per_block
        kv_block = (kv_idx - kv_noisy * half) // tokens_per_block
        clean_to_clean = ~q_noisy & ~kv_noisy & (kv_block <= q_block)
        noisy_to_clean = q_noisy & ~kv_noisy & (kv_block < q_block)
        noisy_to_self = q_noisy & kv_noisy & (kv_block == q_block)
        return clean_to_clean | noisy_to_clean | noisy_to_self
    return create_block_mask(mask_mod, None, None, 2 * half, 2 * half, device=device)
