"""The DMD training loop: a block-causal student trained on its own streamed rollouts against
a frozen bidirectional teacher (real score) and a trained bidirectional critic (fake score).

    lingbot-rt distill dmd --student runs/init/student --teacher T --data D --vae V --out runs/dmd

One step (Self-Forcing's `trainer/distillation.py` order):
  1. a shared exit step and the clips of the step's batch;
  2. every `update_ratio`-th step, the generator: a rollout with gradient at the exit step,
     the DMD loss (`dmd.py`), an update (averaged over ranks, clipped), the EMA;
     the other steps roll out without gradient;
  3. the critic: flow matching on the (detached) rollout, an update.

Distributed: data-parallel over torch.distributed ranks (Ray Train's TorchTrainer or torchrun
set the process group up; `distributed.py`). The student's rollout calls `forward_block`
many times per step and writes the KV cache between them, which DDP's forward-hooked reducer
does not follow, so gradients are averaged explicitly after each backward (one all-reduce
per parameter tensor; small next to a rollout at these sizes). Every random draw of a step
comes from generators seeded by (seed, step) and (seed, step, rank): resuming at step n draws
what an uninterrupted run draws, on every rank, without saving RNG states.

Run directory: `checkpoint.pt` (student, EMA, critic, both optimisers, step; atomic),
`log.jsonl`, `train_config.json`, `student/` (the EMA weights, a model directory).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..model.checkpoint import load_model, save_model
from ..model.dit import CausalWanModel
from ..world.latents import ConditionedClips
from ..world.training import EMA, Budget, JsonlLog
from .causal_init import STUDENT_DIR
from .config import DMDConfig
from .distributed import Ranks, average_gradients
from .dmd import critic_loss, dmd_loss, sample_sigma
from .self_forcing import student_rollout

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def step_generator(seed: int, step: int, device, rank: int | None = None) -> torch.Generator:
    """The generator of one step: shared by all ranks (rank None) or the rank's own."""
    stream = 0 if rank is None else rank + 1
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1_009 + stream)


class DMDTrainer:
    """Student, EMA, critic, teacher and optimisers of one run; `train` runs it to its budget."""

    def __init__(self, student_dir: str | Path, teacher_dir: str | Path, data: ConditionedClips, out_dir: str | Path,
                 config: DMDConfig = DMDConfig(), critic_dir: str | Path | None = None, ranks: Ranks = Ranks()):
        self.config, self.data, self.ranks, self.out = config, data, ranks, Path(out_dir)
        self.device = data.x0.device
        torch.manual_seed(config.seed)
        self.student = load_model(student_dir, dtype=torch.float32, device=self.device).train()
        self.teacher = load_model(teacher_dir, dtype=torch.float32, device=self.device).eval().requires_grad_(False)
        self.critic = load_model(critic_dir or teacher_dir, dtype=torch.float32, device=self.device).train()
        for name, model in (("student", self.student), ("critic", self.critic)):
            if model.cfg != self.teacher.cfg:
                raise ValueError(f"the {name} ({model.cfg}) and the teacher ({self.teacher.cfg}) differ in shape")
        self.ema = EMA(self.student, config.ema_decay)
        self.generator_optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.generator_lr,
                                                     betas=config.betas, weight_decay=config.weight_decay)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr,
                                                  betas=config.betas, weight_decay=config.weight_decay)
        self.schedule, self.cache_cfg = config.student.schedule(), config.student.cache()
        self.step = 0
        self.sources = {"student": str(student_dir), "teacher": str(teacher_dir),
                        "critic": str(critic_dir or teacher_dir)}

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "student": self.student.state_dict(), "ema": self.ema.model.state_dict(),
                "critic": self.critic.state_dict(), "generator_optimizer": self.generator_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict()}

    def save(self) -> None:
        """Rank 0 writes the checkpoint (a temporary file, then renamed: never torn)."""
        if self.ranks.rank != 0:
            return
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.student.load_state_dict(state["student"])
        self.ema.model.load_state_dict(state["ema"])
        self.critic.load_state_dict(state["critic"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.step = state["step"]
        return True

    # ---- one step -----------------------------------------------------------------------
    def _update(self, model: CausalWanModel, optimizer, loss: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model, self.ranks)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        return grad_norm

    def train_step(self) -> dict:
        config, data, device = self.config, self.data, self.device
        shared = step_generator(config.seed, self.step, device)
        local = step_generator(config.seed, self.step, device, self.ranks.rank)
        exit_step = int(torch.randint(len(self.schedule.sigmas), (1,), generator=shared, device=device))
        everyone = torch.randint(len(data), (config.batch_size * self.ranks.world_size,), generator=shared,
                                 device=device)
        index = everyone[self.ranks.rank * config.batch_size:(self.ranks.rank + 1) * config.batch_size]
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        shift, low, high = config.student.shift, config.min_sigma, config.max_sigma
        record = {"step": self.step + 1, "exit_step": exit_step}
        generator_step = self.step % config.update_ratio == 0
        with autocast, torch.set_grad_enabled(generator_step):
            x = student_rollout(self.student, data.context[index], data.y[index], data.control[index],
                                self.schedule, self.cache_cfg, local, exit_step=exit_step)
        if generator_step:
            sigma = sample_sigma(len(index), shift, low, high, local, device)
            noise = torch.randn(x.shape, generator=local, device=device)
            with autocast:
                loss, stats = dmd_loss(x, self.teacher, self.critic, data, index, sigma, noise,
                                       config.student.guidance)
            grad_norm = self._update(self.student, self.generator_optimizer, loss)
            self.ema.update(self.student, self.step // config.update_ratio)
            record |= {"generator_loss": round(loss.item(), 6), "generator_grad_norm": round(grad_norm.item(), 4),
                       **{k: round(v, 5) for k, v in stats.items()}}
        sigma = sample_sigma(len(index), shift, low, high, local, device)
        noise = torch.randn(x.shape, generator=local, device=device)
        with autocast:
            loss = critic_loss(self.critic, x, data, index, sigma, noise)
        grad_norm = self._update(self.critic, self.critic_optimizer, loss)
        self.step += 1
        return record | {"critic_loss": round(loss.item(), 6), "critic_grad_norm": round(grad_norm.item(), 4)}

    # ---- the run ------------------------------------------------------------------------
    def train(self, report: Callable[[dict], None] | None = None, progress: bool = True) -> Path:
        """Resume if the run directory has a checkpoint, train to the budget, write `student/`."""
        from tqdm import tqdm
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume():
            log.info("resumed %s at step %d", self.out, self.step)
        budget, logger = Budget(config.steps, config.minutes), JsonlLog(self.out)
        if self.ranks.rank == 0:
            (self.out / "train_config.json").write_text(json.dumps(
                {**asdict(config), **self.sources, "world_size": self.ranks.world_size}, indent=2) + "\n")
        show = progress and self.ranks.rank == 0
        with tqdm(total=config.steps, initial=self.step, desc="dmd", unit="step", disable=not show) as bar:
            while not self.ranks.agree_done(budget.done(self.step)):
                record = self.train_step()
                bar.update(1)
                if self.step % config.log_every == 0:
                    if self.ranks.rank == 0:
                        logger.write(record)
                        bar.set_postfix(critic=record["critic_loss"])
                    if report is not None:        # on every rank: Ray Train's report is collective
                        report(record)
                if self.step % config.save_every == 0:
                    self.save()
        self.save()
        if self.ranks.rank == 0:
            save_model(self.ema.model, self.out / STUDENT_DIR, class_name="WanModelFast")
            log.info("DMD student at step %d written to %s", self.step, self.out / STUDENT_DIR)
        return self.out
