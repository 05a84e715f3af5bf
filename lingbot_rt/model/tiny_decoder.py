"""A small streaming decoder for Wan2.1 latents, distilled from the VAE's decoder.

The Wan2.1 decoder is a stack of causal 3D convolutions at up to 96 x 4 channels; at 832x480
it costs 193 ms per 12-frame block compiled on an H100 (275 ms eager), as much as half a
wan-1.3b block. Peers swap in a tiny decoder (TAEHV, 7 ms per block in NVIDIA's FlashDreams
LingBot-World-Fast benchmark). This one follows the same idea, in our own code:

* every frame is decoded by 2D convolutions (frames folded into the batch), at three coarse
  scales through `MemoryBlock`s that also see the previous frame's features at their scale (the
  only temporal context, carried from block to block when streaming);
* time grows by 1x, 2x, 2x at the three upsamplings (`TimeGrowth`: a 1x1 convolution whose
  channel groups become consecutive frames), so each latent frame gives 4 frames; a stream
  drops the first 3 frames of its first latent, which the Wan2.1 VAE decodes to 1 frame, so
  frame counts match `StreamingDecoder` exactly (4(T-1)+1 on the first call, 4T later).

It reads normalised latents (what the DiT produces) and is trained to reproduce the VAE's
decode of them (`lingbot_rt.world.train_decoder`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config_io import config_from_dict
from .checkpoint import load_weights_file, save_weights_file
from .vae import TIME_STRIDE, check_stream_block

DECODER_WEIGHTS, DECODER_CONFIG = "decoder.safetensors", "decoder_config.json"


@dataclass(frozen=True)
class TinyDecoderConfig:
    z_dim: int = 16
    channels: tuple[int, int, int, int] = (256, 128, 64, 64)   # coarse (latent grid) to full resolution
    memory_blocks: int = 3          # per coarse scale
    time_growth: tuple[int, int, int] = (1, 2, 2)              # at the three 2x spatial upsamplings
    latent_clamp: float = 3.0       # latents pass through c * tanh(z / c): outliers cannot blow up

    def __post_init__(self):
        if len(self.channels) != 4 or len(self.time_growth) != 3 or min(self.channels) < 1:
            raise ValueError(f"need 4 channel widths and 3 time growth factors, got {self.channels}, "
                             f"{self.time_growth}")
        if self.time_growth[0] * self.time_growth[1] * self.time_growth[2] != TIME_STRIDE:
            raise ValueError(f"time growth must multiply to the VAE's time stride {TIME_STRIDE}, "
                             f"got {self.time_growth}")
        if self.memory_blocks < 1 or self.latent_clamp <= 0:
            raise ValueError(f"invalid tiny decoder config {self}")


NAMED_TINY_DECODER_CONFIGS: dict[str, TinyDecoderConfig] = {
    "wan2.1": TinyDecoderConfig(),                       # 832x480: the size peers use for Wan2.1 latents
    "world": TinyDecoderConfig(channels=(64, 32, 16, 16)),
    "tiny": TinyDecoderConfig(channels=(8, 8, 4, 4), memory_blocks=1),
}


def tiny_decoder_config(name: str) -> TinyDecoderConfig:
    try:
        return NAMED_TINY_DECODER_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown tiny decoder config {name!r}; known: "
                         f"{sorted(NAMED_TINY_DECODER_CONFIGS)}") from None


def _conv(in_dim: int, out_dim: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=bias)


class MemoryBlock(nn.Module):
    """Residual block over [frame, previous frame] features (the previous of a stream's first
    frame is zeros)."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.Sequential(_conv(2 * dim, dim), nn.ReLU(), _conv(dim, dim), nn.ReLU(), _conv(dim, dim))

    def forward(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, C, H, W], past [B, 1, C, H, W] or None -> [B, T, C, H, W]."""
        previous = torch.cat([torch.zeros_like(x[:, :1]) if past is None else past, x[:, :-1]], 1)
        y = self.convs(torch.cat([x, previous], 2).flatten(0, 1)).view_as(x)
        return F.relu(x + y)


class TimeGrowth(nn.Module):
    """[B, T, C, H, W] -> [B, T * factor, C, H, W]: each frame's channel groups become frames."""

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(dim, dim * factor, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, dim, height, width = x.shape
        return self.conv(x.flatten(0, 1)).view(batch, frames * self.factor, dim, height, width)


class TinyDecoder(nn.Module):
    """Normalised Wan2.1 latents [B, z_dim, T, h, w] -> 4T frames [B, 3, 4T, 8h, 8w] per call;
    stream through `stream_decoder()`, which carries each memory block's last input frame."""

    def __init__(self, config: TinyDecoderConfig = TinyDecoderConfig()):
        super().__init__()
        self.config = config
        widths = config.channels
        self.conv_in = _conv(config.z_dim, widths[0])
        self.memory = nn.ModuleList(nn.ModuleList(MemoryBlock(widths[scale]) for _ in range(config.memory_blocks))
                                    for scale in range(3))
        self.grow = nn.ModuleList(TimeGrowth(widths[scale], config.time_growth[scale]) for scale in range(3))
        self.convs = nn.ModuleList(_conv(widths[scale], widths[scale + 1], bias=False) for scale in range(3))
        self.conv_out = _conv(widths[3], 3)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def num_memory_blocks(self) -> int:
        return 3 * self.config.memory_blocks

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, z: torch.Tensor, memory: list[torch.Tensor | None]) -> torch.Tensor:
        """Normalised latents [B, z_dim, T, h, w] -> raw frames [B, T * 4, 3, 8h, 8w] (not clamped).
        `memory` (one entry per memory block) is read and replaced with this call's last frames."""
        c = self.config.latent_clamp
        x = (c * torch.tanh(z.to(self.dtype) / c)).transpose(1, 2)      # [B, T, z, h, w]
        batch, frames = x.shape[:2]
        x = F.relu(self.conv_in(x.flatten(0, 1))).unflatten(0, (batch, frames))
        slot = 0
        for scale in range(3):
            for block in self.memory[scale]:
                past, memory[slot] = memory[slot], x[:, -1:]
                x = block(x, past)
                slot += 1
            x = self.grow[scale](x)
            frames = x.shape[1]
            x = F.interpolate(x.flatten(0, 1), scale_factor=2.0, mode="nearest")
            x = self.convs[scale](x).unflatten(0, (batch, frames))
        return self.conv_out(F.relu(x.flatten(0, 1))).unflatten(0, (batch, frames))

    def stream_decoder(self) -> "TinyStreamingDecoder":
        """A new decoding stream, with `StreamingDecoder`'s interface and frame counts."""
        return TinyStreamingDecoder(self)


class TinyStreamingDecoder:
    """One stream's state: the memory blocks' last frames and the latent grid."""

    def __init__(self, decoder: TinyDecoder):
        self.decoder = decoder
        self.memory: list[torch.Tensor | None] = [None] * decoder.num_memory_blocks
        self.num_latent_frames = 0
        self.latent_shape: tuple[int, int, int] | None = None

    def detach_(self) -> None:
        """Cut the carried frames from the graph that made them (truncated backprop in training)."""
        self.memory = [None if m is None else m.detach() for m in self.memory]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z_dim, T, h, w], the next T of the stream -> video
        [B, 3, 4T (4(T-1)+1 on the first call), 8h, 8w] in [-1, 1], float32."""
        return self.decode_raw(z).clamp(-1, 1)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """As `decode`, not clamped (training)."""
        self.latent_shape = check_stream_block(z, self.decoder.config.z_dim, self.latent_shape,
                                               "decoder.stream_decoder()")
        frames = self.decoder(z, self.memory)
        if self.num_latent_frames == 0:
            frames = frames[:, TIME_STRIDE - 1:]          # the first latent frame is one video frame
        self.num_latent_frames += z.shape[2]
        return frames.transpose(1, 2).float()


def load_tiny_decoder(directory: str | Path, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> TinyDecoder:
    """A trained tiny decoder from its directory (`decoder_config.json` + `decoder.safetensors`)."""
    root = Path(directory)
    config_path = root / DECODER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: not a tiny decoder directory "
                                f"(`lingbot-rt world train-decoder` writes one)")
    config = config_from_dict(TinyDecoderConfig, json.loads(config_path.read_text()), str(config_path))
    with torch.device("meta"):
        model = TinyDecoder(config)
    return load_weights_file(model, root / DECODER_WEIGHTS, dtype, device, what="tiny decoder").eval()


def save_tiny_decoder(model: TinyDecoder, directory: str | Path) -> Path:
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    save_weights_file(model, root / DECODER_WEIGHTS)
    (root / DECODER_CONFIG).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    return root


__all__ = ["TinyDecoder", "TinyDecoderConfig", "TinyStreamingDecoder", "load_tiny_decoder",
           "save_tiny_decoder", "tiny_decoder_config"]
