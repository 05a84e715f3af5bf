"""Preallocated streaming KV cache: attention sink + rolling window, for a pool of sessions.

Memory layout (per layer): K and V of shape [capacity, frame_slots, tokens_per_frame, H, D]
with `frame_slots = sink_frames + window_frames`. Frame f of a session lives in slot f if
f < sink_frames, else in ring slot sink + (f - sink) % window: a commit overwrites exactly the
frames that leave the window, nothing is ever shifted, so a block costs the same forever.

Positions (why the cache stores keys *without* RoPE): upstream stores keys roped at absolute
frame indices, and its RoPE table ends at 1024 latent frames (~4.3 min at 16 FPS); even past
that, a query would sit thousands of positions away from the sink, a distance never seen in
training. We store keys un-roped and rotate them at read time with *cache-relative*
positions: sink frames at 0..S-1, the visible window right after them in frame order, the
block being generated right after the window. Until the window first fills these are exactly
the absolute positions (so streaming equals the full-clip forward bit for bit in layout);
afterwards every block sees positions 0..S+W+B-1 (0..20 by default, i.e. the 21 latent frames
of the 81-frame clips upstream trained on), forever. Distances inside the window stay true;
only the sink is pulled next to the window (the re-roped sink of Rolling Forcing / LongLive
Infinity-RoPE). Cost: one rotation of the cached keys per layer and pass, an elementwise op
over (S+W) frames, small next to the attention itself.

The scheduler owns which session uses which row (`slot_ids`); this class owns the tensors.
Frame counters live on the CPU: every index below is built without a device sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CacheConfig, ModelConfig
from .rope import Rotary, rotary_for_frames


class CacheFullError(RuntimeError):
    """A global (non-rolling) cache has no room for the next block."""


@dataclass
class CacheView:
    """Everything one streaming forward needs to read/write the cache, built once per call
    and shared by all layers. B = sessions in the batch, Fc = frame slots, T = tokens/frame."""

    slot_ids: torch.Tensor          # [B] rows of the pool, on the cache device
    write_slots: torch.Tensor       # [B, block_frames] frame slot each new frame is written to
    key_rotary: Rotary              # cos/sin of the cached keys at their relative positions, [B, Fc*T, D/2]
    query_rotary: Rotary            # cos/sin of the block's tokens, [B, block_frames*T, D/2]
    attn_mask: torch.Tensor | None  # bool [B, 1, 1, Fc*T + block tokens]; None when every slot is visible
    whole_pool: bool                # slot_ids == arange(capacity): read without a gather


class KVCache:
    """Self-attention K/V (un-roped) and text cross-attention K/V of `capacity` sessions."""

    def __init__(self, model_cfg: ModelConfig, cache_cfg: CacheConfig, capacity: int,
                 grid_hw: tuple[int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, head_shards: int = 1):
        """head_shards: sequence-parallel ranks; self-attention K/V then hold this rank's
        num_heads / head_shards heads (text K/V keep every head: cross-attention is not sharded)."""
        if model_cfg.num_heads % head_shards:
            raise ValueError(f"num_heads {model_cfg.num_heads} is not divisible by head_shards {head_shards}")
        self.model_cfg, self.cfg, self.capacity, self.grid_hw = model_cfg, cache_cfg, capacity, grid_hw
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]
        shape = (model_cfg.num_layers, capacity, cache_cfg.cache_frames, self.tokens_per_frame,
                 model_cfg.num_heads // head_shards, model_cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        text_shape = (model_cfg.num_layers, capacity, model_cfg.text_len, model_cfg.num_heads, model_cfg.head_dim)
        self.text_k = torch.zeros(text_shape, device=device, dtype=dtype)
        self.text_v = torch.zeros(text_shape, device=device, dtype=dtype)
        self.num_frames = [0] * capacity   # committed latent frames per row (absolute, unbounded)
        self.has_text = [False] * capacity

    @property
    def device(self) -> torch.device:
        return self.k.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.text_k, self.text_v))

    def reset(self, slot_ids: list[int]) -> None:
        """Forget the sessions in these rows (a new session starts at frame 0)."""
        for s in slot_ids:
            self._check_slot(s)
            self.num_frames[s], self.has_text[s] = 0, False

    def _check_slot(self, s: int) -> None:
        if not 0 <= s < self.capacity:
            raise IndexError(f"cache slot {s} out of range [0, {self.capacity})")

    # ---- layout --------------------------------------------------------------------------
    def frame_slot(self, frame: int) -> int:
        sink, window = self.cfg.sink_frames, self.cfg.window_frames
        if frame < sink:
            return frame
        if not self.cfg.rolling and frame >= sink + window:
            raise CacheFullError(f"global KV cache holds {sink + window} latent frames; frame {frame} "
                                 "does not fit (use a rolling cache for longer rollouts)")
        return sink + (frame - sink) % window

    def visible_positions(self, num_committed: int) -> list[int | None]:
        """Relative time position of each frame slot for a block starting at `num_committed`
        (None = slot empty or not visible)."""
        sink, window = self.cfg.sink_frames, self.cfg.window_frames
        positions: list[int | None] = [None] * self.cfg.cache_frames
        for f in range(min(num_committed, sink)):
            positions[f] = f
        first_window = max(sink, num_committed - window)
        for f in range(first_window, num_committed):
            positions[self.frame_slot(f)] = sink + (f - first_window)
        return positions

    def num_visible(self, num_committed: int) -> int:
        return min(num_committed, self.cfg.sink_frames) + min(max(num_committed - self.cfg.sink_frames, 0),
                                                               self.cfg.window_frames)

    def view(self, slot_ids: list[int], num_block_frames: int) -> CacheView:
        """Index tensors for a forward of `num_block_frames` new frames for these sessions."""
        if not slot_ids:
            raise ValueError("empty batch of cache slots")
        if len(set(slot_ids)) != len(slot_ids):
            raise ValueError(f"duplicate cache slots in one batch: {slot_ids}")
        for s in slot_ids:
            self._check_slot(s)
            if not self.has_text[s]:
                raise RuntimeError(f"cache slot {s} has no prompt: call model.start_sessions first")
        key_pos, key_ok, query_pos, write_slots = [], [], [], []
        for s in slot_ids:
            n = self.num_frames[s]
            positions = self.visible_positions(n)
            key_pos.append([p if p is not None else 0 for p in positions])
            key_ok.append([p is not None for p in positions])
            start = self.num_visible(n)
            query_pos.append([start + i for i in range(num_block_frames)])
            write_slots.append([self.frame_slot(n + i) for i in range(num_block_frames)])
        dev = self.device
        T = self.tokens_per_frame
        head_dim, theta = self.model_cfg.head_dim, self.model_cfg.rope_theta
        key_ok_t = torch.tensor(key_ok, dtype=torch.bool)
        if bool(key_ok_t.all()):
            mask = None
        else:
            token_ok = key_ok_t.repeat_interleave(T, dim=1)
            block_ok = torch.ones(len(slot_ids), num_block_frames * T, dtype=torch.bool)
            mask = torch.cat([token_ok, block_ok], 1)[:, None, None, :].to(dev)
        return CacheView(
            slot_ids=torch.tensor(slot_ids, dtype=torch.long).to(dev),
            write_slots=torch.tensor(write_slots, dtype=torch.long).to(dev),
            key_rotary=rotary_for_frames(torch.tensor(key_pos).to(dev), self.grid_hw, head_dim, theta),
            query_rotary=rotary_for_frames(torch.tensor(query_pos).to(dev), self.grid_hw, head_dim, theta),
            attn_mask=mask,
            whole_pool=slot_ids == list(range(self.capacity)),
        )

    # ---- per-layer access (called inside the DiT) -----------------------------------------
    def read(self, layer: int, view: CacheView) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached K, V of the batch: [B, Fc*T, H, D] each (K un-roped)."""
        k, v = self.k[layer], self.v[layer]
        if not view.whole_pool:
            k, v = k.index_select(0, view.slot_ids), v.index_select(0, view.slot_ids)
        return k.flatten(1, 2), v.flatten(1, 2)

    def write(self, layer: int, view: CacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the block's K, V [B, block_frames*T, H, D] (K un-roped) into its frame slots."""
        b, nf = view.write_slots.shape
        shape = (b, nf, self.tokens_per_frame, *k.shape[2:])
        rows = view.slot_ids[:, None]
        self.k[layer][rows, view.write_slots] = k.reshape(shape).to(self.k.dtype)
        self.v[layer][rows, view.write_slots] = v.reshape(shape).to(self.v.dtype)

    def text_kv(self, layer: int, view: CacheView) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.text_k[layer], self.text_v[layer]
        if not view.whole_pool:
            k, v = k.index_select(0, view.slot_ids), v.index_select(0, view.slot_ids)
        return k, v

    def set_text_kv(self, layer: int, slot_ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        rows = torch.tensor(slot_ids, dtype=torch.long, device=self.device)
        self.text_k[layer][rows] = k.to(self.text_k.dtype)
        self.text_v[layer][rows] = v.to(self.text_v.dtype)

    def mark_started(self, slot_ids: list[int]) -> None:
        for s in slot_ids:
            self.num_frames[s], self.has_text[s] = 0, True

    def advance(self, slot_ids: list[int], num_block_frames: int) -> None:
        """After a committing forward: the block's frames become context."""
        for s in slot_ids:
            self.num_frames[s] += num_block_frames
