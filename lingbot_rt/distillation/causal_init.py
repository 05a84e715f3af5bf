"""Causal initialisation: the bidirectional teacher's weights made into a block-causal 4-step
student before DMD.

    lingbot-rt distill causal-init --teacher T --data D --vae V --pairs P --out runs/init

Both objectives run the student in the teacher-forcing layout (`forward_teacher_forcing`):
each block sees the *clean* earlier blocks, as the committed KV cache holds them when it
streams, and itself at its noise level; every block draws its own level.

* "ode" (CausVid / Self-Forcing's ODE initialisation, with Causal Forcing's clean context):
  for block b at recorded step k_b, input xt[k_b] of the block, context = the teacher's end
  point x0; the student's x0 prediction x - sigma v regresses onto the end point (MSE).
* "teacher_forcing" (Causal Forcing's AR-diffusion stage): flow matching on the real latents,
  clean context = the real earlier blocks, sigma = shift(U(0, 1)) per block, v regressed onto
  eps - x0.

The run directory holds the resumable `checkpoint.pt`, `log.jsonl`, `train_config.json` and
`student/` (the EMA weights, a model directory).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model.checkpoint import load_model, save_model
from ..model.dit import CausalWanModel
from ..model.sampler import NUM_TRAIN_TIMESTEPS, shift_sigma
from ..world.latents import ConditionedClips
from ..world.training import EMA, Budget, JsonlLog, load_checkpoint, optimizer_step, save_checkpoint
from .config import CausalInitConfig, save_student_schedule
from .ode_pairs import ODEPairs, check_pairs_fit

log = logging.getLogger(__name__)

STUDENT_DIR = "student"


def per_frame(values: torch.Tensor, block_frames: int, num_frames: int) -> torch.Tensor:
    """Per-block values [B, num_blocks] -> per latent frame [B, num_frames]."""
    return values.repeat_interleave(block_frames, dim=1)[:, :num_frames]


def ode_regression_loss(student: CausalWanModel, data: ConditionedClips, pairs: ODEPairs, index: torch.Tensor,
                        block_frames: int, generator: torch.Generator) -> torch.Tensor:
    xt = pairs.xt[index].float()                                   # [B, K, 16, F, h, w]
    x0 = pairs.x0[index].float()
    clip = pairs.clip_index[index].to(data.x0.device)
    batch, num_steps, _, num_frames = xt.shape[:4]
    num_blocks = -(-num_frames // block_frames)
    step = torch.randint(num_steps, (batch, num_blocks), generator=generator, device=xt.device)
    step_per_frame = per_frame(step, block_frames, num_frames)    # [B, F]
    gather = step_per_frame[:, None, None, :, None, None].expand(-1, 1, *xt.shape[2:])
    x_noisy = xt.gather(1, gather).squeeze(1)                      # each frame at its block's step
    sigmas = torch.tensor(pairs.sigmas, device=xt.device)[step_per_frame]
    timesteps = torch.tensor(pairs.timesteps, device=xt.device)[step_per_frame]
    v = student.forward_teacher_forcing(x0, x_noisy, timesteps, data.context[clip], data.y[clip],
                                        data.control[clip], block_frames=block_frames)
    prediction = x_noisy - sigmas[:, None, :, None, None] * v
    return F.mse_loss(prediction, x0)


def teacher_forcing_loss(student: CausalWanModel, data: ConditionedClips, index: torch.Tensor, block_frames: int,
                         shift: float, generator: torch.Generator) -> torch.Tensor:
    x0 = data.x0[index].float()
    batch, _, num_frames = x0.shape[:3]
    num_blocks = -(-num_frames // block_frames)
    u = torch.rand(batch, num_blocks, generator=generator, device=x0.device)
    sigma = per_frame(shift_sigma(u, shift), block_frames, num_frames)     # [B, F]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    s = sigma[:, None, :, None, None]
    x_noisy = (1 - s) * x0 + s * noise
    v = student.forward_teacher_forcing(x0, x_noisy, sigma * NUM_TRAIN_TIMESTEPS, data.context[index],
                                        data.y[index], data.control[index], block_frames=block_frames)
    return F.mse_loss(v, noise - x0)


def train_causal_init(teacher_dir: str | Path, data: ConditionedClips, pairs: ODEPairs | None, out_dir: str | Path,
                      config: CausalInitConfig = CausalInitConfig(), init_dir: str | Path | None = None) -> Path:
    """Train the student (from `init_dir`'s weights if given, else the teacher's); returns the
    run directory. `pairs` is needed by the "ode" objective."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = data.x0.device
    student_cfg = config.student
    if config.objective == "ode":
        if pairs is None:
            raise ValueError("the ode objective needs ODE pairs (--pairs)")
        check_pairs_fit(pairs, data, student_cfg.schedule().sigmas)
    torch.manual_seed(config.seed)
    student = load_model(init_dir or teacher_dir, dtype=torch.float32, device=device).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99))
    ema = EMA(student, config.ema_decay)
    generator = torch.Generator(device).manual_seed(config.seed)
    step = load_checkpoint(out, student, ema, optimizer, generator)["step"]
    budget, logger = Budget(config.steps, config.minutes), JsonlLog(out)
    (out / "train_config.json").write_text(json.dumps({**asdict(config), "teacher": str(teacher_dir),
                                                        "init": str(init_dir) if init_dir else None}, indent=2) + "\n")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    size = len(pairs) if config.objective == "ode" else len(data)
    with tqdm(total=config.steps, initial=step, desc=f"causal-init ({config.objective})", unit="step") as bar:
        while not budget.done(step):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
            index = torch.randint(size, (config.batch_size,), generator=generator, device=device)
            with autocast:
                if config.objective == "ode":
                    loss = ode_regression_loss(student, data, pairs, index, student_cfg.block_frames, generator)
                else:
                    loss = teacher_forcing_loss(student, data, index, student_cfg.block_frames, student_cfg.shift,
                                                generator)
            grad_norm = optimizer_step(student, optimizer, ema, loss, step)
            step += 1
            bar.update(1)
            if step % config.log_every == 0:
                logger.write({"step": step, "loss": round(loss.item(), 5), "grad_norm": round(grad_norm.item(), 4)})
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % config.save_every == 0:
                save_checkpoint(out, step, student, ema, optimizer, generator)
    save_checkpoint(out, step, student, ema, optimizer, generator)
    save_model(ema.model, out / STUDENT_DIR, class_name="WanModelFast")
    save_student_schedule(config.student, out / STUDENT_DIR)
    log.info("causal student at step %d written to %s", step, out / STUDENT_DIR)
    return out
