"""`lingbot-rt world train-decoder`: distil the world VAE's decoder into a `TinyDecoder`.

Episodes of the world's clips are encoded by the frozen VAE (posterior means, normalised as
the DiT sees them) and decoded by it in one stream: the target. The tiny decoder streams the
same latents block by block (`block_latents` latent frames per optimiser step, its memory
carried from block to block without gradient, as at play time) and minimises L1 + MSE to the
target. At the end `evaluate_decoder` measures, on held-out clips, the tiny decoder's PSNR
against the VAE's decode and both against the rendered frames.

Output (`--out`): `decoder.safetensors` + `decoder_config.json` (EMA weights, loaded by
`model.tiny_decoder.load_tiny_decoder`), `eval.json`, and the run's `checkpoint.pt` /
`log.jsonl` for exact resume.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model.tiny_decoder import TinyDecoder, save_tiny_decoder, tiny_decoder_config
from ..model.vae import TIME_STRIDE, WanVAE
from .clips import ClipTensors, load_clip_tensors
from .latents import video_tensor
from .train_vae import load_trained_vae, sample_windows
from .training import EMA, Budget, JsonlLog, load_checkpoint, optimizer_step, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderTrainConfig:
    decoder: str = "world"          # a named TinyDecoderConfig
    episode_latents: int = 21       # latent frames per episode (81 frames)
    block_latents: int = 3          # latent frames per optimiser step: the streaming block
    batch_size: int = 32
    lr: float = 1e-3
    steps: int = 20_000
    minutes: float | None = None
    ema_decay: float = 0.999
    log_every: int = 50
    save_every: int = 1000
    seed: int = 0

    def __post_init__(self):
        tiny_decoder_config(self.decoder)
        if self.block_latents < 1 or self.episode_latents % self.block_latents:
            raise ValueError(f"episode_latents ({self.episode_latents}) must be a multiple of block_latents "
                             f"({self.block_latents})")

    @property
    def episode_frames(self) -> int:
        return 1 + TIME_STRIDE * (self.episode_latents - 1)

    @property
    def blocks_per_episode(self) -> int:
        return self.episode_latents // self.block_latents


@torch.no_grad()
def vae_targets(vae: WanVAE, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Video [B, 3, F, H, W] in [-1, 1] -> (normalised latents of its posterior means, the
    VAE's streaming decode of them clamped to [-1, 1]), each as one stream from frame 0."""
    mu, _ = vae.stream_encoder().moments(video)
    mean, inv_std = vae.latent_stats(mu.device)
    latents = (mu - mean) * inv_std
    return latents, vae.stream_decoder().decode(latents)


def block_frames(index: int, block_latents: int) -> slice:
    """The frames a stream's block `index` of `block_latents` latent frames decodes to."""
    stop = 1 + TIME_STRIDE * ((index + 1) * block_latents - 1)
    start = 0 if index == 0 else 1 + TIME_STRIDE * (index * block_latents - 1)
    return slice(start, stop)


@torch.no_grad()
def evaluate_decoder(decoder: TinyDecoder, vae: WanVAE, clips: ClipTensors, block_latents: int,
                     batch_size: int = 8) -> dict:
    """PSNR of the mean squared error over every pixel of the held-out clips, each decoded as
    one stream in blocks: tiny vs the VAE's decode, tiny vs the rendered frames, the VAE vs the
    rendered frames."""
    pairs = ("tiny_vs_vae", "tiny_vs_frames", "vae_vs_frames")
    squared_error = dict.fromkeys(pairs, 0.0)
    device = next(decoder.parameters()).device
    for start in range(0, len(clips), batch_size):
        video = video_tensor(clips.frames[start:start + batch_size].to(device))
        latents, target = vae_targets(vae, video)
        stream = decoder.stream_decoder()
        tiny = torch.cat([stream.decode(latents[:, :, i:i + block_latents])
                          for i in range(0, latents.shape[2], block_latents)], 2)
        for name, (a, b) in zip(pairs, ((tiny, target), (tiny, video), (target, video))):
            squared_error[name] += F.mse_loss(a.float(), b.float(), reduction="sum").item()
    pixels = clips.frames.numel()
    return {"clips": len(clips), "frames": clips.num_frames, "block_latents": block_latents,
            **{f"psnr_{name}": round(10 * math.log10(4.0 / (error / pixels)), 3)
               for name, error in squared_error.items()}}


def _clip_range(clips: ClipTensors, index: slice) -> ClipTensors:
    return ClipTensors(clips.frames[index], clips.poses[index], clips.intrinsics[index], clips.keys[index],
                       clips.prompts[index], clips.paths[index])


def train_decoder(data_dir: str | Path, vae_dir: str | Path, out_dir: str | Path,
                  config: DecoderTrainConfig = DecoderTrainConfig(), *, max_clips: int | None = None,
                  heldout_clips: int = 16, device: str = "cuda") -> Path:
    """Train (or resume) a tiny decoder on the first clips of `data_dir`, evaluate it on the last
    `heldout_clips`, and write it to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    clips = load_clip_tensors(data_dir, max_clips=max_clips, device="cpu")
    if heldout_clips >= len(clips):
        raise ValueError(f"{data_dir}: {len(clips)} clips leave none to train on after {heldout_clips} held out")
    if config.episode_frames > clips.num_frames:
        raise ValueError(f"episode_latents={config.episode_latents} needs {config.episode_frames} frames; "
                         f"the clips have {clips.num_frames}")
    train, heldout = _clip_range(clips, slice(None, -heldout_clips)), _clip_range(clips, slice(-heldout_clips, None))
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    torch.manual_seed(config.seed)
    vae = load_trained_vae(vae_dir, device=dev).requires_grad_(False)
    decoder = TinyDecoder(tiny_decoder_config(config.decoder)).to(dev).train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = EMA(decoder, config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed)
    state = load_checkpoint(out, decoder, ema, optimizer, generator)
    step = state["step"]
    budget, logger = Budget(config.steps, config.minutes), JsonlLog(out)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    with tqdm(total=config.steps, initial=step, desc="train-decoder", unit="step") as bar:
        while not budget.done(step):        # one episode: checkpoints fall between episodes
            video = sample_windows(train, config.batch_size, config.episode_frames, generator).to(dev)
            with autocast:
                latents, target = vae_targets(vae, video)
            stream = decoder.stream_decoder()
            for index in range(config.blocks_per_episode):
                block = latents[:, :, index * config.block_latents:(index + 1) * config.block_latents]
                with autocast:
                    frames = stream.decode_raw(block)
                goal = target[:, :, block_frames(index, config.block_latents)]
                l1, mse = F.l1_loss(frames, goal), F.mse_loss(frames, goal)
                grad_norm = optimizer_step(decoder, optimizer, ema, l1 + mse, step)
                stream.detach_()
                step += 1
                bar.update(1)
                if step % config.log_every == 0:
                    record = {"step": step, "block": index, "l1": round(l1.item(), 5),
                              "psnr": round(10 * torch.log10(4.0 / mse.detach()).item(), 3),
                              "grad_norm": round(grad_norm.item(), 4)}
                    logger.write(record)
                    bar.set_postfix(l1=record["l1"], psnr=record["psnr"])
            if step // config.save_every > (step - config.blocks_per_episode) // config.save_every:
                save_checkpoint(out, step, decoder, ema, optimizer, generator)
    save_checkpoint(out, step, decoder, ema, optimizer, generator)
    final = ema.model.eval()
    save_tiny_decoder(final, out)
    report = {"step": step, "params": final.num_params(),
              **evaluate_decoder(final, vae, heldout, config.block_latents)}
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("tiny decoder at step %d written to %s: %s", step, out, report)
    return out
