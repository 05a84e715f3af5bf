"""Preallocated streaming KV cache: attention sink + rolling window, for a pool of sessions.

Memory layout (per layer): K and V of shape [capacity, row tokens, H, D], a row being frame
slots one after another: `sink + window + block` (rolling) or `sink + window` (global), of
`tokens_per_frame` tokens each. Frame f of a session lives in slot f if f < sink, else in ring
slot sink + (f - sink) % (window + block): the ring holds the window and, in the slots of the
frames that just left it, the block being generated. A pass writes its block's K/V into those
slots and attends to the session's row as it lies, one key tensor: no concatenation, no copy
of the cached keys, nothing ever shifted, so a block costs the same forever. While a session's
cache fills, its attended slots are a prefix of the row, read unmasked
(`CacheView.read_tokens`): a masked read of the whole ring took the 14B pass off SDPA's fast
kernels (512-542 ms against 430 steady). A compressed memory (`CacheConfig.full_frames`,
`memory_pool`) keeps the sink and the older window frames in slots of fewer, pooled tokens
(`KVCache`).

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
    and shared by all layers. B = sessions in the batch, T = tokens per full-resolution frame."""

    slot_ids: torch.Tensor          # [B] rows of the pool, on the cache device
    batch_rows: torch.Tensor        # [B, 1] 0..B-1: rows of the batch's own copy (a pass under autograd)
    write_tokens: torch.Tensor      # [B, block_frames*T] where in its row each of the block's tokens is written
    query_rotary: Rotary            # cos/sin of the block's tokens at their absolute frames, [B, block_frames*T, D/2]
    attn_mask: torch.Tensor | None  # bool [B, 1, 1, read_tokens]: sink, window and block tokens; None when all are
    read_tokens: int                # tokens of a row attention reads: all, or while every row's cache fills, the
                                    # prefix they all attend (read unmasked: the fast SDPA kernels, fewer keys)
    whole_pool: bool                # slot_ids == arange(capacity): read without a gather
    sink_frames: list[tuple[int, int, int, int]]   # (batch index, block frame, row, frame) of the block's sink frames
    sink_moves: tuple[list[int], list[int]] | None   # (rows, shifts) whose placed sink must move first
    memory_moves: list[tuple[int, int, int]]       # (row, frame, slot): frames leaving the full-resolution ring
    moved: list[tuple[int, int]]                   # (row, frame): every earlier frame has left the ring


@dataclass
class LayerKV:
    """One layer's cache as a streaming self-attention sees it."""

    k: torch.Tensor                 # [capacity, row tokens, H', D] roped keys of the pool (H' = this rank's heads)
    v: torch.Tensor
    view: CacheView

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return self.view.attn_mask

    def with_block(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's keys and values [B, read_tokens, H', D] with the block's own K (roped) / V
        [B, block_frames*T, H', D] in its slots. Without autograd they are written into the
        cache (the block's slots hold no visible frame; the next pass or the commit overwrites
        them) and the rows are read as they lie; with it, into a copy, so the graph keeps
        what it attended to."""
        view = self.view
        block_k, block_v = k.to(self.k.dtype), v.to(self.v.dtype)
        read = view.read_tokens               # the block's slots lie inside the prefix read
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            index = (view.batch_rows, view.write_tokens)
            keys = self._rows(self.k)[:, :read].index_put(index, block_k)
            values = self._rows(self.v)[:, :read].index_put(index, block_v)
            return keys, values
        index = (view.slot_ids[:, None], view.write_tokens)
        self.k.index_put_(index, block_k)
        self.v.index_put_(index, block_v)
        return self._rows(self.k)[:, :read], self._rows(self.v)[:, :read]

    def _rows(self, pool: torch.Tensor) -> torch.Tensor:
        return pool if self.view.whole_pool else pool.index_select(0, self.view.slot_ids)


class KVCache:
    """Self-attention K/V (roped) and text cross-attention K/V of `capacity` sessions.

    A row holds frame slots one after another: the sink, the ring of full-resolution frames
    (the latest `recent_frames` of the window and the block), then, with a compressed memory,
    the ring of pooled older window frames. Without one (the default) the sink's frames are
    written straight into the sink slots and nothing ever moves. With one, every frame enters
    the full-resolution ring; once it is older than the latest `recent_frames`, before the
    block that will overwrite its slot, its K/V are pooled into the sink or the older-frame
    ring (`place`), and the ring comes first in the row, then the sink. Either way the visible
    slots of a filling cache are a prefix of the row (read unmasked: the fast kernels from the
    first block on)."""

    def __init__(self, model_cfg: ModelConfig, cache_cfg: CacheConfig, capacity: int,
                 grid_hw: tuple[int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, head_shards: int = 1):
        """head_shards: sequence-parallel ranks; self-attention K/V then hold this rank's
        num_heads / head_shards heads (text K/V keep every head: cross-attention is not sharded)."""
        if model_cfg.num_heads % head_shards:
            raise ValueError(f"num_heads {model_cfg.num_heads} is not divisible by head_shards {head_shards}")
        pool_h, pool_w = cache_cfg.memory_pool
        if grid_hw[0] % pool_h or grid_hw[1] % pool_w:
            raise ValueError(f"memory_pool {cache_cfg.memory_pool} does not divide the latent token grid {grid_hw}")
        self.model_cfg, self.cfg, self.capacity, self.grid_hw = model_cfg, cache_cfg, capacity, grid_hw
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]
        self.memory_tokens = self.tokens_per_frame // (pool_h * pool_w)
        sink, window = cache_cfg.sink_frames, cache_cfg.window_frames
        if cache_cfg.rolling:
            self.ring_frames = cache_cfg.recent_frames + cache_cfg.block_frames
            self.older_frames = window - cache_cfg.recent_frames
        else:
            self.ring_frames, self.older_frames = window, 0
        # where the sink, the full-resolution ring and the older-frame ring start, in slots
        self.sink_base, self.ring_base = (0, sink) if self.cfg.sink_apart else (self.ring_frames, 0)
        self.older_base = sink + self.ring_frames
        ring, sink_slots = [self.tokens_per_frame] * self.ring_frames, [self.memory_tokens] * sink
        self.slot_tokens = ((sink_slots + ring if self.cfg.sink_apart else ring + sink_slots)
                            + [self.memory_tokens] * self.older_frames)
        self.slot_offsets = [0]
        for tokens in self.slot_tokens:
            self.slot_offsets.append(self.slot_offsets[-1] + tokens)
        self.frame_slots = len(self.slot_tokens)
        self._slot_tokens_t, self._slot_offsets_t = torch.tensor(self.slot_tokens), torch.tensor(self.slot_offsets)
        heads = model_cfg.num_heads // head_shards
        shape = (model_cfg.num_layers, capacity, self.slot_offsets[-1], heads, model_cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # the sink's keys roped at frames 0..S-1, which the attended slots hold shifted (rolling only)
        moves = cache_cfg.rolling and sink > 0
        self.sink_k = (torch.zeros((model_cfg.num_layers, capacity, sink, self.memory_tokens, heads,
                                    model_cfg.head_dim), device=device, dtype=dtype) if moves else None)
        self.sink_placed = [0] * capacity  # the shift the attended sink slots hold, per row
        text_shape = (model_cfg.num_layers, capacity, model_cfg.text_len, model_cfg.num_heads, model_cfg.head_dim)
        self.text_k = torch.zeros(text_shape, device=device, dtype=dtype)
        self.text_v = torch.zeros(text_shape, device=device, dtype=dtype)
        self.num_frames = [0] * capacity   # committed latent frames per row (absolute, unbounded)
        self.moved = [0] * capacity        # frames before this have left the full-resolution ring
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
            self.num_frames[s], self.has_text[s], self.sink_placed[s], self.moved[s] = 0, False, 0, 0

    def _check_slot(self, s: int) -> None:
        if not 0 <= s < self.capacity:
            raise IndexError(f"cache slot {s} out of range [0, {self.capacity})")

    # ---- layout --------------------------------------------------------------------------
    def frame_slot(self, frame: int) -> int:
        """The slot a frame is written to (and read from while it is at full resolution)."""
        sink, window = self.cfg.sink_frames, self.cfg.window_frames
        if frame < sink and self.cfg.sink_apart:
            return frame
        if not self.cfg.rolling and frame >= sink + window:
            raise CacheFullError(f"global KV cache holds {sink + window} latent frames; frame {frame} "
                                 "does not fit (use a rolling cache for longer rollouts)")
        first = sink if self.cfg.sink_apart else 0
        return self.ring_base + (frame - first) % self.ring_frames

    def memory_slot(self, frame: int) -> int:
        """The pooled slot a frame lives in once older than the full-resolution frames."""
        sink = self.cfg.sink_frames
        if frame < sink:
            return self.sink_base + frame
        return self.older_base + (frame - sink) % self.older_frames

    def _slot_of(self, frame: int, num_committed: int) -> int:
        """Where a visible frame lies for a block starting at `num_committed` (a sink kept apart
        has one slot per frame, which both give)."""
        if not self.cfg.rolling or frame >= num_committed - self.cfg.recent_frames:
            return self.frame_slot(frame)
        return self.memory_slot(frame)

    def _leaving(self, row: int, num_committed: int) -> tuple[list[int], int]:
        """The frames of a row that leave the full-resolution ring before a block starting at
        `num_committed` and are kept (the sink's, and window frames with an older-frame ring),
        and the frame before which all have left."""
        if not self.cfg.rolling:
            return [], 0
        sink, first_window = self.cfg.sink_frames, num_committed - self.cfg.window_frames
        stop = max(self.moved[row], num_committed - self.cfg.recent_frames)
        kept = [f for f in range(self.moved[row], stop)
                if (f < sink and not self.cfg.sink_apart) or (f >= max(sink, first_window) and self.older_frames)]
        return kept, stop

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
        memory_moves, moved = [], []
        for b, s in enumerate(slot_ids):
            n = self.num_frames[s]
            block = [n + i for i in range(num_block_frames)]
            write_slots.append([self.frame_slot(f) for f in block])
            leaving, stop = self._leaving(s, n)
            memory_moves += [(s, f, self.frame_slot(f)) for f in leaving]
            moved.append((s, stop))
            row = [False] * self.frame_slots
            for slot in [self._slot_of(f, n) for f in self.visible_frames(n)] + write_slots[-1]:
                row[slot] = True
            visible.append(row)
            query_pos.append(block)
            if self.cfg.sink_apart:
                sink_frames += [(b, i, s, f) for i, f in enumerate(block) if f < self.cfg.sink_frames]
            new_sink = any(f < self.cfg.sink_frames for f in leaving)
            if self.sink_shift(n) != self.sink_placed[s] or new_sink:
                moves[0].append(s)
                moves[1].append(self.sink_shift(n))
        dev = self.device
        T = self.tokens_per_frame
        visible_t = torch.tensor(visible, dtype=torch.bool)
        read_slots = int(visible_t[0].sum())
        if bool(visible_t[:, :read_slots].all()) and bool((visible_t.sum(1) == read_slots).all()):
            mask = None                 # every row attends the same prefix of its slots
        else:
            read_slots = self.frame_slots
            mask = to_device(visible_t.repeat_interleave(self._slot_tokens_t, dim=1)[:, None, None, :], dev)
        offsets = self._slot_offsets_t[torch.tensor(write_slots, dtype=torch.long)]
        write_tokens = (offsets.unsqueeze(-1) + torch.arange(T)).flatten(1)
        return CacheView(
            slot_ids=to_device(torch.tensor(slot_ids, dtype=torch.long), dev),
            batch_rows=to_device(torch.arange(len(slot_ids)).unsqueeze(1), dev),
            write_tokens=to_device(write_tokens, dev),
            query_rotary=rotary_for_frames(to_device(torch.tensor(query_pos), dev), self.grid_hw,
                                           self.model_cfg.head_dim, self.model_cfg.rope_theta),
            attn_mask=mask,
            read_tokens=self.slot_offsets[read_slots],
            whole_pool=slot_ids == list(range(self.capacity)),
            sink_frames=sink_frames,
            sink_moves=moves if moves[0] else None,
            memory_moves=memory_moves,
            moved=moved,
        )

    # ---- per-layer access (called inside the DiT) -----------------------------------------
    def place(self, view: CacheView) -> None:
        """Before a forward (its first pass of a block does the work): pool the frames that
        leave the full-resolution ring into their memory slots, then move the attended sink of
        every session whose shift changed, or that gained sink frames, to its shift, from the
        sink's keys at frames 0..S-1."""
        if view.memory_moves:
            self._pool_leaving(view.memory_moves)
        for s, frame in view.moved:
            self.moved[s] = frame
        if view.sink_moves is None:
            return
        rows, shifts = view.sink_moves
        first, stop = self.slot_offsets[self.sink_base], self.slot_offsets[self.sink_base + self.cfg.sink_frames]
        rows_t = to_device(torch.tensor(rows, dtype=torch.long), self.device)
        rotation = time_shift_rotary(to_device(torch.tensor(shifts), self.device), self.model_cfg.head_dim,
                                     self.model_cfg.rope_theta)
        for layer in range(self.model_cfg.num_layers):
            keys = self.sink_k[layer].index_select(0, rows_t).flatten(1, 2)
            self.k[layer][rows_t, first:stop] = rotation.apply(keys).to(self.k.dtype)
        for s, shift in zip(rows, shifts):
            self.sink_placed[s] = shift

    def _pool_leaving(self, moves: list[tuple[int, int, int]]) -> None:
        """Average each leaving frame's K/V over `memory_pool` patches into its memory slot (a
        sink frame's keys into `sink_k`, which `place` puts in the slot shifted)."""
        T, Tm, dev = self.tokens_per_frame, self.memory_tokens, self.device
        rows = to_device(torch.tensor([row for row, _, _ in moves], dtype=torch.long), dev)[:, None]
        source = to_device(torch.tensor([self.slot_offsets[slot] for _, _, slot in moves])[:, None]
                           + torch.arange(T), dev)
        target = to_device(torch.tensor([self.slot_offsets[self.memory_slot(f)] for _, f, _ in moves])[:, None]
                           + torch.arange(Tm), dev)
        sink = [(i, row, frame) for i, (row, frame, _) in enumerate(moves) if frame < self.cfg.sink_frames]
        for layer in range(self.model_cfg.num_layers):
            keys = self._pool(self.k[layer][rows, source]).to(self.k.dtype)
            self.k[layer][rows, target] = keys
            self.v[layer][rows, target] = self._pool(self.v[layer][rows, source]).to(self.v.dtype)
            for i, row, frame in sink:
                self.sink_k[layer][row, frame] = keys[i]

    def _pool(self, frames: torch.Tensor) -> torch.Tensor:
        """[m, T, H, D] full-resolution tokens (rows of the grid) -> [m, Tm, H, D] patch means, float32."""
        (gh, gw), (ph, pw) = self.grid_hw, self.cfg.memory_pool
        m, _, h, d = frames.shape
        patches = frames.float().view(m, gh // ph, ph, gw // pw, pw, h, d)
        return patches.mean(dim=(2, 4)).reshape(m, -1, h, d)

    def layer(self, layer: int, view: CacheView) -> LayerKV:
        return LayerKV(self.k[layer], self.v[layer], view)

    def write(self, layer: int, view: CacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        """Commit the block's K (roped), V [B, block_frames*T, H, D] into its slots, and the
        sink frames among them into `sink_k` (a sink kept apart)."""
        k, v = k.detach().to(self.k.dtype), v.detach().to(self.v.dtype)
        index = (view.slot_ids[:, None], view.write_tokens)
        self.k[layer].index_put_(index, k)
        self.v[layer].index_put_(index, v)
        if self.sink_k is not None:
            T = self.tokens_per_frame
            for b_index, i, row, frame in view.sink_frames:
                self.sink_k[layer][row, frame] = k[b_index, i * T:(i + 1) * T]

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
            self.num_frames[s], self.has_text[s], self.sink_placed[s], self.moved[s] = 0, True, 0, 0

    def advance(self, slot_ids: list[int], num_block_frames: int) -> None:
        """After a committing forward: the block's frames become context."""
        for s in slot_ids:
            self.num_frames[s] += num_block_frames
