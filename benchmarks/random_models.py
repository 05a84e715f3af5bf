"""Random-weight models for benchmarks: built on the meta device, materialised once in dtype."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch

from lingbot_rt.model import CacheConfig, CausalWanModel, model_config
from lingbot_rt.model.kv_cache import KVCache
from lingbot_rt.model.text_encoder import PromptTokenizer, T5Config, TextEncoder, UMT5Encoder, make_tiny_tokenizer


def random_dit(config: str, dtype: torch.dtype, device) -> CausalWanModel:
    """A DiT of a named config with weights scaled like a trained net's (N(0, 0.02), norms 1)."""
    with torch.device("meta"):
        model = CausalWanModel(model_config(config))
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.zero_()
        for m in model.modules():
            if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 1 and "Norm" in type(m).__name__:
                m.weight.fill_(1.0)
    return model.eval()


def one_layer_text_encoder(dim: int, text_len: int, device) -> TextEncoder:
    """A one-layer umT5 of the DiT's text width: the prompt is encoded once per session,
    outside the block loop, so its size does not enter per-block timings."""
    cfg = T5Config(vocab_size=64, dim=dim, dim_attn=256, dim_ffn=256, num_heads=4, num_layers=1, num_buckets=8)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = PromptTokenizer.from_folder(make_tiny_tokenizer(folder), text_len)
    return TextEncoder(UMT5Encoder(cfg).to(device), tokenizer)


@dataclass
class SteadyBlock:
    """A session whose sink and window are full (every later block costs this) and random
    inputs for its next block."""

    cache: KVCache
    slot_ids: list[int]
    x: torch.Tensor                  # [B, 16, block_frames, h, w]
    y: torch.Tensor                  # [B, in_dim - 16, block_frames, h, w]
    control: torch.Tensor | None     # [B, control_channels, block_frames, h, w]


@torch.no_grad()
def steady_block(model: CausalWanModel, cache_cfg: CacheConfig, latent_hw: tuple[int, int], batch: int = 1,
                 seed: int = 0) -> SteadyBlock:
    """Random cached K/V (not zeros: they can run faster) in a full sink + window, a started prompt."""
    cfg, dev = model.cfg, model.device
    g = torch.Generator(device=dev).manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, device=dev, generator=g, dtype=model.dtype)
    cache = model.new_cache(cache_cfg, batch, latent_hw)
    slots = list(range(batch))
    model.start_sessions(cache, slots, rand(batch, cfg.text_len, cfg.text_dim))
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.advance(slots, cache_cfg.cache_frames)
    cache.place(cache.view(slots, cache_cfg.block_frames))   # a compressed memory's frames pooled, as a stream has
    shape = (cache_cfg.block_frames, *latent_hw)
    control = rand(batch, cfg.control_channels, *shape) if cfg.control_type else None
    return SteadyBlock(cache, slots, rand(batch, 16, *shape), rand(batch, cfg.in_dim - 16, *shape), control)
