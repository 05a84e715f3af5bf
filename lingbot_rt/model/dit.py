"""The LingBot-World DiT (Wan2.2 I2V expert + per-block camera FiLM), causal-ready.

Module tree and parameter names follow upstream `WanModel` / `WanModelFast` exactly
(1421 tensors for the 14B cam model), so released checkpoints load by name. One set of
weights runs three ways:

* `forward(..., attention="bidirectional")`: the teacher, every token sees every token.
* `forward(..., attention="block_causal")` and `forward_teacher_forcing(...)`: training
  layouts over a whole clip, FlexAttention block masks (`attention.py`).
* `forward_block(...)`: streaming, one block of latent frames against a `KVCache`.

Precision follows upstream's autocast: the residual stream, time embedding, modulation,
norms and head run in float32; the big linears and attention run in the weight dtype.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention, block_causal_mask, teacher_forcing_mask
from .config import CacheConfig, ModelConfig
from .fp8 import Float8Linear
from .fp8_attention import HEAD_DIMS as FP8_ATTENTION_HEAD_DIMS
from .fp8_attention import available as fp8_attention_available
from .fp8_attention import fp8_attention
from .kv_cache import KVCache, LayerKV
from .rope import Rotary, rotary_for_frames
from .sequence_parallel import SequenceParallel


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer in its weight dtype (what upstream's bf16 autocast does); an FP8 linear
    takes its input in its output dtype and quantises it itself."""
    return layer(x.to(layer.out_dtype if isinstance(layer, Float8Linear) else layer.weight.dtype))


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer in float32 (upstream runs time embedding and head under fp32 autocast)."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[N] timesteps -> [N, dim] float32: cos then sin, computed in float64 as upstream."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = torch.outer(t, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (norm1/norm2/head.norm: no affine; norm3: affine)."""

    def forward(self, x):
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_index = cfg.num_heads, cfg.head_dim, layer_index
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)
        self.qkv_fused: nn.Module | None = None      # `fuse_qkv`: one [3 dim, dim] projection
        self.fp8_attention = False                    # `use_fp8_attention`: unmasked cache reads in FP8
        self.sequence_parallel: SequenceParallel | None = None

    def qkv(self, x: torch.Tensor):
        b, n = x.shape[:2]
        shape = (b, n, self.num_heads, self.head_dim)
        if self.qkv_fused is not None:
            q, k, v = _linear(self.qkv_fused, x).chunk(3, dim=-1)
        else:
            q, k, v = _linear(self.q, x), _linear(self.k, x), _linear(self.v, x)
        return self.norm_q(q).view(shape), self.norm_k(k).view(shape), v.view(shape)

    def forward(self, x, rotary: Rotary, block_mask=None, past: LayerKV | None = None):
        """x [B, L, dim] -> (output [B, L, dim], k roped, v), k/v [B, L', H', D]: the
        tokens' own K/V as a streaming commit stores them. With `past` the block's K/V join the
        cached ones in their slots (`LayerKV.with_block`) and attention reads them there.
        Without sequence parallelism L' = L and H' = H; with it x holds this rank's L / N tokens,
        `rotary` covers the whole sequence, attention runs on the whole sequence and H / N heads
        (Ulysses), and L' = N L, H' = H / N."""
        q, k, v = self.qkv(x)
        if self.sequence_parallel is not None:
            q, k, v = (self.sequence_parallel.seq_to_heads(t) for t in (q, k, v))
        dtype = v.dtype
        q_r, k_r = rotary.apply(q).to(dtype), rotary.apply(k).to(dtype)
        if past is None:
            out = attention(q_r, k_r, v, block_mask=block_mask)
        else:
            keys, values = past.with_block(k_r, v)
            if self.fp8_attention and past.attn_mask is None:
                out = fp8_attention(q_r, keys, values)
            else:
                out = attention(q_r, keys.to(dtype), values.to(dtype), attn_mask=past.attn_mask)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.heads_to_seq(out)
        return _linear(self.o, out.flatten(2)), k_r, v


class CrossAttention(nn.Module):
    """Text cross-attention; the prompt's 512 padded tokens are all attended (not masked),
    as upstream does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def context_kv(self, context: torch.Tensor):
        b, n = context.shape[:2]
        shape = (b, n, self.num_heads, self.head_dim)
        return self.norm_k(_linear(self.k, context)).view(shape), _linear(self.v, context).view(shape)

    def forward(self, x, k, v):
        b, n = x.shape[:2]
        q = self.norm_q(_linear(self.q, x)).view(b, n, self.num_heads, self.head_dim)
        out = attention(q, k.to(q.dtype), v.to(q.dtype))
        return _linear(self.o, out.flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg, layer_index)
        self.norm3 = LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.has_control = cfg.control_type is not None
        if self.has_control:
            self.cam_injector_layer1 = nn.Linear(dim, dim)
            self.cam_injector_layer2 = nn.Linear(dim, dim)
            self.cam_scale_layer = nn.Linear(dim, dim)
            self.cam_shift_layer = nn.Linear(dim, dim)

    def forward(self, x, e0, rotary, text_k, text_v, control=None, *, block_mask=None,
                past: LayerKV | None = None):
        """x [B, L, dim] float32 residual; e0 [B, L, 6, dim] float32 per-token modulation.
        Returns the new residual, or with `past` (streaming) (residual, k, v): the block's
        self-attention K/V for the caller to commit (`SelfAttention.forward`). The cache
        arrives as the layer's tensors (`LayerKV`), so a compiled block is one graph for every
        layer."""
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = \
            (self.modulation.float().unsqueeze(0) + e0).unbind(2)
        y, k, v = self.self_attn(self.norm1(x) * (1 + scale_msa) + shift_msa, rotary, block_mask, past)
        x = x + y.float() * gate_msa
        if control is not None:
            # Camera FiLM, per token, between self- and cross-attention (upstream model.py L256-263).
            h = _linear(self.cam_injector_layer2, F.silu(_linear(self.cam_injector_layer1, control))) + control
            x = (1.0 + _linear(self.cam_scale_layer, h).float()) * x + _linear(self.cam_shift_layer, h).float()
        x = x + self.cross_attn(self.norm3(x), text_k, text_v).float()
        y = _linear(self.ffn[2], self.ffn[1](_linear(self.ffn[0], self.norm2(x) * (1 + scale_ffn) + shift_ffn)))
        x = x + y.float() * gate_ffn
        return x if past is None else (x, k, v)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.patch_volume * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return _linear_fp32(self.head, self.norm(x) * (1 + scale) + shift)


class CausalWanModel(nn.Module):
    """LingBot-World DiT. Build on the meta device and load with `checkpoint.load_model`,
    or construct directly (random init) for tests and training from scratch."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        if cfg.control_type is not None:
            self.patch_embedding_wancamctrl = nn.Linear(cfg.control_channels * cfg.patch_volume, dim)
            self.c2ws_hidden_states_layer1 = nn.Linear(dim, dim)
            self.c2ws_hidden_states_layer2 = nn.Linear(dim, dim)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(cfg)
        self.sequence_parallel: SequenceParallel | None = None
        self.init_weights()

    # ---- initialisation and accounting ------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Upstream's init: Xavier-uniform linears with zero bias, normal(0.02) text/time
        embeddings, zero output head. A no-op on the meta device."""
        if self.patch_embedding.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in (*self.text_embedding, *self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # ---- embeddings -------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, y: torch.Tensor | None, control: torch.Tensor | None):
        cfg = self.cfg
        if x.dim() != 5:
            raise ValueError(f"latents must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        channels = x.shape[1] + (y.shape[1] if y is not None else 0)
        if channels != cfg.in_dim:
            raise ValueError(f"latents ({x.shape[1]} ch) + condition y "
                             f"({0 if y is None else y.shape[1]} ch) must have in_dim={cfg.in_dim} channels")
        if y is not None and (y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]):
            raise ValueError(f"condition y {tuple(y.shape)} does not match latents {tuple(x.shape)}")
        _, p_h, p_w = cfg.patch_size
        if x.shape[3] % p_h or x.shape[4] % p_w:
            raise ValueError(f"latent height/width {tuple(x.shape[3:])} must be divisible by the patch {(p_h, p_w)}")
        if control is not None:
            if cfg.control_type is None:
                raise ValueError("this model has no camera path, but a control signal was given")
            want = (x.shape[0], cfg.control_channels, *x.shape[2:])
            if tuple(control.shape) != want:
                raise ValueError(f"control signal must be {want} ({cfg.control_type}: "
                                 f"{cfg.control_channels} folded channels per latent cell), got {tuple(control.shape)}")

    def embed_video(self, x, y=None):
        """[B, C, F, H, W] (+ y) -> tokens [B, F*h*w, dim] float32 and the patch grid (F, h, w)."""
        if y is not None:
            x = torch.cat([x, y], dim=1)
        tokens = self.patch_embedding(x.to(self.dtype))
        grid = tuple(tokens.shape[2:])
        # contiguous: every block then sees one memory layout (one graph when compiled)
        return tokens.flatten(2).transpose(1, 2).contiguous().float(), grid

    def embed_control(self, control: torch.Tensor) -> torch.Tensor:
        """[B, C_ctrl, F, H, W] folded rays -> per-token control features [B, L, dim].
        Patch order '(c p_t p_h p_w)' as upstream's rearrange."""
        b, c, f, h, w = control.shape
        p_t, p_h, p_w = self.cfg.patch_size
        patches = control.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * p_t * p_h * p_w)
        emb = _linear(self.patch_embedding_wancamctrl, patches.to(self.dtype))
        return emb + _linear(self.c2ws_hidden_states_layer2, F.silu(_linear(self.c2ws_hidden_states_layer1, emb)))

    def embed_time(self, t: torch.Tensor, batch: int, grid: tuple[int, int, int]):
        """Timesteps [B], [B, F] (per latent frame) or [B, L] (per token) ->
        e [B, L, dim] and e0 [B, L, 6, dim], float32. The MLPs run at the given granularity."""
        f, h, w = grid
        L = f * h * w
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape[0] != batch or t.dim() > 2 or (t.dim() == 2 and t.shape[1] not in (f, L)):
            raise ValueError(f"timesteps must be [B], [B, F] or [B, L] with B={batch}, F={f}, L={L}; "
                             f"got {tuple(t.shape)}")
        e = _linear_fp32(self.time_embedding[2], F.silu(_linear_fp32(
            self.time_embedding[0], sinusoidal_embedding(self.cfg.freq_dim, t.flatten())))).view(*t.shape, -1)
        e0 = _linear_fp32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, self.cfg.dim))
        if t.dim() == 1:
            return e[:, None].expand(batch, L, -1), e0[:, None].expand(batch, L, 6, -1)
        if t.shape[1] == f and f != L:
            return e.repeat_interleave(h * w, dim=1), e0.repeat_interleave(h * w, dim=1)
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """umT5 features [B, n <= text_len, text_dim] -> [B, text_len, dim]. Zero-padded to
        text_len *before* the MLP, as upstream (the padding then carries the MLP's bias)."""
        b, n, d = context.shape
        if d != self.cfg.text_dim or n > self.cfg.text_len:
            raise ValueError(f"text context must be [B, <= {self.cfg.text_len}, {self.cfg.text_dim}], "
                             f"got {tuple(context.shape)}")
        context = F.pad(context, (0, 0, 0, self.cfg.text_len - n)).to(self.dtype)
        return self.text_embedding(context)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, p_t*p_h*p_w*C] -> [B, C, F, H, W]."""
        b = x.shape[0]
        p_t, p_h, p_w = self.cfg.patch_size
        x = x.view(b, *grid, p_t, p_h, p_w, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, self.cfg.out_dim, grid[0] * p_t, grid[1] * p_h, grid[2] * p_w)

    # ---- full-clip forwards -------------------------------------------------------------------
    def _run_blocks(self, x, t, grid, text, control, rotary, block_mask):
        e, e0 = self.embed_time(t, x.shape[0], grid)
        ctrl = self.embed_control(control) if control is not None else None
        x, e, e0, ctrl = self._shard(x, e, e0, ctrl)
        for block in self.blocks:
            text_k, text_v = block.cross_attn.context_kv(text)
            x = block(x, e0, rotary, text_k, text_v, ctrl, block_mask=block_mask)
        return self._gather(self.head(x, e))

    # ---- sequence parallelism (Ulysses) -------------------------------------------------------
    def enable_sequence_parallel(self, sp: SequenceParallel) -> None:
        """Shard every forward's tokens over `sp`'s ranks; self-attention runs on the whole
        sequence and num_heads / N heads per rank (`sequence_parallel.py`). Every rank calls
        the same forwards with the same inputs and gets the whole output; a streaming cache
        (`new_cache`) then holds this rank's heads only."""
        if self.cfg.num_heads % sp.world_size:
            raise ValueError(f"num_heads {self.cfg.num_heads} is not divisible by the {sp.world_size} "
                             "sequence-parallel ranks")
        self.sequence_parallel = sp
        for block in self.blocks:
            block.self_attn.sequence_parallel = sp

    def _shard(self, *per_token):
        """This rank's tokens of each [B, L, ...] tensor (None stays None)."""
        sp = self.sequence_parallel
        if sp is None:
            return per_token
        return tuple(None if t is None else sp.shard(t) for t in per_token)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.sequence_parallel is None else self.sequence_parallel.gather(x)

    # ---- inference transforms (`fuse_qkv`, `use_fp8_attention`, `compile_blocks`, `fp8.convert_to_fp8`)
    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Replace each self-attention's q, k, v linears by one [3 dim, dim] linear (one GEMM
        instead of three). An inference transform for a loaded model: q, k and v are dropped,
        so the state dict changes (save before fusing)."""
        for block in self.blocks:
            attn = block.self_attn
            if attn.qkv_fused is not None:
                continue
            layers = (attn.q, attn.k, attn.v)
            fused = nn.Linear(self.cfg.dim, 3 * self.cfg.dim, device=attn.q.weight.device, dtype=attn.q.weight.dtype)
            fused.weight.copy_(torch.cat([m.weight for m in layers]))
            fused.bias.copy_(torch.cat([m.bias for m in layers]))
            attn.qkv_fused = fused
            del attn.q, attn.k, attn.v

    def use_fp8_attention(self) -> None:
        """Streaming self-attention in FP8 (`fp8_attention`, our Triton kernel) wherever it reads
        the cache unmasked (every row of the batch filled alike); masked reads, whole-clip passes
        and cross-attention stay on SDPA in the model's dtype. Inference only."""
        if self.cfg.head_dim not in FP8_ATTENTION_HEAD_DIMS:
            raise ValueError(f"FP8 attention is built for head sizes {FP8_ATTENTION_HEAD_DIMS}, "
                             f"this model's is {self.cfg.head_dim}")
        if not fp8_attention_available(self.device):
            raise RuntimeError(f"FP8 attention needs Triton and a GPU with FP8 tensor cores (compute capability "
                               f"8.9+); this model is on {self.device}")
        for block in self.blocks:
            block.self_attn.fp8_attention = True

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile every DiT block in place (regional compilation: the blocks share one
        code object and take their weights as inputs, so all layers reuse one graph; the KV
        cache reads and writes stay outside it, in `forward_block`)."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def forward(self, x, t, context, y=None, control=None, *, attention: str = "bidirectional",
                block_frames: int = 3):
        """Whole-clip forward. x [B, 16, F, H, W] noisy latents, t timesteps ([B], [B, F] or
        [B, L]), context [B, n, text_dim], y [B, 20, F, H, W] (mask + image latent),
        control [B, C_ctrl, F, H, W]. attention: "bidirectional" (teacher) or "block_causal"
        (blocks of `block_frames` latent frames). Returns the flow prediction [B, 16, F, H, W] float32."""
        self._check_input(x, y, control)
        tokens, grid = self.embed_video(x, y)
        b = x.shape[0]
        frame_pos = torch.arange(grid[0], device=x.device).expand(b, -1)
        rotary = rotary_for_frames(frame_pos, grid[1:], self.cfg.head_dim, self.cfg.rope_theta)
        if attention == "bidirectional":
            mask = None
        elif attention == "block_causal":
            mask = block_causal_mask(grid[0], grid[1] * grid[2], block_frames, x.device)
        else:
            raise ValueError(f"attention must be 'bidirectional' or 'block_causal', got {attention!r}")
        out = self._run_blocks(tokens, t, grid, self.embed_text(context), control, rotary, block_mask=mask)
        return self.unpatchify(out, grid)

    def forward_teacher_forcing(self, x_clean, x_noisy, t, context, y=None, control=None, *,
                                block_frames: int = 3):
        """Teacher-forcing layout: [clean | noisy] in one sequence, both copies at the same
        positions; clean frames run at t=0, noisy block i sees clean blocks < i and itself.
        t: timesteps of the noisy copy ([B], [B, F] or [B, L]). Returns the noisy copy's
        prediction [B, 16, F, H, W]."""
        if x_clean.shape != x_noisy.shape:
            raise ValueError(f"clean {tuple(x_clean.shape)} and noisy {tuple(x_noisy.shape)} latents differ in shape")
        self._check_input(x_noisy, y, control)
        clean, grid = self.embed_video(x_clean, y)
        noisy, _ = self.embed_video(x_noisy, y)
        b, L = noisy.shape[:2]
        frame_pos = torch.arange(grid[0], device=x_noisy.device).expand(b, -1)
        rotary = rotary_for_frames(frame_pos, grid[1:], self.cfg.head_dim, self.cfg.rope_theta)
        rotary = Rotary.cat([rotary, rotary])
        t = torch.as_tensor(t, device=self.device)
        t_noisy = t.reshape(-1, 1).expand(b, L) if t.dim() <= 1 else (
            t.repeat_interleave(L // t.shape[1], dim=1) if t.shape[1] != L else t)
        t_all = torch.cat([torch.zeros_like(t_noisy), t_noisy], 1)
        doubled_grid = (2 * grid[0], *grid[1:])
        mask = teacher_forcing_mask(grid[0], grid[1] * grid[2], block_frames, x_noisy.device)
        ctrl = torch.cat([control, control], 2) if control is not None else None
        out = self._run_blocks(torch.cat([clean, noisy], 1), t_all, doubled_grid, self.embed_text(context),
                               ctrl, rotary, block_mask=mask)
        return self.unpatchify(out[:, L:], grid)

    # ---- streaming ------------------------------------------------------------------------------
    def new_cache(self, cache_cfg: CacheConfig, capacity: int, latent_hw: tuple[int, int],
                  dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated cache for `capacity` sessions of latent size latent_hw (H, W)."""
        _, p_h, p_w = self.cfg.patch_size
        if latent_hw[0] % p_h or latent_hw[1] % p_w:
            raise ValueError(f"latent size {latent_hw} must be divisible by the patch {(p_h, p_w)}")
        grid_hw = (latent_hw[0] // p_h, latent_hw[1] // p_w)
        head_shards = 1 if self.sequence_parallel is None else self.sequence_parallel.world_size
        return KVCache(self.cfg, cache_cfg, capacity, grid_hw, self.device, dtype or self.dtype,
                       head_shards=head_shards)

    @torch.no_grad()
    def start_sessions(self, cache: KVCache, slot_ids: list[int], context: torch.Tensor) -> None:
        """Begin sessions in these cache rows: position 0, text cross-attention K/V computed
        once from the prompt features context [B, n, text_dim]."""
        if context.shape[0] != len(slot_ids):
            raise ValueError(f"{len(slot_ids)} slots but {context.shape[0]} prompts")
        text = self.embed_text(context)
        for block in self.blocks:
            k, v = block.cross_attn.context_kv(text)
            cache.set_text_kv(block.self_attn.layer_index, slot_ids, k, v)
        cache.mark_started(slot_ids)

    def forward_block(self, x, t, cache: KVCache, slot_ids: list[int] | None = None, y=None, control=None,
                      *, commit: bool = False):
        """One block of latent frames per session, attending to the cache.

        x [B, 16, Fb, H, W] (Fb = the cache's block_frames, fewer allowed), t [B] / [B, Fb] / [B, L],
        slot_ids: cache rows of the B sessions (default: rows 0..B-1). Sessions may sit at
        different positions. commit=False reads the cache only (denoising passes); commit=True
        also writes the block's K/V and advances the sessions (the clean t=0 pass, or the last
        denoising pass to skip the fifth forward). Returns [B, 16, Fb, H, W] float32.
        """
        self._check_input(x, y, control)
        slot_ids = list(range(x.shape[0])) if slot_ids is None else list(slot_ids)
        if len(slot_ids) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} latent blocks but {len(slot_ids)} cache slots")
        num_frames = x.shape[2]
        if num_frames > cache.cfg.block_frames:
            raise ValueError(f"block of {num_frames} latent frames exceeds the cache's block_frames "
                             f"{cache.cfg.block_frames}")
        tokens, grid = self.embed_video(x, y)
        if grid[1:] != cache.grid_hw:
            raise ValueError(f"latent grid {grid[1:]} does not match the cache's {cache.grid_hw}")
        view = cache.view(slot_ids, num_frames)
        cache.place(view)
        e, e0 = self.embed_time(t, x.shape[0], grid)
        ctrl = self.embed_control(control) if control is not None else None
        h, e, e0, ctrl = self._shard(tokens, e, e0, ctrl)
        for block in self.blocks:
            layer = block.self_attn.layer_index
            text_k, text_v = cache.text_kv(layer, view)
            h, k, v = block(h, e0, view.query_rotary, text_k, text_v, ctrl, past=cache.layer(layer, view))
            if commit:  # after the layer's read: the block may overwrite frames it just attended to
                cache.write(layer, view, k, v)
        if commit:
            cache.advance(slot_ids, num_frames)
        return self.unpatchify(self._gather(self.head(h, e)), grid)
