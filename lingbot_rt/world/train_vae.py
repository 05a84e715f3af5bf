"""`lingbot-rt world train-vae`: a small Wan2.1-architecture VAE trained on the world's clips.

Same module tree as the released VAE (`lingbot_rt.model.vae`, so the pipeline streams it
unchanged), narrower (`dim` 16: 3.6M parameters). Training streams episodes: random stretches
of `episode_frames` frames of the clips, fed to a `StreamingEncoder` and `StreamingDecoder`
window by window (1 + `window_frames` frames first, then `window_frames` at a time), one
optimiser step per window, the causal-conv caches carried from window to window without
gradient (truncated backpropagation through time). The VAE so learns the state it is in at
play time, deep into a stream: trained on isolated 9- or 17-frame windows, its reconstruction
of whole 81-frame clips fell from 21 dB in the first frames to under 15 dB after one second
(`benchmarks/results/world/eval_run2.json`). Each window samples z = mu + sigma * eps, decodes
it and minimises L1 + MSE on pixels plus a small KL term that keeps the posterior near N(0, 1). Afterwards the per-channel mean and std of mu
over the data are measured and stored in the VAE's config, as Wan2.1's statistics are, so the
DiT sees unit-scale latents.

Output (`--out`): `vae.safetensors` (EMA weights), `vae_config.json` (VAEConfig fields with the
measured statistics), and the run's `checkpoint.pt` / `log.jsonl` for exact resume.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config_io import config_from_dict
from ..model.vae import StreamingDecoder, StreamingEncoder, VAEConfig, WanVAE, load_vae, save_vae
from .clips import ClipTensors, load_clip_tensors
from .latents import video_tensor
from .training import EMA, Budget, JsonlLog, load_checkpoint, optimizer_step, save_checkpoint

log = logging.getLogger(__name__)

VAE_WEIGHTS, VAE_CONFIG = "vae.safetensors", "vae_config.json"


@dataclass(frozen=True)
class VAETrainConfig:
    dim: int = 16                   # VAE base width (Wan2.1: 96)
    episode_frames: int = 81        # 1 + 4n frames streamed per episode
    window_frames: int = 8          # 4k frames per optimiser step (the episode's first window: 1 more)
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    kl_weight: float = 1e-4         # on the per-element mean KL
    steps: int = 20_000
    minutes: float | None = None    # wall-clock budget of this invocation
    ema_decay: float = 0.999
    log_every: int = 50
    save_every: int = 1000
    stats_windows: int = 64         # episodes over which the latent mean / std are measured
    seed: int = 0

    def __post_init__(self):
        if self.window_frames < 4 or self.window_frames % 4:
            raise ValueError(f"window_frames must be a positive multiple of 4, got {self.window_frames}")
        if (self.episode_frames - 1) % self.window_frames or self.episode_frames <= self.window_frames:
            raise ValueError(f"episode_frames must be 1 + a multiple of window_frames={self.window_frames}, "
                             f"got {self.episode_frames}")

    @property
    def windows_per_episode(self) -> int:
        return (self.episode_frames - 1) // self.window_frames


def sample_windows(clips: ClipTensors, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, 3, frames, H, W] in [-1, 1] from random clips and offsets."""
    device = clips.frames.device
    clip_index = torch.randint(len(clips), (batch,), generator=generator, device="cpu")
    start = torch.randint(clips.num_frames - frames + 1, (batch,), generator=generator, device="cpu")
    windows = torch.stack([clips.frames[c, s:s + frames] for c, s in zip(clip_index.tolist(), start.tolist())])
    return video_tensor(windows.to(device))


def window_loss(encoder: StreamingEncoder, decoder: StreamingDecoder, video: torch.Tensor, kl_weight: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The next window of two streams: reconstruction of a sampled posterior latent and the KL
    of q(z|x) to N(0, 1)."""
    mu, log_var = encoder.moments(video)
    log_var = log_var.clamp(-30.0, 20.0)
    z = mu + torch.randn(mu.shape, generator=generator, device=mu.device) * (0.5 * log_var).exp()
    # decode the raw latent: the normalisation is only measured after training
    recon = decoder.decode_raw(z)
    l1, mse = F.l1_loss(recon, video), F.mse_loss(recon, video)
    kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).mean()
    return {"loss": l1 + mse + kl_weight * kl, "l1": l1, "mse": mse, "kl": kl,
            "psnr": 10 * torch.log10(4.0 / mse.detach())}


@torch.no_grad()
def latent_statistics(vae: WanVAE, clips: ClipTensors, frames: int, num_windows: int,
                      generator: torch.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the encoder's mu over random windows (unnormalised), each
    encoded as one stream from its first frame."""
    mus = [vae.stream_encoder().moments(sample_windows(clips, 8, frames, generator))[0]
           for _ in range(math.ceil(num_windows / 8))]
    mu = torch.cat(mus).transpose(0, 1).flatten(1)              # [z_dim, N]
    return tuple(mu.mean(1).tolist()), tuple(mu.std(1).clamp_min(1e-3).tolist())


def train_vae(data_dir: str | Path, out_dir: str | Path, config: VAETrainConfig = VAETrainConfig(), *,
              height: int | None = None, width: int | None = None, max_clips: int | None = None,
              device: str = "cuda") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    clips = load_clip_tensors(data_dir, max_clips=max_clips, height=height, width=width, device=dev)
    if config.episode_frames > clips.num_frames:
        raise ValueError(f"episode_frames={config.episode_frames} is longer than the data: its clips have "
                         f"{clips.num_frames} frames")
    torch.backends.cudnn.benchmark = dev.type == "cuda"       # fixed window shapes: pick the fastest conv kernels
    torch.manual_seed(config.seed)
    vae = WanVAE(VAEConfig(dim=config.dim)).to(dev).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99))
    ema = EMA(vae, config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(dev).manual_seed(config.seed + 1)
    state = load_checkpoint(out, vae, ema, optimizer, generator)
    step = state["step"]
    if "noise" in state["extra"]:
        noise.set_state(state["extra"]["noise"])
    budget, logger = Budget(config.steps, config.minutes), JsonlLog(out)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    with tqdm(total=config.steps, initial=step, desc="train-vae", unit="step") as bar:
        while not budget.done(step):       # one episode: checkpoints fall between episodes
            episode = sample_windows(clips, config.batch_size, config.episode_frames, generator)
            encoder, decoder = vae.stream_encoder(), vae.stream_decoder()
            for window in range(config.windows_per_episode):
                start = 0 if window == 0 else 1 + window * config.window_frames
                stop = 1 + (window + 1) * config.window_frames
                with autocast:
                    losses = window_loss(encoder, decoder, episode[:, :, start:stop], config.kl_weight, noise)
                grad_norm = optimizer_step(vae, optimizer, ema, losses["loss"], step)
                encoder.detach_()
                decoder.detach_()
                step += 1
                bar.update(1)
                if step % config.log_every == 0:
                    record = {"step": step, "window": window, **{k: round(v.item(), 5) for k, v in losses.items()},
                              "grad_norm": round(grad_norm.item(), 4)}
                    logger.write(record)
                    bar.set_postfix(l1=record["l1"], psnr=record["psnr"])
            if step // config.save_every > (step - config.windows_per_episode) // config.save_every:
                save_checkpoint(out, step, vae, ema, optimizer, generator, {"noise": noise.get_state()})
    save_checkpoint(out, step, vae, ema, optimizer, generator, {"noise": noise.get_state()})
    final = ema.model.eval()
    mean, std = latent_statistics(final, clips, config.episode_frames, config.stats_windows,
                                  torch.Generator().manual_seed(1))
    final.config = replace(final.config, latent_mean=mean, latent_std=std)
    save_vae(final, out / VAE_WEIGHTS)
    (out / VAE_CONFIG).write_text(json.dumps(asdict(final.config), indent=2) + "\n")
    log.info("VAE at step %d written to %s", step, out)
    return out


def load_trained_vae(out_dir: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    out = Path(out_dir)
    config_path = out / VAE_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: run `lingbot-rt world train-vae` to the end first")
    config = config_from_dict(VAEConfig, json.loads(config_path.read_text()), str(config_path))
    return load_vae(out / VAE_WEIGHTS, config, dtype=dtype, device=device)
