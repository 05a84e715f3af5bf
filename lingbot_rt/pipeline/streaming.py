"""`StreamingInference`: image + prompt + actions in, decoded video frames out, block by block.

One block = `block_frames` (3) latent frames = 12 video frames (the stream's first block: 9,
since its first latent frame is the start image). Per block, for every session in the batch:

1. the block's actions are read (`actions.py`: at the block's start) and integrated into
   camera poses (`controls.poses_from_actions`, upstream's act2cam); the poses of its latent
   frames become the ray control signal (`controls.control_embedding`, fixed translation scale);
2. the I2V condition of its latent frames (mask + image latent, extended lazily with black
   frames: `ImageCondition`);
3. `rollout.generate_block`: 4 denoising passes against the session's KV cache rows, then the
   commit (no CFG: the student is distilled); fresh noise from the session's own generator,
   so a session is deterministic under its seed whatever else shares the batch;
4. the VAE decodes the block's latents with the session's streaming decoder, so its frames
   leave as soon as the block exists.

`open_session` / `denoise` / `decode` / `close_session` are the batched pieces the server's
scheduler and stages call; `stream_generate` is the single-session loop over them.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config_io import load_config
from ..model.config import CacheConfig
from ..model.controls import KEYS, VIDEO_FRAMES_PER_LATENT, control_embedding, poses_from_actions, scale_intrinsics
from ..model.dit import CausalWanModel
from ..model.image_condition import ImageCondition, load_image
from ..model.rollout import COMMIT_MODES, generate_block
from ..model.sampler import FAST_INDICES, FAST_SHIFT, FewStepSchedule
from ..model.text_encoder import TextEncoder
from ..model.tiny_decoder import TinyDecoder, TinyStreamingDecoder
from ..model.vae import SPACE_STRIDE, StreamingDecoder, WanVAE, video_to_uint8
from .actions import Actions, action_source

WASD_COLUMNS = [KEYS.index(k) for k in "wasd"]
# [fx, fy, cx, cy] of upstream's examples/00 (480x832 pixels): the camera a stream assumes
# unless told otherwise.
DEFAULT_INTRINSICS = (502.9, 502.9, 415.8, 239.8)


class CapacityError(RuntimeError):
    """No free session slot: every KV cache row is in use."""


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
DECODERS = ("vae", "tiny")      # what decodes the frames: the VAE's decoder or the release's tiny decoder


@dataclass(frozen=True)
class StreamConfig:
    """How a release streams. Sizes of None take the release's native size."""

    height: int | None = None
    width: int | None = None
    fps: int = 16
    schedule_indices: tuple[int, ...] = FAST_INDICES    # into a 1000-step schedule
    shift: float = FAST_SHIFT
    block_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 15
    full_frames: int | None = None                       # compressed memory (`CacheConfig`): window frames
    memory_pool: tuple[int, int] = (1, 1)                # kept at full resolution, patch of the pooled ones
    commit: str = "clean"                                # or "last_step": 4 forwards per block
    action_guidance: float = 0.0                         # guidance on the block's control (`generate_block`)
    compile: str = "off"                                 # torch.compile of the DiT block (off or an inductor
                                                         # mode) and of the VAE's streaming encoder and decoder
    fused_qkv: bool = False                              # one QKV GEMM per self-attention
    decoder: str = "vae"                                 # or "tiny": the release's distilled streaming decoder
    max_sessions: int = 1
    intrinsics: tuple[float, float, float, float] = DEFAULT_INTRINSICS   # in 480x832 pixels

    def __post_init__(self):
        if self.commit not in COMMIT_MODES:
            raise ValueError(f"commit must be one of {COMMIT_MODES}, got {self.commit!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.action_guidance < 0:
            raise ValueError(f"action_guidance must be >= 0, got {self.action_guidance}")
        if self.max_sessions < 1 or self.fps < 1:
            raise ValueError(f"max_sessions and fps must be >= 1, got {self.max_sessions}, {self.fps}")
        for size in (self.height, self.width):
            if size is not None and (size <= 0 or size % (2 * SPACE_STRIDE)):
                raise ValueError(f"height and width must be positive multiples of {2 * SPACE_STRIDE} "
                                 f"(VAE stride x DiT patch), got {self.height}x{self.width}")
        self.schedule()
        self.cache()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StreamConfig":
        return load_config(cls, path)

    def with_overrides(self, **fields) -> "StreamConfig":
        """This config with the given fields that are not None replaced (command-line options)."""
        return replace(self, **{name: value for name, value in fields.items() if value is not None})

    def schedule(self) -> FewStepSchedule:
        return FewStepSchedule.from_indices(self.schedule_indices, self.shift)

    def cache(self) -> CacheConfig:
        return CacheConfig.of(self)


@dataclass
class Session:
    """One stream's state. Poses are camera-to-world; the stream starts at the identity."""

    slot: int
    condition: ImageCondition
    decoder: StreamingDecoder | TinyStreamingDecoder
    generator: torch.Generator
    intrinsics: np.ndarray                     # [fx, fy, cx, cy] in pixels of the frame
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))     # after the last video frame
    latent_pose: np.ndarray | None = None      # of the last latent frame generated
    num_latent_frames: int = 0
    num_video_frames: int = 0

    @property
    def is_first_block(self) -> bool:
        return self.num_latent_frames == 0


@dataclass
class BlockPlan:
    """What one session's next block covers, and the actions that drive it."""

    first_frame: int              # video frame index of the block's first frame
    num_frames: int               # video frames it decodes to
    actions: np.ndarray           # [num_frames, 8]: row f = keys moving into that frame (0 for the image)
    poses: np.ndarray             # [num_frames, 4, 4] c2w of each of its video frames


@dataclass
class StreamBlock:
    """One decoded block of a stream."""

    index: int
    first_frame: int
    frames: np.ndarray            # uint8 [T, H, W, 3]
    actions: np.ndarray           # [T, 8] multi-hot, columns controls.KEYS
    poses: np.ndarray             # [T, 4, 4] c2w
    timings: dict[str, float]     # seconds: denoise, decode


def latent_frame_ends(num_frames: int) -> np.ndarray:
    """Indices, within a block of `num_frames` video frames, of each latent frame's last
    video frame: [0, 4, 8] for the stream's first block of 9, [3, 7, 11] for later ones."""
    return np.arange(num_frames - 1, -1, -VIDEO_FRAMES_PER_LATENT)[::-1].copy()


@torch.inference_mode()
def decode_block(decoder: StreamingDecoder | TinyStreamingDecoder, latents: torch.Tensor) -> np.ndarray:
    """The next block of one stream: latents [16, F, h, w] -> uint8 frames [T, H, W, 3]."""
    return video_to_uint8(decoder.decode(latents[None])[0]).cpu().numpy()


class StreamingInference:
    """A release's DiT, VAE and text encoder streaming up to `max_sessions` sessions."""

    def __init__(self, dit: CausalWanModel, vae: WanVAE, text_encoder: TextEncoder, config: StreamConfig,
                 decoder: TinyDecoder | None = None):
        """`decoder`: decode the frames with this small decoder instead of the VAE's (the VAE
        still encodes the start image and the I2V condition)."""
        if config.height is None or config.width is None:
            raise ValueError("StreamingInference needs the frame size: set StreamConfig height and width")
        if dit.cfg.text_dim != text_encoder.model.cfg.dim:
            raise ValueError(f"text encoder width {text_encoder.model.cfg.dim} does not match the DiT's "
                             f"text_dim {dit.cfg.text_dim}")
        if dit.cfg.control_type is None:
            raise ValueError("this DiT has no camera path: it cannot be steered")
        self.dit, self.vae, self.text_encoder, self.config = dit.eval(), vae.eval(), text_encoder, config
        self.decoder = None if decoder is None else decoder.eval()
        if config.fused_qkv:                 # inference transforms of the DiT this pipeline owns from here
            dit.fuse_qkv()
        if config.compile != "off":          # the DiT's blocks in the mode asked; the VAE's streaming
            dit.compile_blocks(mode=None if config.compile == "default" else config.compile)
            vae.compile_streaming()          # encoder and decoder in the default mode (their cache lists
                                             # are mutated: no CUDA graphs)
        self.height, self.width = config.height, config.width
        self.latent_hw = (self.height // SPACE_STRIDE, self.width // SPACE_STRIDE)
        self.schedule = config.schedule()
        self.cache = dit.new_cache(config.cache(), config.max_sessions, self.latent_hw)
        self._free_slots = list(range(config.max_sessions))
        self.intrinsics = scale_intrinsics(np.array(config.intrinsics), self.height, self.width)

    @classmethod
    def from_release(cls, root: str | Path, config: StreamConfig | None = None, *, device="cpu",
                     dtype: torch.dtype = torch.bfloat16, vae_dtype: torch.dtype | None = None,
                     text_device=None) -> "StreamingInference":
        """Load a release root (`pipeline/release.py`), streamed as `config` says (default: as
        its manifest says); the frame size defaults to its native one."""
        from .release import load_release, load_release_decoder
        release = load_release(root, device=device, dtype=dtype, vae_dtype=vae_dtype, text_device=text_device)
        config = config or release.manifest.stream_config()
        config = replace(config, height=config.height or release.manifest.height,
                         width=config.width or release.manifest.width)
        decoder = None
        if config.decoder == "tiny":
            decoder = load_release_decoder(root, device=device, dtype=vae_dtype or dtype)
        return cls(release.dit, release.vae, release.text_encoder, config, decoder=decoder)

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    # ---- sessions ------------------------------------------------------------------------
    @torch.inference_mode()
    def open_session(self, image, prompt: str, seed: int = 0) -> Session:
        """Check and encode the start image, encode the prompt, claim a cache row."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        pixels = load_image(image, self.height, self.width)
        if not self._free_slots:
            raise CapacityError(f"all {self.config.max_sessions} session slots are in use")
        features = self.text_encoder.encode([prompt])[0][: self.dit.cfg.text_len]
        condition = ImageCondition(self.vae, pixels.to(self.vae.dtype), self.device)
        slot = self._free_slots.pop(0)
        self.cache.reset([slot])
        self.dit.start_sessions(self.cache, [slot], features.to(self.device)[None])
        generator = torch.Generator(self.device).manual_seed(seed)
        decoder = (self.decoder or self.vae).stream_decoder()
        return Session(slot, condition, decoder, generator, self.intrinsics.copy())

    def close_session(self, session: Session) -> None:
        if session.slot in self._free_slots:
            raise ValueError(f"session in slot {session.slot} is already closed")
        self.cache.reset([session.slot])
        self._free_slots.append(session.slot)

    # ---- one block -----------------------------------------------------------------------
    def actions_needed(self, session: Session) -> tuple[int, int]:
        """(first video frame, number of actions) of the session's next block."""
        num_video = VIDEO_FRAMES_PER_LATENT * self.config.block_frames
        if session.is_first_block:
            return 1, num_video - VIDEO_FRAMES_PER_LATENT   # frame 0 is the image: 1 + 4 (n - 1) frames
        return session.num_video_frames, num_video

    def plan(self, session: Session, actions: np.ndarray) -> BlockPlan:
        """Integrate the block's actions into the poses of its video frames."""
        first_frame, num_actions = self.actions_needed(session)
        if actions.shape != (num_actions, len(KEYS)):
            raise ValueError(f"the next block needs actions [{num_actions}, {len(KEYS)}], got {list(actions.shape)}")
        poses = poses_from_actions(actions, session.pose)            # [n + 1, 4, 4], starting pose first
        if session.is_first_block:
            return BlockPlan(0, num_actions + 1, np.concatenate([np.zeros((1, len(KEYS)), np.float32), actions]),
                             poses)
        return BlockPlan(first_frame, num_actions, actions, poses[1:])

    def _control(self, session: Session, plan: BlockPlan) -> torch.Tensor:
        """Ray control of the block's latent frames: each at its last video frame's pose."""
        last_frames = latent_frame_ends(plan.num_frames)
        wasd = plan.actions[last_frames][:, WASD_COLUMNS] if self.dit.cfg.control_type == "act" else None
        return control_embedding(plan.poses[last_frames], self.intrinsics, self.height, self.width,
                                 self.dit.cfg.control_type, previous_pose=session.latent_pose, wasd=wasd,
                                 device=self.device)

    @torch.inference_mode()
    def denoise(self, sessions: list[Session], plans: list[BlockPlan]) -> torch.Tensor:
        """The next block of every session, batched: latents [B, 16, block_frames, h, w].
        Sessions may sit at different positions in their streams."""
        if len(sessions) != len(plans) or not sessions:
            raise ValueError(f"need one plan per session, got {len(sessions)} sessions and {len(plans)} plans")
        frames = self.config.block_frames
        y = torch.stack([s.condition.block(s.num_latent_frames, frames) for s in sessions])
        control = torch.stack([self._control(s, p) for s, p in zip(sessions, plans)])
        noise = torch.stack([torch.randn(self.dit.cfg.out_dim, frames, *self.latent_hw, generator=s.generator,
                                         device=self.device) for s in sessions])
        latents = generate_block(self.dit, self.cache, [s.slot for s in sessions], noise, self.schedule,
                                 y=y, control=control, generator=[s.generator for s in sessions],
                                 commit=self.config.commit, action_guidance=self.config.action_guidance)
        for session, plan in zip(sessions, plans):
            session.pose = session.latent_pose = plan.poses[-1]
            session.num_latent_frames += frames
            session.num_video_frames += plan.num_frames
        return latents

    def decode(self, session: Session, latents: torch.Tensor) -> np.ndarray:
        """One session's block latents [16, F, h, w] -> uint8 frames [T, H, W, 3]."""
        return decode_block(session.decoder, latents)

    def synchronize(self) -> None:
        """Wait for the device (timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- one stream ----------------------------------------------------------------------
    def stream_generate(self, image, prompt: str, actions: Actions = None, *, num_frames: int | None = None,
                        seed: int = 0) -> Iterator[StreamBlock]:
        """Yield the stream's decoded blocks. `actions`: an action string ("w-10,d-5"), a
        multi-hot array [F, 8], a callable returning the keys held now, or None (no keys).
        Length: `num_frames` if given, else a script's F + 1 frames, else unbounded."""
        source = action_source(actions)
        limit = num_frames if num_frames is not None else source.num_frames
        if limit is not None and limit < 1:
            raise ValueError(f"num_frames must be >= 1, got {limit}")
        session = self.open_session(image, prompt, seed)
        try:
            index = 0
            while limit is None or session.num_video_frames < limit:
                start = time.perf_counter()
                plan = self.plan(session, source.block(*self.actions_needed(session)))
                latents = self.denoise([session], [plan])
                self.synchronize()
                denoised = time.perf_counter()
                frames = self.decode(session, latents[0])
                decoded = time.perf_counter()
                keep = plan.num_frames if limit is None else min(plan.num_frames, limit - plan.first_frame)
                yield StreamBlock(index, plan.first_frame, frames[:keep], plan.actions[:keep], plan.poses[:keep],
                                  {"denoise": denoised - start, "decode": decoded - denoised})
                index += 1
        finally:
            self.close_session(session)
