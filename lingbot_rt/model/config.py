"""Typed configs of the DiT and of its streaming KV cache.

`ModelConfig` mirrors the fields of upstream's diffusers `config.json` (`WanModel` /
`WanModelFast`), so one dataclass reads a released checkpoint and names our own sizes.
`CacheConfig` is the streaming side: block size, attention sink and rolling window.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

# control type -> channels per pixel of the camera/action signal (upstream model.py):
# cam = ray origin + direction (6), act = ray direction + WASD multi-hot (7).
CONTROL_CHANNELS = {"cam": 6, "act": 7}
# The VAE folds 8x8 pixels into channels before the DiT sees the control signal.
CONTROL_PIXEL_FOLD = 64


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one Wan/LingBot DiT. Defaults are the LingBot-World 14B expert."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_layers: int = 40
    num_heads: int = 40
    in_dim: int = 36            # 16 noisy + 4 mask + 16 image latent (I2V)
    out_dim: int = 16
    text_dim: int = 4096        # umT5-XXL width
    text_len: int = 512         # prompts are zero-padded to this many tokens, not masked
    freq_dim: int = 256
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    control_type: str | None = "cam"   # "cam", "act" or None (no camera path)
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.control_type is not None and self.control_type not in CONTROL_CHANNELS:
            raise ValueError(f"control_type must be one of {sorted(CONTROL_CHANNELS)} or None, "
                             f"got {self.control_type!r}")
        if self.patch_size[0] != 1:
            raise ValueError("streaming needs a temporal patch size of 1, "
                             f"got patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def control_channels(self) -> int:
        """Channels of the folded control signal per latent cell (384 for cam, 448 for act)."""
        return CONTROL_CHANNELS[self.control_type] * CONTROL_PIXEL_FOLD

    @property
    def patch_volume(self) -> int:
        p_t, p_h, p_w = self.patch_size
        return p_t * p_h * p_w

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # --- diffusers config.json -------------------------------------------------------
    def to_diffusers(self, class_name: str = "WanModel") -> dict:
        """The `config.json` dict upstream's `register_to_config` writes (plus text_dim,
        which upstream lists in `ignore_for_config` and so never stores: we keep it so a
        tiny checkpoint can use a narrow text width)."""
        out = {"_class_name": class_name, "model_type": "i2v"}
        for name in ("dim", "ffn_dim", "num_layers", "num_heads", "in_dim", "out_dim",
                     "text_len", "freq_dim", "eps"):
            out[name] = getattr(self, name)
        if self.control_type is not None:
            out["control_type"] = self.control_type
        if self.text_dim != ModelConfig.text_dim:
            out["text_dim"] = self.text_dim
        return out

    @classmethod
    def from_diffusers(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        """Read upstream's `config.json`. Fields we do not model are logged, not fatal:
        the exact content of LingBot's released configs is not verified (see reference §10)."""
        known = {f.name for f in dataclasses.fields(cls)}
        passthrough = {"model_type", "window_size", "qk_norm", "cross_attn_norm",
                       "local_attn_size", "sink_size", "cam_channels"}
        kwargs = {}
        for key, value in cfg.items():
            if key.startswith("_"):
                continue
            if key in known:
                kwargs[key] = tuple(value) if key == "patch_size" else value
            elif key not in passthrough:
                log.warning("%s: ignoring unknown field %r", source, key)
        if cfg.get("model_type", "i2v") != "i2v":
            raise ValueError(f"{source}: model_type {cfg['model_type']!r} is not supported, "
                             "LingBot-World is an i2v model")
        if cfg.get("cam_channels") is not None:
            by_channels = {v: k for k, v in CONTROL_CHANNELS.items()}
            if cfg["cam_channels"] not in by_channels:
                raise ValueError(f"{source}: cam_channels {cfg['cam_channels']} is not 6 or 7")
            kwargs["control_type"] = by_channels[cfg["cam_channels"]]
        for key in ("qk_norm", "cross_attn_norm"):
            if cfg.get(key) is False:
                raise ValueError(f"{source}: {key}=false is not supported (LingBot uses true)")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc


NAMED_CONFIGS: dict[str, ModelConfig] = {
    "lingbot-14b": ModelConfig(),
    "lingbot-14b-act": ModelConfig(control_type="act"),
    "wan-1.3b": ModelConfig(dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
    # For tests: every module of the real tree, tiny widths. head_dim 16 keeps the
    # 22/21/21 RoPE split non-trivial (c=8 pairs -> 4/2/2).
    "tiny": ModelConfig(dim=64, ffn_dim=128, num_layers=2, num_heads=4, text_dim=32,
                        text_len=16, freq_dim=32),
    # The built-in world's teacher and student (6.1M params; `lingbot_rt/world/`): 128x128
    # frames are 8x8 tokens per latent frame; prompts are short, from a closed vocabulary.
    "world": ModelConfig(dim=192, ffn_dim=576, num_layers=8, num_heads=3, text_dim=64,
                         text_len=64, freq_dim=64),
}


def model_config(name: str) -> ModelConfig:
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(NAMED_CONFIGS)}") from None


# the `CacheConfig` fields a student's schedule and a stream config carry under the same names
LAYOUT_FIELDS = ("block_frames", "sink_frames", "window_frames", "full_frames", "memory_pool")


@dataclass(frozen=True)
class CacheConfig:
    """Streaming attention layout, in latent frames.

    A block of `block_frames` attends to itself (bidirectionally), to the first
    `sink_frames` frames of the session and to the last `window_frames` frames before it.
    With the defaults a block sees 3 + 15 + 3 = 21 latent frames: exactly the 81-frame
    clips upstream trained on, so positions never leave the trained range.
    `rolling=False` is a global cache: it holds `sink_frames + window_frames` frames and
    refuses to go past them instead of evicting.

    Compressed memory: only the latest `full_frames` of the window (None: all of it) are kept
    at full resolution; the sink and the older window frames are kept with their keys and
    values averaged over `memory_pool` (rows, columns) patches of tokens, in the manner of
    FramePack's coarser context for older frames, done on the cache. Attention then reads
    fewer keys (at 720p, window 15 + sink 3, full_frames 3 and (3, 4) pools: 26,100 keys per
    query instead of 75,600); a student must be trained with the layout it streams with.
    """

    block_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 15
    rolling: bool = True
    full_frames: int | None = None
    memory_pool: tuple[int, int] = (1, 1)

    def __post_init__(self):
        if self.block_frames < 1 or self.sink_frames < 0 or self.window_frames < 0:
            raise ValueError(f"invalid cache layout {self}")
        if self.rolling and self.window_frames < 1:
            raise ValueError("a rolling cache needs window_frames >= 1")
        object.__setattr__(self, "memory_pool", tuple(self.memory_pool))
        if len(self.memory_pool) != 2 or min(self.memory_pool) < 1:
            raise ValueError(f"memory_pool must be two positive patch sides (rows, columns), got {self.memory_pool}")
        if self.full_frames is not None and not 0 <= self.full_frames <= self.window_frames:
            raise ValueError(f"full_frames must lie in [0, window_frames={self.window_frames}], got {self.full_frames}")
        if not self.rolling and self.compressed:
            raise ValueError("a global cache keeps every frame at full resolution: full_frames and memory_pool "
                             "are for rolling caches")

    @property
    def cache_frames(self) -> int:
        return self.sink_frames + self.window_frames

    @property
    def compressed(self) -> bool:
        return self.memory_pool != (1, 1) or self.recent_frames < self.window_frames

    @property
    def recent_frames(self) -> int:
        """Window frames kept at full resolution."""
        return self.window_frames if self.full_frames is None else self.full_frames

    @property
    def sink_apart(self) -> bool:
        """Whether the sink's frames are written straight into their own (full-resolution) slots;
        pooled, they pass through the full-resolution ring first."""
        return self.memory_pool == (1, 1)

    @property
    def committed_without_rewrite(self) -> int:
        """Frames a session may commit before a slot that an earlier block read is written
        again (what a block recomputed in backward needs unchanged)."""
        return (self.sink_frames if self.sink_apart else 0) + self.recent_frames

    @classmethod
    def of(cls, config) -> "CacheConfig":
        """The cache layout a config with these same fields names (`StudentSchedule`, `StreamConfig`)."""
        return cls(**{name: getattr(config, name) for name in LAYOUT_FIELDS})

    @classmethod
    def global_cache(cls, num_frames: int, block_frames: int = 3) -> "CacheConfig":
        """A cache holding a whole clip of `num_frames` latent frames (no eviction)."""
        return cls(block_frames=block_frames, sink_frames=0, window_frames=num_frames, rolling=False)
