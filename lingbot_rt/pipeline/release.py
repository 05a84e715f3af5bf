"""A release root: every model file the streaming pipeline needs, found by upstream's names.

    <root>/lingbot_world_fast/             the causal 4-step DiT (`load_fast`)
    <root>/Wan2.1_VAE.pth                  the VAE
    <root>/models_t5_umt5-xxl-enc-bf16.pth the umT5 encoder
    <root>/google/umt5-xxl/tokenizer.json  its tokenizer
    <root>/lingbot_rt.json                 optional: which named configs the files are
    <root>/tiny_decoder/                   optional: a distilled streaming decoder (`stream.decoder: tiny`)

Upstream's releases have no `lingbot_rt.json`; its absence means the full-size configs
(`wan2.1` VAE, `umt5-xxl` encoder) at 480x832, streamed with LingBot-World-Fast's settings
(`StreamConfig()`). Our own small releases (tiny checkpoints, the built-in world) write one,
e.g. `{"vae": "tiny", "text_encoder": "tiny", "height": 64, "width": 64}`; `vae` /
`text_encoder` may also be the config's fields (a trained VAE carries its own latent mean and
std), and `stream` the `StreamConfig` fields its DiT was distilled for (schedule, cache window,
camera), which a server's own stream config replaces whole.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config_io import config_from_dict
from ..model.checkpoint import CheckpointError, load_fast
from ..model.dit import CausalWanModel
from ..model.text_encoder import T5Config, TextEncoder, t5_config
from ..model.tiny_decoder import TinyDecoder, load_tiny_decoder
from ..model.vae import VAEConfig, WanVAE, load_vae, vae_config

if TYPE_CHECKING:
    from .streaming import StreamConfig

VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
MANIFEST_FILE = "lingbot_rt.json"
TINY_DECODER_DIR = "tiny_decoder"


@dataclass(frozen=True)
class ReleaseManifest:
    """Configs of a release's VAE and text encoder (a name or the fields), its native frame size."""

    vae: str | dict = "wan2.1"
    text_encoder: str | dict = "umt5-xxl"
    height: int = 480
    width: int = 832
    stream: dict | None = None      # StreamConfig fields (not the frame size: height / width above)

    def vae_config(self) -> VAEConfig:
        if isinstance(self.vae, str):
            return vae_config(self.vae)
        return config_from_dict(VAEConfig, self.vae, f"{MANIFEST_FILE} vae")

    def text_encoder_config(self) -> T5Config:
        if isinstance(self.text_encoder, str):
            return t5_config(self.text_encoder)
        return config_from_dict(T5Config, self.text_encoder, f"{MANIFEST_FILE} text_encoder")

    def stream_config(self) -> "StreamConfig":
        """How this release streams: its `stream` fields at its native frame size."""
        from .streaming import StreamConfig
        stream = self.stream or {}
        if {"height", "width"} & stream.keys():
            raise ValueError(f"{MANIFEST_FILE} stream: the frame size is the manifest's height and width")
        return config_from_dict(StreamConfig, {**stream, "height": self.height, "width": self.width},
                                f"{MANIFEST_FILE} stream")

    @classmethod
    def read(cls, root: Path) -> "ReleaseManifest":
        path = root / MANIFEST_FILE
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known:
            raise CheckpointError(f"{path}: expected an object with keys among {sorted(known)}, got {raw!r}")
        manifest = cls(**raw)
        try:
            manifest.vae_config(), manifest.text_encoder_config(), manifest.stream_config()
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        return manifest

    def write(self, root: Path) -> Path:
        path = root / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


@dataclass
class Release:
    """The loaded models of one release."""

    dit: CausalWanModel
    vae: WanVAE
    text_encoder: TextEncoder
    manifest: ReleaseManifest


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"missing {what}: {path} does not exist")
    return path


def load_release(root: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                 vae_dtype: torch.dtype | None = None, text_device: torch.device | str | None = None,
                 text_dtype: torch.dtype = torch.bfloat16) -> Release:
    """Load the Fast DiT and the VAE on `device`, the text encoder on `text_device` (default:
    `device`; the CPU keeps 11 GB of umT5 off the GPU); the VAE in `vae_dtype`, by default the
    DiT's (upstream decodes in fp32; in bf16 the world VAE decodes within 2/255 of it,
    `benchmarks/results/vae_dtype_world.json`). Every file is checked before loading."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"release root {root} is not a directory")
    manifest = ReleaseManifest.read(root)
    _require(root / VAE_FILE, "VAE weights")
    t5_path = _require(root / T5_FILE, "text encoder weights")
    tokenizer_dir = _require(root / TOKENIZER_DIR, "tokenizer folder")
    dit = load_fast(root, dtype=dtype, device=device)
    vae = load_release_vae(root, device=device, dtype=vae_dtype or dtype)
    text_encoder = TextEncoder.from_checkpoint(t5_path, tokenizer_dir, manifest.text_encoder_config(),
                                               device=device if text_device is None else text_device,
                                               dtype=text_dtype, text_len=dit.cfg.text_len)
    return Release(dit, vae, text_encoder, manifest)


def release_stream_config(root: str | Path, config_yaml: str | Path | None = None, **overrides) -> "StreamConfig":
    """The stream config a release root's manifest names (`StreamConfig()` at 480x832 without one),
    or the YAML's when given, with the `overrides` that are not None (command-line options)."""
    from .streaming import StreamConfig
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"release root {root} is not a directory")
    config = StreamConfig.from_yaml(config_yaml) if config_yaml else ReleaseManifest.read(root).stream_config()
    return config.with_overrides(**overrides)


def load_release_vae(root: str | Path, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> WanVAE:
    """Only the release's VAE."""
    root = Path(root)
    manifest = ReleaseManifest.read(root)
    return load_vae(_require(root / VAE_FILE, "VAE weights"), manifest.vae_config(), dtype=dtype, device=device)


def load_release_decoder(root: str | Path, *, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> TinyDecoder:
    """The release's tiny streaming decoder (`<root>/tiny_decoder/`)."""
    path = Path(root) / TINY_DECODER_DIR
    if not path.is_dir():
        raise CheckpointError(f"missing tiny decoder: {path} does not exist (stream with decoder: vae, or add one "
                              f"trained by `lingbot-rt world train-decoder`)")
    return load_tiny_decoder(path, dtype=dtype, device=device)


def load_release_frames_decoder(root: str | Path, decoder: str, *, device: torch.device | str = "cpu",
                                dtype: torch.dtype = torch.float32) -> WanVAE | TinyDecoder:
    """What the VAE stage holds: the release's VAE (`decoder` "vae") or its tiny decoder ("tiny")."""
    if decoder == "tiny":
        return load_release_decoder(root, device=device, dtype=dtype)
    return load_release_vae(root, device=device, dtype=dtype)
