"""Preallocated streaming KV cache: attention sink + rolling window, for a pool of sessions.

Memory layout (per layer): K and V of shape [capacity, frame_slots, tokens_per_frame, H, D]
with `frame_slots = sink + window + block` (rolling) or `sink + window` (global). Frame f of
a session lives in slot f if f < sink, else in ring slot sink + (f - sink) % (window + block):
the ring holds the window and, in the slots of the frames that just left it, the block being
generated. A pass writes its block's K/V into those slots and attends to the session's row as
it lies, one [frame_slots * tokens] key tensor: no concatenation, no copy of the cached keys,
nothing ever shifted, so a block costs the same forever. While a session's cache fills, its
attended slots are a prefix of the row, read unmasked (`CacheView.read_frames`): a masked read
of the whole ring took the 14B pass off SDPA's fast kernels (512-542 ms against 430 steady).

Positions. Upstream stores keys roped at absolute frame indices, so a query thousands of
frames in sits thousands of positions from the sink, a distance never seen in training. We
keep the distances training saw: the window's keys are roped at their absolute frames (the
distances inside the window and to the block are true ones), and the sink is pulled next to
the window: its keys are kept roped at frames 0..S-1 (`sink_k`) and placed in the attended
slots rotated forward by `sink_shift` frames, which changes once per block (the re-roped sink
of Rolling Forcing / LongLive Infinity-RoPE). Attention sees exactly the cache-relative
positions 0..S+W+B-1 of the 21-frame clips upstream trained on, forever; until the window
first fills every shift is 0, so streaming equals the full-clip forward. RoPE depends on
differences of positions only, so absolute query positions cost nothing; cos/sin are taken
from float64 angles, exact for any frame a session reaches.
(The cache stored un-roped keys and re-roped the whole window in every pass before: an H100
profile of the 14B FP8 pass showed that rotation and the concatenation at 38 of 465 ms; the pass
now takes 426 ms.)

The scheduler owns which session uses which row (`slot_ids`); this class owns the tensors.
Frame counters live on the CPU: every index below is built without a device sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CacheConfig, ModelConfig
from .rope import Rotary, rotary_for_frames, time_shift_rotary


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small index tensor built on the host, on `device` without waiting for the device: a
    blocking copy waits for every queued kernel, so the host could not launch the next pass
    while the GPU runs this one (measured: 140 ms of a 437 ms wan-1.3b block spent waiting in
    `view`). From pageable memory CUDA stages the bytes before the call returns, so the host
    tensor may go at once."""
    return host.to(device, non_blocking=True)


class CacheFullError(RuntimeError):
    """A global (non-rolling) cache has no room for the next block."""


@dataclass
class CacheView:
    """Everything one streaming forward needs to read/write the cache, built once per call
    and shared by all layers. B = sessions in the batch, Fc = frame slots, T = tokens/frame."""

    slot_ids: torch.Tensor          # [B] rows of the pool, on the cache device
    batch_rows: torch.Tensor        # [B, 1] 0..B-1: rows of the batch's own copy (a pass under autograd)
    write_slots: torch.Tensor       # [B, block_frames] frame slot each new frame is written to
    query_rotary: Rotary            # cos/sin of the block's tokens at their absolute frames, [B, block_frames*T, D/2]
    attn_mask: torch.Tensor | None  # bool [B, 1, 1, read_frames*T]: sink, window and block slots; None when all are
    read_frames: int                # frame slots attention reads: all, or while every row's cache fills, the
                                    # prefix they all attend (read unmasked: the fast SDPA kernels, fewer keys)
    whole_pool: bool                # slot_ids == arange(capacity): read without a gather
    sink_frames: list[tuple[int, int, int, int]]   # (batch index, block frame, row, frame) of the block's sink frames
    sink_moves: tuple[list[int], list[int]] | None   # (rows, shifts) whose placed sink must move first


@dataclass
class LayerKV:
    """One layer's cache as a streaming self-attention sees it."""

    k: torch.Tensor                 # [capacity, Fc, T, H', D] roped keys of the pool (H' = this rank's heads)
    v: torch.Tensor
    view: CacheView

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return self.view.attn_mask

    def with_block(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's keys and values [B, read_frames*T, H', D] with the block's own K (roped) / V
        [B, block_frames*T, H', D] in its slots. Without autograd they are written into the
        cache (the block's slots hold no visible frame; the next pass or the commit overwrites
        them) and the rows are read as they lie; with it, into a copy, so the graph keeps
        what it attended to."""
        view = self.view
        b, nf = view.write_slots.shape
        shape = (b, nf, -1, *k.shape[2:])
        block_k, block_v = k.reshape(shape).to(self.k.dtype), v.reshape(shape).to(self.v.dtype)
        read = view.read_frames               # the block's slots lie inside the prefix read
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            index = (view.batch_rows, view.write_slots)
            keys = self._rows(self.k)[:, :read].index_put(index, block_k)
            values = self._rows(self.v)[:, :read].index_put(index, block_v)
        else:
            index = (view.slot_ids[:, None], view.write_slots)
            self.k.index_put_(index, block_k)
            self.v.index_put_(index, block_v)
            keys, values = self._rows(self.k)[:, :read], self._rows(self.v)[:, :read]
        return keys.flatten(1, 2), values.flatten(1, 2)

    def _rows(self, pool: torch.Tensor) -> torch.Tensor:
        return pool if self.view.whole_pool else pool.index_select(0, self.view.slot_ids)


class KVCache:
    """Self-attention K/V (roped) and text cross-attention K/V of `capacity` sessions."""

    def __init__(self, model_cfg: ModelConfig, cache_cfg: CacheConfig, capacity: int,
                 grid_hw: tuple[int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, head_shards: int = 1):
        """head_shards: sequence-parallel ranks; self-attention K/V then hold this rank's
        num_heads / head_shards heads (text K/V keep every head: cross-attention is not sharded)."""
        if model_cfg.num_heads % head_shards:
            raise ValueError(f"num_heads {model_cfg.num_heads} is not divisible by head_shards {head_shards}")
        self.model_cfg, self.cfg, self.capacity, self.grid_hw = model_cfg, cache_cfg, capacity, grid_hw
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]
        self.ring_frames = cache_cfg.window_frames + (cache_cfg.block_frames if cache_cfg.rolling else 0)
        self.frame_slots = cache_cfg.sink_frames + self.ring_frames
        per_frame = (self.tokens_per_frame, model_cfg.num_heads // head_shards, model_cfg.head_dim)
        shape = (model_cfg.num_layers, capacity, self.frame_slots, *per_frame)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # the sink's keys roped at frames 0..S-1, which the attended slots hold shifted (rolling only)
        moves = cache_cfg.rolling and cache_cfg.sink_frames > 0
        self.sink_k = (torch.zeros((model_cfg.num_layers, capacity, cache_cfg.sink_frames, *per_frame), device=device,
                                   dtype=dtype) if moves else None)
        self.sink_placed = [0] * capacity  # the shift the attended sink slots hold, per row
        text_shape = (model_cfg.num_layers, capacity, model_cfg.text_len, model_cfg.num_heads, model_cfg.head_dim)
        self.text_k = torch.zeros(text_shape, device=device, dtype=dtype)
        self.text_v = torch.zeros(text_shape, device=device, dtype=dtype)
        self.num_frames = [0] * capacity   # committed latent frames per row (absolute, unbounded)
        self.has_text = [False] * capacity

    @property
    def device(self) -> torch.device:
        return self.k.device

    def nbytes(self) -> int:
        tensors = (self.k, self.v, self.text_k, self.text_v, *(() if self.sink_k is None else (self.sink_k,)))
        return sum(t.numel() * t.element_size() for t in tensors)

    def reset(self, slot_ids: list[int]) -> None:
        """Forget the sessions in these rows (a new session starts at frame 0)."""
        for s in slot_ids:
            self._check_slot(s)
            self.num_frames[s], self.has_text[s], self.sink_placed[s] = 0, False, 0

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
        return sink + (frame - sink) % self.ring_frames

    def visible_frames(self, num_committed: int) -> list[int]:
        """The committed frames a block starting at `num_committed` attends to: the sink, then the window."""
        sink, window = self.cfg.sink_frames, self.cfg.window_frames
        first_window = max(sink, num_committed - window) if self.cfg.rolling else sink
        return list(range(min(num_committed, sink))) + list(range(first_window, num_committed))

    def sink_shift(self, num_committed: int) -> int:
        """Frames the sink is moved forward for a block starting at `num_committed`, so that it
        sits right before the window: 0 until the window first slides."""
        if self.sink_k is None:
            return 0
        return max(0, num_committed - self.cfg.window_frames - self.cfg.sink_frames)

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
        visible, query_pos, write_slots, sink_frames, moves = [], [], [], [], ([], [])
        for b, s in enumerate(slot_ids):
            n = self.num_frames[s]
            block = [n + i for i in range(num_block_frames)]
            write_slots.append([self.frame_slot(f) for f in block])
            row = [False] * self.frame_slots
            for slot in [self.frame_slot(f) for f in self.visible_frames(n)] + write_slots[-1]:
                row[slot] = True
            visible.append(row)
            query_pos.append(block)
            sink_frames += [(b, i, s, f) for i, f in enumerate(block) if f < self.cfg.sink_frames]
            if self.sink_shift(n) != self.sink_placed[s]:
                moves[0].append(s)
                moves[1].append(self.sink_shift(n))
        dev = self.device
        T = self.tokens_per_frame
        visible_t = torch.tensor(visible, dtype=torch.bool)
        read_frames = int(visible_t[0].sum())
        if bool(visible_t[:, :read_frames].all()) and bool((visible_t.sum(1) == read_frames).all()):
            mask = None                 # every row attends the same prefix of its slots
        else:
            read_frames = self.frame_slots
            mask = to_device(visible_t.repeat_interleave(T, dim=1)[:, None, None, :], dev)
        return CacheView(
            slot_ids=to_device(torch.tensor(slot_ids, dtype=torch.long), dev),
            batch_rows=to_device(torch.arange(len(slot_ids)).unsqueeze(1), dev),
            write_slots=to_device(torch.tensor(write_slots, dtype=torch.long), dev),
            query_rotary=rotary_for_frames(to_device(torch.tensor(query_pos), dev), self.grid_hw,
                                           self.model_cfg.head_dim, self.model_cfg.rope_theta),
            attn_mask=mask,
            read_frames=read_frames,
            whole_pool=slot_ids == list(range(self.capacity)),
            sink_frames=sink_frames,
            sink_moves=moves if moves[0] else None,
        )

    # ---- per-layer access (called inside the DiT) -----------------------------------------
    def place_sink(self, view: CacheView) -> None:
        """Before a forward: move the attended sink of every session whose shift changed
        (once per block) to its new shift, from the sink's keys at frames 0..S-1."""
        if view.sink_moves is None:
            return
        rows, shifts = view.sink_moves
        sink = self.cfg.sink_frames
        rows_t = to_device(torch.tensor(rows, dtype=torch.long), self.device)
        rotation = time_shift_rotary(to_device(torch.tensor(shifts), self.device), self.model_cfg.head_dim,
                                     self.model_cfg.rope_theta)
        for layer in range(self.model_cfg.num_layers):
            keys = self.sink_k[layer].index_select(0, rows_t)
            moved = rotation.apply(keys.flatten(1, 2)).view(keys.shape)
            self.k[layer][rows_t, :sink] = moved.to(self.k.dtype)
        for s, shift in zip(rows, shifts):
            self.sink_placed[s] = shift

    def layer(self, layer: int, view: CacheView) -> LayerKV:
        return LayerKV(self.k[layer], self.v[layer], view)

    def write(self, layer: int, view: CacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        """Commit the block's K (roped), V [B, block_frames*T, H, D] into its frame slots, and
        the sink frames among them into `sink_k`."""
        b, nf = view.write_slots.shape
        shape = (b, nf, self.tokens_per_frame, *k.shape[2:])
        k, v = k.detach().reshape(shape).to(self.k.dtype), v.detach().reshape(shape).to(self.v.dtype)
        rows = view.slot_ids[:, None]
        self.k[layer][rows, view.write_slots] = k
        self.v[layer][rows, view.write_slots] = v
        if self.sink_k is not None:
            for b_index, i, row, frame in view.sink_frames:
                self.sink_k[layer][row, frame] = k[b_index, i]

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
            self.num_frames[s], self.has_text[s], self.sink_placed[s] = 0, True, 0

    def advance(self, slot_ids: list[int], num_block_frames: int) -> None:
        """After a committing forward: the block's frames become context."""
        for s in slot_ids:
            self.num_frames[s] += num_block_frames
