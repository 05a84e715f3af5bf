"""The Wan2.1 video VAE (LingBot-World's VAE): config, modules, streaming decode, checkpoints.

Holds `VAEConfig` / `vae_config(name)`, the module tree (`CausalConv3d`, `RMSNorm`, `Resample`,
`ResidualBlock`, `AttentionBlock`, `Encoder3d`, `Decoder3d`), `WanVAE` (whole-clip
`encode` / `decode`), `StreamingEncoder` (pixel chunks in, latent frames out),
`StreamingDecoder` (latent blocks in, pixel frames out) and
`load_vae` / `save_vae`. The streaming pipeline's VAE stage calls `vae.stream_decoder()`
once per session and `decode(z_block)` once per denoised block.

Upstream facts used (Wan-Video/Wan2.1 `wan/modules/vae.py` = LingBot-World `wan/modules/vae2_1.py`,
read for facts only; reference doc `lingbot-world.md` section 12):

* Module tree and state-dict names: `encoder.*`, `conv1` (2*z_dim -> 2*z_dim, 1x1x1, gives
  mu and log_var), `conv2` (z_dim -> z_dim, 1x1x1, before the decoder), `decoder.*`; so
  `Wan2.1_VAE.pth` loads with strict key and shape matching.
* Full config: dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks per encoder stage
  (3 per decoder stage), no attention in the stages, attention in the middle, temporal
  downsampling [False, True, True] in the encoder and reversed in the decoder, dropout 0.
  Stride 4 (time) x 8 x 8.
* `CausalConv3d` pads time on the left only, by 2 * pad_t; norms are L2-normalise over
  channels * sqrt(C) * gamma (upstream's `RMS_norm`; its optional bias is never enabled, so
  there is none here). Nearest-exact 2x upsampling runs in float32.
* Encode runs frame 0 alone, then chunks of 4 frames; decode runs one latent frame at a time.
  The first latent frame decodes to 1 pixel frame (the temporal upsamplers skip it), every
  later one to 4. Latents are normalised per channel: z = (mu - mean) * (1 / std); decode
  inverts this and clamps pixels to [-1, 1]. Only mu is returned (upstream's `WanVAE.encode`).

Streaming cache design. Every temporal conv (a `CausalConv3d` whose time kernel is > 1) owns
one integer `cache_slot`, numbered once when the encoder / decoder is built. The cache itself
is per-stream state: a plain list, one entry per slot, holding the last `CACHE_T` (2) input
frames that conv saw in the previous chunk, or None before the first chunk. Modules never
store activations, so any number of streams (each a `StreamingDecoder`, each possibly a
batch) can interleave over one set of weights. Chunk by chunk this equals one causal pass
over the concatenated input, except at the first chunk, where the temporal resamplers pass
frame 0 through unchanged (upstream's behaviour, kept exactly):

* upsample3d (decoder): on the first chunk the slot becomes an empty (0-frame) history and
  `time_conv` is skipped; later chunks run `time_conv` (C -> 2C) over [history | x] with zero
  padding in front and interleave the two halves in time, doubling the frames. Upstream's
  'Rep' sentinel plus an explicit zero frame computes the same values.
* downsample3d (encoder): the slot keeps only the last frame; `time_conv` (kernel 3,
  stride 2, no padding) runs over [last frame of the previous chunk | x], halving the frames.

Precision: the modules run in the weight dtype (upstream runs fp32 weights under bf16
autocast); latent normalisation runs in float32, and both `encode` and `decode` return float32.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_weights_file, save_weights_file

log = logging.getLogger(__name__)

CACHE_T = 2                 # input frames a temporal conv keeps for the next chunk (kernel 3)
TIME_STRIDE, SPACE_STRIDE = 4, 8
ENCODE_CHUNK_FRAMES = 4     # after frame 0, the encoder reads the video 4 frames at a time

# Per-channel latent statistics of Wan2.1_VAE.pth (upstream class `WanVAE` / `Wan2_1_VAE`).
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

ConvCache = list   # slot -> Tensor [B, C, <= CACHE_T, H, W] or None: one stream's causal memory


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a Wan2.1-style VAE. Defaults are the released `Wan2.1_VAE.pth`.

    Four stages with three resamples give the 8x spatial stride; two of the three temporal
    flags give the 4x time stride. Other layouts would change the latent grid the DiT and
    the streaming block arithmetic assume, so they are refused.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)   # encoder; the decoder reverses it
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self):
        if len(self.dim_mult) != 4 or len(self.temporal_downsample) != 3 or sum(self.temporal_downsample) != 2:
            raise ValueError(f"the VAE stride must be {TIME_STRIDE}x{SPACE_STRIDE}x{SPACE_STRIDE}: need 4 dim_mult "
                             f"entries and 2 of 3 temporal_downsample flags, got dim_mult {self.dim_mult}, "
                             f"temporal_downsample {self.temporal_downsample}")
        if any(self.dim * mult % 2 for mult in self.dim_mult):
            raise ValueError(f"dim * dim_mult must be even (upsamplers halve channels), got dim {self.dim}, "
                             f"dim_mult {self.dim_mult}")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"latent_mean and latent_std need z_dim={self.z_dim} values, "
                             f"got {len(self.latent_mean)} and {len(self.latent_std)}")
        if min(self.latent_std) <= 0 or self.num_res_blocks < 1:
            raise ValueError(f"invalid VAE config {self}")


NAMED_VAE_CONFIGS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    # For a built-in world at 128x128: the full tree at a third of the width.
    "small": VAEConfig(dim=32),
    # The built-in world's VAE at 128x128 (3.6M params; its latent statistics come from training).
    "world": VAEConfig(dim=16),
    # For tests: every module kind (shortcuts, both resample kinds, middle attention), tiny widths.
    "tiny": VAEConfig(dim=8, dim_mult=(1, 2, 2, 2)),
}


def vae_config(name: str) -> VAEConfig:
    try:
        return NAMED_VAE_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown VAE config {name!r}; known: {sorted(NAMED_VAE_CONFIGS)}") from None


# --- layers ------------------------------------------------------------------------------

def _keep_last_frames(past: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The last CACHE_T frames of [past | x], what the next chunk needs in front of it."""
    missing = CACHE_T - x.shape[2]
    if missing <= 0 or past is None:
        return x[:, :, -CACHE_T:].clone()    # clone: do not keep the whole chunk alive
    return torch.cat([past[:, :, -missing:], x], 2)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bitwise equal cache entries (both empty counts as equal)."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and torch.equal(a, b)


def _detached(cache: ConvCache) -> ConvCache:
    return [None if past is None else past.detach() for past in cache]


def _per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D layer to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = layer(x.transpose(1, 2).reshape(b * t, c, h, w))          # [B*T, C', H', W']
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time on the left only (2 * pad_t frames): output frame t sees input <= t."""

    # device types on which a stride-1-in-time conv runs as one conv2d with time folded into
    # channels (`_as_conv2d`): faster on the CPU, slower than cuDNN's conv3d on an H100
    # (`benchmarks/vae_speed.py`)
    fold_time_on: tuple[str, ...] = ("cpu",)

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride=stride)
        pad_t, pad_h, pad_w = padding if isinstance(padding, tuple) else (padding,) * 3
        self.time_pad = 2 * pad_t
        self.space_pad = (pad_w, pad_w, pad_h, pad_h)
        self.cache_slot: int | None = None   # set by `_number_cache_slots` for temporal kernels

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T, H, W]; past [B, C, <= time_pad, H, W] replaces that much zero padding."""
        x = self.padded(x, past)
        if x.device.type in self.fold_time_on and self.stride[0] == 1:
            return self._as_conv2d(x)
        return super().forward(x)

    def padded(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """The convolution's input: `past` frames, then zeros, in front of x in time; zeros around
        it in space."""
        time_pad = self.time_pad
        if past is not None and time_pad > 0:
            x = torch.cat([past, x], 2)
            time_pad -= past.shape[2]
        return F.pad(x, (*self.space_pad, time_pad, 0))

    def _as_conv2d(self, x: torch.Tensor) -> torch.Tensor:
        """The same convolution as one conv2d over every output frame's window of input
        frames (time folded into channels). PyTorch's CPU conv3d falls back to a slow kernel
        for these shapes: 26 ms vs 1.0 ms for a 16-channel 3x3x3 conv on 3 x 130 x 130 frames
        (2 threads), which made the small VAE's decoder 150 ms per frame."""
        b, c, t, h, w = x.shape
        kt = self.kernel_size[0]
        windows = x.unfold(2, kt, 1)                                    # [B, C, T_out, H, W, kt]
        t_out = windows.shape[2]
        windows = windows.permute(0, 2, 1, 5, 3, 4).reshape(b * t_out, c * kt, h, w)
        weight = self.weight.reshape(self.out_channels, c * kt, *self.kernel_size[1:])
        y = F.conv2d(windows, weight, self.bias, stride=self.stride[1:])
        return y.view(b, t_out, *y.shape[1:]).transpose(1, 2)

    def forward_cached(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        """One chunk of a stream: prepend this slot's frames from the previous chunk, keep the new ones."""
        past = cache[self.cache_slot]
        cache[self.cache_slot] = _keep_last_frames(past, x)
        return self(x, past)


def _number_cache_slots(module: nn.Module) -> int:
    """Give every temporal conv under `module` its own cache slot; returns the number of slots."""
    temporal_convs = [m for m in module.modules() if isinstance(m, CausalConv3d) and m.kernel_size[0] > 1]
    for slot, conv in enumerate(temporal_convs):
        conv.cache_slot = slot
    return len(temporal_convs)


def _run_causal(layers: nn.Sequential, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
    for layer in layers:
        x = layer.forward_cached(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


class RMSNorm(nn.Module):
    """Upstream `RMS_norm`: L2-normalise over channels, times sqrt(C) and a per-channel gamma."""

    def __init__(self, dim: int, num_spatial_dims: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * num_spatial_dims))   # [C, 1, 1(, 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = F.normalize(x, dim=1) (eps 1e-12) to 6e-8; F.normalize's channel-strided vector norm
        # is 30x slower on CPU (12.5 ms vs 0.4 ms on 16 x 4 x 128 x 128, 2 threads)
        inv_norm = torch.rsqrt(x.square().sum(1, keepdim=True).clamp_min(1e-24))
        return x * inv_norm * (self.scale * self.gamma)


class Upsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling in float32 (upstream's bf16 workaround)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """2x spatial up/down sampling per frame; the 3d modes also double / halve the frames."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):   # channels halve on the way up
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:                             # pad right/bottom so stride 2 halves H and W exactly
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        slot = self.time_conv.cache_slot
        past = cache[slot]
        if past is None:
            # Latent frame 0 stays one frame; the history starts empty after it, so the next
            # chunk is zero-padded in front (upstream's 'Rep' sentinel).
            cache[slot] = x[:, :, :0]
            return x
        cache[slot] = _keep_last_frames(past, x)
        y = self.time_conv(x, past)                                  # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        # channel half 0 -> frame 2t, half 1 -> frame 2t+1
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        slot = self.time_conv.cache_slot
        past = cache[slot]
        cache[slot] = x[:, :, -1:].clone()
        if past is None:    # frame 0 passes through: 1 frame -> 1 latent frame
            return x
        return self.time_conv(torch.cat([past, x], 2))               # 1 + T frames -> T / 2


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3), nn.SiLU(),
            nn.Identity(),    # upstream's Dropout(0.0): keeps the second conv at index 6
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        return _run_causal(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _per_frame(self._attend, x)

    def _attend(self, frames: torch.Tensor) -> torch.Tensor:
        n, c, h, w = frames.shape
        qkv = self.to_qkv(self.norm(frames)).reshape(n, 1, 3 * c, h * w).transpose(2, 3)   # [N, 1, HW, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)                                     # [N, 1, HW, C]
        return self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _run_middle(middle: nn.Sequential, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
    block_in, attention, block_out = middle
    return block_out(attention(block_in(x, cache)), cache)


class Encoder3d(nn.Module):
    """Pixels [B, 3, T, H, W] -> [B, 2*z_dim, T', H/8, W/8] (mu | log_var before `conv1`)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * mult for mult in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if stage < len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[stage] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = nn.Sequential(RMSNorm(dims[-1], 3), nn.SiLU(), CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1))
        self.num_cache_slots = _number_cache_slots(self)
        # the forward pass as a chain of steps (x, cache) -> x, each with the cache slots it owns
        parts = [self.conv1, *self.downsamples, self.middle, self.head]
        runs = [self.conv1.forward_cached, *self.downsamples, partial(_run_middle, self.middle),
                partial(_run_causal, self.head)]
        self.steps: list[tuple[Callable, tuple[int, ...]]] = [
            (run, tuple(m.cache_slot for m in part.modules() if isinstance(m, CausalConv3d) and m.cache_slot is not None))
            for run, part in zip(runs, parts)]

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        for run, _slots in self.steps:
            x = run(x, cache)
        return x

    def compile_steps(self, **compile_kwargs) -> None:
        """torch.compile each step in place (regional: `StreamingEncoder.encode_black` runs the
        steps one by one, and the whole forward runs them in turn)."""
        self.steps = [(torch.compile(run, **compile_kwargs), slots) for run, slots in self.steps]


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T, h, w] -> pixels [B, 3, T', 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * mult for mult in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers = []
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if stage > 0:
                in_dim //= 2    # the previous stage's upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if stage < len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[stage] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1], 3), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))
        self.num_cache_slots = _number_cache_slots(self)

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = _run_middle(self.middle, self.conv1.forward_cached(x, cache), cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return _run_causal(self.head, x, cache)


# --- the VAE -----------------------------------------------------------------------------

def check_video(video: torch.Tensor) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, F, H, W], got shape {list(video.shape)}")
    num_frames, height, width = video.shape[2:]
    if num_frames % TIME_STRIDE != 1:
        raise ValueError(f"video has {num_frames} frames; the VAE encodes 4n+1 frames (1, 5, 9, ...)")
    if height % SPACE_STRIDE or width % SPACE_STRIDE:
        raise ValueError(f"video height and width must be divisible by {SPACE_STRIDE}, got {height}x{width}")


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [..., 3, T, H, W] in [-1, 1] -> uint8 frames [..., T, H, W, 3] (round to nearest)."""
    return ((video.movedim(-4, -1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _check_latents(z: torch.Tensor, z_dim: int) -> None:
    if z.ndim != 5 or z.shape[1] != z_dim or 0 in z.shape:
        raise ValueError(f"latents must be [B, {z_dim}, T, h, w] with T >= 1, got shape {list(z.shape)}")


def check_stream_block(z: torch.Tensor, z_dim: int, stream_shape: tuple[int, int, int] | None,
                       new_stream: str) -> tuple[int, int, int]:
    """Check the next block of a decoding stream's latents; returns its [B, h, w], which must be
    the stream's (`stream_shape`; None before its first block). `new_stream` names the call that
    starts another stream."""
    _check_latents(z, z_dim)
    shape = (z.shape[0], *z.shape[3:])
    if stream_shape is not None and shape != stream_shape:
        raise ValueError(f"this stream decodes [B, h, w] = {list(stream_shape)}, got a block with "
                         f"{list(shape)}: start a new stream with {new_stream}")
    return shape


class WanVAE(nn.Module):
    """The Wan2.1 VAE: video in [-1, 1] <-> normalised latents, stride 4 x 8 x 8."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        z_dim = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent_stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and 1 / std as [1, z_dim, 1, 1, 1] float32 (upstream multiplies by 1 / std)."""
        mean = torch.tensor(self.config.latent_mean, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.config.latent_std, device=device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 4n+1 -> latents [B, z_dim, n+1, H/8, W/8], float32."""
        check_video(video)
        return self.stream_encoder().encode(video)

    def detach_(self) -> None:
        """Cut the cached activations from the graph that made them (truncated backprop in training)."""
        self.cache = _detached(self.cache)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z_dim, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1], float32."""
        return self.stream_decoder().decode(z)

    def compile_streaming(self, **compile_kwargs) -> None:
        """torch.compile the encoder (step by step) and the decoder in place, one graph per chunk
        (a stream's first chunks, whose caches are still filling, compile their own variants). Their
        element-wise work (norms, SiLU, padding, cache copies) is about half of the eager
        decode on an H100 (`benchmarks/vae_speed.py`)."""
        self.encoder.compile_steps(**compile_kwargs)
        self.decoder.compile(**compile_kwargs)

    def stream_decoder(self) -> "StreamingDecoder":
        """A new decoding stream: feed it consecutive latent blocks of one clip (or batch of clips)."""
        return StreamingDecoder(self)

    def stream_encoder(self) -> "StreamingEncoder":
        """A new encoding stream: feed it 1 + 4k frames, then 4k frames at a time."""
        return StreamingEncoder(self)


class StreamingEncoder:
    """One stream's encode state: the encoder's per-conv frame cache.

    The first call takes 1 + 4k frames (frame 0 alone gives the first latent frame), every
    later call 4k frames, k latent frames; the concatenated outputs equal `WanVAE.encode` of
    the whole clip. The streaming pipeline encodes the start image, then extends the
    image-condition latents with black frames block by block.
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache: ConvCache = [None] * vae.encoder.num_cache_slots
        self.num_frames = 0                     # pixel frames encoded so far
        self._black: torch.Tensor | None = None  # [B, 3, 4, H, W] of -1, made by `encode_black`
        self._fixed_steps = 0                   # encoder steps at a fixed point (a prefix of them)
        self._fixed_output: torch.Tensor | None = None   # the last fixed step's output

    def detach_(self) -> None:
        """Cut the cached frames from the graph that made them (truncated backprop in training)."""
        self.cache = _detached(self.cache)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], the next F frames of the stream -> latents
        [B, z_dim, F // 4 (+1 on the first call), H/8, W/8], float32."""
        mu, _log_var = self.moments(video)
        return self._normalised(mu)

    def _normalised(self, mu: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.vae.latent_stats(mu.device)
        return (mu - mean) * inv_std

    @property
    def at_fixed_point(self) -> bool:
        """True once `encode_black` has every encoder step fixed: each further black latent
        equals the last one."""
        return self._fixed_steps == len(self.vae.encoder.steps)

    def encode_black(self) -> torch.Tensor:
        """The stream's next latent frame [B, z_dim, 1, H/8, W/8] when it goes on with 4 black
        frames (-1): equal to `encode` of them, at a fraction of the cost.

        The I2V condition is the start image followed by black frames without end. The
        encoder is causal with a finite memory, so its steps reach a fixed point one after
        another, the full-resolution ones (most of the work) first: a step whose input is the
        output of a fixed step (or, for the first, the black frames) and whose cached frames a
        call left unchanged will return that call's output for ever, so it is not run again.
        Exact, not a tolerance: the skipped steps' cache slots already hold their fixed values.
        """
        cache, steps = self.cache, self.vae.encoder.steps
        if self._black is None:
            last_frames = cache[self.vae.encoder.conv1.cache_slot]      # the stream's pixels [B, 3, <= 2, H, W]
            if last_frames is None:
                raise ValueError("encode_black continues a stream: encode its first frames (the image) first")
            self._black = torch.full_like(last_frames[:, :, :1], -1.0).expand(
                -1, -1, ENCODE_CHUNK_FRAMES, -1, -1).contiguous()
        x = self._black if self._fixed_steps == 0 else self._fixed_output
        for index in range(self._fixed_steps, len(steps)):
            run, slots = steps[index]
            before = [cache[slot] for slot in slots]
            x = run(x, cache)
            if index == self._fixed_steps and all(_same(old, cache[slot]) for old, slot in zip(before, slots)):
                self._fixed_steps, self._fixed_output = index + 1, x
        self.num_frames += ENCODE_CHUNK_FRAMES
        mu, _log_var = self.vae.conv1(x).float().chunk(2, dim=1)
        return self._normalised(mu)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's unnormalised mean and log-variance [B, z_dim, T, h, w], float32, of
        the next frames (what `encode` normalises; training samples from them)."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W], got shape {list(video.shape)}")
        first = self.num_frames == 0
        num_frames = video.shape[2]
        if (num_frames - first) % ENCODE_CHUNK_FRAMES or num_frames < 1:
            want = "1 + 4k frames on the first call" if first else "4k frames after the first call"
            raise ValueError(f"the encoder stream takes {want}, got {num_frames}")
        if video.shape[3] % SPACE_STRIDE or video.shape[4] % SPACE_STRIDE:
            raise ValueError(f"video height and width must be divisible by {SPACE_STRIDE}, "
                             f"got {video.shape[3]}x{video.shape[4]}")
        x = video.to(self.vae.dtype)
        self._fixed_steps, self._fixed_output = 0, None     # these frames need not be black
        chunks = [x[:, :, :1]] if first else []
        chunks += [x[:, :, start:start + ENCODE_CHUNK_FRAMES]
                   for start in range(int(first), num_frames, ENCODE_CHUNK_FRAMES)]
        features = torch.cat([self.vae.encoder(chunk, self.cache) for chunk in chunks], 2)
        self.num_frames += num_frames
        mu, log_var = self.vae.conv1(features).float().chunk(2, dim=1)
        return mu, log_var


class StreamingDecoder:
    """One stream's decode state: the decoder's per-conv frame cache and the latent grid.

    The first latent frame of the stream gives 1 pixel frame, every later one 4, so the
    concatenated outputs of consecutive `decode` calls equal `WanVAE.decode` of the whole clip.
    The cache holds activations, so serve under `torch.inference_mode()` (with grad it keeps graphs).
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache: ConvCache = [None] * vae.decoder.num_cache_slots
        self.num_latent_frames = 0              # latent frames decoded so far
        self.latent_shape: tuple[int, int, int] | None = None   # (B, h, w), fixed by the first block

    def detach_(self) -> None:
        """Cut the cached activations from the graph that made them (truncated backprop in training)."""
        self.cache = _detached(self.cache)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z_dim, T, h, w], the next T of the stream -> video
        [B, 3, 4T (4(T-1)+1 on the first call), 8h, 8w] in [-1, 1], float32."""
        _check_latents(z, self.vae.config.z_dim)
        mean, inv_std = self.vae.latent_stats(z.device)
        return self.decode_raw(z.float() / inv_std + mean).clamp(-1, 1)   # upstream divides by 1 / std

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents -> the decoder's output, float32, not clamped (training)."""
        self.latent_shape = check_stream_block(z, self.vae.config.z_dim, self.latent_shape, "vae.stream_decoder()")
        x = self.vae.conv2(z.to(self.vae.dtype))         # conv2 is 1x1x1: per block is exact
        frames = [self.vae.decoder(x[:, :, index:index + 1], self.cache) for index in range(z.shape[2])]
        self.num_latent_frames += z.shape[2]
        return torch.cat(frames, 2).float()


# --- checkpoints -------------------------------------------------------------------------

def load_vae(path: str | Path, config: str | VAEConfig = "wan2.1", dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu") -> WanVAE:
    """Build, validate and load a VAE from `Wan2.1_VAE.pth` or a `.safetensors` file (strict)."""
    cfg = vae_config(config) if isinstance(config, str) else config
    with torch.device("meta"):
        model = WanVAE(cfg)
    model = load_weights_file(model, path, dtype, device, what="VAE")
    log.info("loaded VAE %s: %.1fM params, %s", path, model.num_params() / 1e6, dtype)
    return model


def save_vae(model: WanVAE, path: str | Path) -> Path:
    """Write the VAE's state dict (same keys as `Wan2.1_VAE.pth`); the suffix picks the format."""
    return save_weights_file(model, path)
