"""`lingbot-rt world train-teacher`: the built-in world's bidirectional teacher.

The same DiT code as LingBot-World (`CausalWanModel`, whole-clip bidirectional attention, the
`world` config: 6.1M parameters), I2V (mask + image latent) and cam-ray control, trained with
flow matching on the world's clips: x_t = (1 - s) x0 + s eps, the DiT predicts v = eps - x0,
s = shift(u), u ~ U(0, 1), MSE. The prompt is dropped (replaced by the empty prompt's
features) and the control zeroed, each with probability 0.1, so sampling can guide on both
(`sampler.sample_euler`, 50 steps). AdamW, warm-up, grad clipping, bf16 autocast over fp32
weights, EMA; exact resume from `checkpoint.pt`.

`--init DIR` starts a new run from an earlier run's weights (a model directory, bf16 as
written): a longer run across machines that can carry back only the final weights.

Output (`--out`): `teacher/` (a diffusers model directory of the EMA weights, bf16), the run's
`checkpoint.pt`, `log.jsonl`, `train_config.json`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model.checkpoint import load_model, save_model
from ..model.config import model_config
from ..model.dit import CausalWanModel
from ..model.sampler import NUM_TRAIN_TIMESTEPS, shift_sigma
from .latents import ConditionedClips
from .training import EMA, Budget, JsonlLog, load_checkpoint, optimizer_step, save_checkpoint

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher"


@dataclass(frozen=True)
class TeacherTrainConfig:
    model: str = "world"            # named ModelConfig
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 0.01
    shift: float = 3.0              # training timestep shift (sampling uses the same)
    text_dropout: float = 0.1
    control_dropout: float = 0.1
    steps: int = 30_000
    minutes: float | None = None
    ema_decay: float = 0.999
    log_every: int = 50
    save_every: int = 1000
    seed: int = 0
    init: str | None = None         # a model directory to start from (a run that has no checkpoint yet)


def flow_matching_loss(model: CausalWanModel, data: ConditionedClips, index: torch.Tensor, config: TeacherTrainConfig,
                       generator: torch.Generator) -> torch.Tensor:
    device = data.x0.device
    x0 = data.x0[index].float()
    batch = x0.shape[0]
    u = torch.rand(batch, generator=generator, device=device)
    sigma = shift_sigma(u, config.shift)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    drop_text = torch.rand(batch, generator=generator, device=device) < config.text_dropout
    drop_control = torch.rand(batch, generator=generator, device=device) < config.control_dropout
    context = torch.where(drop_text.view(-1, 1, 1), data.empty_context, data.context[index])
    control = data.control[index] * (~drop_control).view(-1, 1, 1, 1, 1)
    v = model(x_t, sigma * NUM_TRAIN_TIMESTEPS, context, data.y[index], control)
    return F.mse_loss(v, noise - x0)


def _start_from(model: CausalWanModel, ema: EMA, model_dir: str) -> None:
    """Warm start: the weights of an earlier run's model directory, in the model and its EMA."""
    start = load_model(model_dir, dtype=torch.float32)
    if start.cfg != model.cfg:
        raise ValueError(f"--init {model_dir} holds a {start.cfg} model, not the {model.cfg} being trained")
    model.load_state_dict(start.state_dict())
    ema.model.load_state_dict(start.state_dict())
    log.info("starting from the weights in %s", model_dir)


def train_teacher(data: ConditionedClips, out_dir: str | Path, config: TeacherTrainConfig = TeacherTrainConfig(),
                  ) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = data.x0.device
    torch.manual_seed(config.seed)
    model = CausalWanModel(model_config(config.model)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99))
    ema = EMA(model, config.ema_decay)
    generator = torch.Generator(device).manual_seed(config.seed)
    step = load_checkpoint(out, model, ema, optimizer, generator)["step"]
    if step == 0 and config.init is not None:
        _start_from(model, ema, config.init)
    budget, logger = Budget(config.steps, config.minutes), JsonlLog(out)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with tqdm(total=config.steps, initial=step, desc="train-teacher", unit="step") as bar:
        while not budget.done(step):
            for group in optimizer.param_groups:          # linear warm-up, then constant
                group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
            index = torch.randint(len(data), (config.batch_size,), generator=generator, device=device)
            with autocast:
                loss = flow_matching_loss(model, data, index, config, generator)
            grad_norm = optimizer_step(model, optimizer, ema, loss, step)
            step += 1
            bar.update(1)
            if step % config.log_every == 0:
                logger.write({"step": step, "loss": round(loss.item(), 5), "grad_norm": round(grad_norm.item(), 4),
                              "lr": optimizer.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % config.save_every == 0:
                save_checkpoint(out, step, model, ema, optimizer, generator)
    save_checkpoint(out, step, model, ema, optimizer, generator)
    save_model(ema.model.to(torch.bfloat16), out / TEACHER_DIR, class_name="WanModel")
    ema.model.float()
    log.info("teacher at step %d written to %s", step, out / TEACHER_DIR)
    return out
