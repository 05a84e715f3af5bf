"""The DMD training loop: a block-causal student trained on its own streamed rollouts against
a frozen bidirectional teacher (real score) and a trained bidirectional critic (fake score).

    lingbot-rt distill dmd --student runs/init/student --teacher T --data D --vae V --out runs/dmd

One step (Self-Forcing's `trainer/distillation.py` order):
  1. a shared exit step and the clips of the step's batch;
  2. every `update_ratio`-th step, the generator: a rollout with gradient at the exit step,
     the DMD loss (`dmd.py`; with `rollout_frames`, on a window of a longer rollout:
     `long_horizon.py`; plus `data_loss_weight` x the teacher-forcing flow-matching loss
     on the batch's real clips, `causal_init.py`), an update (averaged over ranks, clipped), the EMA;
     the other steps roll out without gradient;
  3. the critic: flow matching on the (detached) rollout, an update.

Distributed: data-parallel over torch.distributed ranks (Ray Train's TorchTrainer or torchrun
set the process group up; `distributed.py`), in one of two layouts (`config.strategy`,
`sharding.py`):
* `ddp`: every rank holds the three models whole. The student's rollout calls `forward_block`
  (not `forward`) many times per step and writes the KV cache between the calls; DDP's reducer
  is armed by `forward` and expects one forward per backward, so it would not follow: gradients
  are averaged explicitly after each backward (one all-reduce per parameter tensor; small next
  to a rollout at these sizes). The EMA is a whole copy on the device.
* `fsdp`: FSDP2 shards of the student, critic and teacher, loaded straight into shards;
  gradients are reduce-scattered in backward, the EMA is sharded like the student.
Both compute in bf16 on GPUs (autocast; FSDP2's param dtype) and fp32 on the CPU, and may
checkpoint activations per DiT block (`config.activation_checkpointing`). Every random draw of
a step comes from generators seeded by (seed, step) and (seed, step, rank): resuming at step n
draws what an uninterrupted run draws, on every rank, without saving RNG states.

Run directory: `checkpoint/step_N/` (student, EMA, critic, both optimisers, step: a
torch.distributed.checkpoint save, sharded per rank and keyed by parameter names, so it loads
into another world size (tested: 2 ranks into 1); complete once its `.metadata` exists, older
saves are removed after a complete one), `log.jsonl`, `train_config.json`, `student/`
(the EMA weights, a model directory).
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from ..model.checkpoint import load_model, save_model
from ..model.dit import CausalWanModel
from ..model.vae import WanVAE
from ..world.latents import ConditionedClips
from ..world.training import EMA, Budget, JsonlLog
from .action_loss import action_loss, load_action_probe
from .causal_init import STUDENT_DIR, teacher_forcing_loss
from .config import DMDConfig, save_student_schedule
from .distributed import Ranks, average_gradients
from .dmd import Conditions, critic_loss, dmd_loss, sample_sigma
from .long_horizon import (
    decoded_first_frame,
    long_controls,
    long_image_condition,
    rollout_lengths,
    window_conditions,
)
from .self_forcing import check_recompute_safe, rollout_trains, student_rollout
from .sharding import ShardedEMA, checkpoint_blocks, load_sharded, set_trainable

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"


CRITIC_RECORD = ("step", "exit_step", "critic_loss", "critic_grad_norm")   # every step's own numbers


def step_generator(seed: int, step: int, device, rank: int | None = None) -> torch.Generator:
    """The generator of one step: shared by all ranks (rank None) or the rank's own."""
    stream = 0 if rank is None else rank + 1
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1_009 + stream)


class DMDTrainer:
    """Student, EMA, critic, teacher and optimisers of one run; `train` runs it to its budget."""

    def __init__(self, student_dir: str | Path, teacher_dir: str | Path, data: ConditionedClips, out_dir: str | Path,
                 config: DMDConfig = DMDConfig(), critic_dir: str | Path | None = None, ranks: Ranks = Ranks(),
                 vae: WanVAE | None = None):
        """`vae`: the data's VAE, needed by long-horizon rollouts (`config.rollout_frames`) only."""
        self.config, self.data, self.ranks, self.out = config, data, ranks, Path(out_dir)
        self.device = data.x0.device
        # bf16 compute on GPUs (where the student streams in bf16), fp32 on the CPU (exact tests)
        self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.schedule, self.cache_cfg = config.student.schedule(), config.student.cache()
        # the clips the plain steps and the data loss read: the data's, or their first score_frames frames
        self.clips = data.prefix(config.score_frames or data.num_frames)
        self.lengths = [self.clips.num_frames]
        self.vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)
        if config.rollout_frames:
            self.lengths = rollout_lengths(self.clips.num_frames, config.rollout_frames, self.cache_cfg.block_frames)
            if self.vae is None:
                raise ValueError("long-horizon DMD (rollout_frames) encodes the windows' I2V conditions: "
                                 "it needs the data's VAE")
            if config.window_anchor == "truth" and (data.num_frames < self.lengths[-1] or data.starts is None):
                raise ValueError(f"window_anchor 'truth' streams along the data's clips and conditions on their true "
                                 f"frames: it needs clips of at least {self.lengths[-1]} latent frames (these have "
                                 f"{data.num_frames}) loaded with their start images (keep_starts)")
        if config.activation_checkpointing:
            check_recompute_safe(self.cache_cfg, self.lengths[-1])
        self.action_probe = None
        if config.action_loss_weight:
            if data.motion is None:
                raise ValueError("the action loss needs the clips' camera motions (ConditionedClips.motion): "
                                 "condition them with `condition_clips`")
            self.action_probe = load_action_probe(config.action_probe, config.action_decoder, self.device)
        torch.manual_seed(config.seed)
        critic_dir = critic_dir or teacher_dir
        if config.strategy == "fsdp":
            self._load_sharded(student_dir, teacher_dir, critic_dir)
        else:
            self._load_replicas(student_dir, teacher_dir, critic_dir)
        self.student.train()
        self.critic.train()
        self.teacher.eval()
        for name, model in (("student", self.student), ("critic", self.critic)):
            if model.cfg != self.teacher.cfg:
                raise ValueError(f"the {name} ({model.cfg}) and the teacher ({self.teacher.cfg}) differ in shape")
        trained = [p for p in self.student.parameters() if p.requires_grad]
        self.generator_optimizer = torch.optim.AdamW(trained, lr=config.generator_lr,
                                                     betas=config.betas, weight_decay=config.weight_decay)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr,
                                                  betas=config.betas, weight_decay=config.weight_decay)
        self.step = self.saved_step = 0
        self.sources = {"student": str(student_dir), "teacher": str(teacher_dir), "critic": str(critic_dir)}

    def _load_replicas(self, student_dir, teacher_dir, critic_dir) -> None:
        """ddp: the three models whole on this device; the EMA a whole copy of the student."""
        load = partial(load_model, dtype=torch.float32, device=self.device)
        self.student = set_trainable(load(student_dir), rollout_trains)
        self.critic, self.teacher = load(critic_dir), load(teacher_dir).requires_grad_(False)
        self.ema = EMA(self.student, self.config.ema_decay)       # before checkpointing: a plain model
        if self.config.activation_checkpointing:
            checkpoint_blocks(self.student)
            checkpoint_blocks(self.critic)

    def _load_sharded(self, student_dir, teacher_dir, critic_dir) -> None:
        """fsdp: FSDP2 shards over every rank of the process group; the EMA sharded alike."""
        from torch.distributed.device_mesh import init_device_mesh
        if not dist.is_initialized():
            raise ValueError("strategy 'fsdp' needs a torch.distributed process group: run under torchrun "
                             "or as Ray Train workers (--workers N)")
        mesh = init_device_mesh(self.device.type, (self.ranks.world_size,))
        load = partial(load_sharded, mesh=mesh, device=self.device, param_dtype=self.compute_dtype)
        checkpointing = self.config.activation_checkpointing
        self.student = load(student_dir, checkpointing=checkpointing, trains=rollout_trains)
        self.critic = load(critic_dir, checkpointing=checkpointing, trains=lambda name: True)
        self.teacher = load(teacher_dir, checkpointing=False, trains=lambda name: False)
        self.ema = ShardedEMA(self.student, self.config.ema_decay)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The run's state for torch.distributed.checkpoint (this object is its `Stateful`):
        models and optimiser states keyed by parameter names, DTensor shards under fsdp."""
        student, generator_optimizer = get_state_dict(self.student, self.generator_optimizer)
        critic, critic_optimizer = get_state_dict(self.critic, self.critic_optimizer)
        ema = self.ema.state_dict() if isinstance(self.ema, ShardedEMA) else self.ema.model.state_dict()
        return {"step": self.step, "student": student, "ema": ema, "critic": critic,
                "generator_optimizer": generator_optimizer, "critic_optimizer": critic_optimizer}

    def load_state_dict(self, state: dict) -> None:
        """After `dcp.load` filled `state` (the EMA's tensors in place)."""
        set_state_dict(self.student, self.generator_optimizer, model_state_dict=state["student"],
                       optim_state_dict=state["generator_optimizer"])
        set_state_dict(self.critic, self.critic_optimizer, model_state_dict=state["critic"],
                       optim_state_dict=state["critic_optimizer"])
        self.step = self.saved_step = state["step"]

    def _saves(self) -> list[Path]:
        """Complete saves, oldest first (rank 0 writes `.metadata` after every rank's files)."""
        return sorted(p for p in (self.out / CHECKPOINT).glob("step_*") if (p / ".metadata").is_file())

    def save(self) -> None:
        """Every rank writes its part (collective); then rank 0 removes the other saves."""
        if self.saved_step == self.step and self._saves():
            return
        target = self.out / CHECKPOINT / f"step_{self.step:08d}"
        dcp.save({"run": self}, checkpoint_id=target, no_dist=not dist.is_initialized())
        self.saved_step = self.step
        if self.ranks.rank == 0:
            for other in (self.out / CHECKPOINT).glob("step_*"):
                if other != target:
                    shutil.rmtree(other)

    def resume(self) -> bool:
        saves = self._saves()
        if not saves and (self.out / "checkpoint.pt").is_file():
            raise ValueError(f"{self.out} holds a checkpoint.pt of the earlier single-file format, which this "
                             f"trainer does not read (it saves {CHECKPOINT}/step_N/): start a new --out")
        if not saves:
            return False
        dcp.load({"run": self}, checkpoint_id=saves[-1], no_dist=not dist.is_initialized())
        return True

    def export_student(self) -> None:
        """The EMA weights as a model directory, `student/` (gathered under fsdp: a collective)."""
        if isinstance(self.ema, ShardedEMA):
            state = self.ema.full_state_dict()
            with torch.device("meta"):
                model = CausalWanModel(self.teacher.cfg)
            model.load_state_dict(state, assign=True)
        else:
            model = self.ema.model
        if self.ranks.rank == 0:
            save_model(model, self.out / STUDENT_DIR, class_name="WanModelFast")
            save_student_schedule(self.config.student, self.out / STUDENT_DIR)

    # ---- one step -----------------------------------------------------------------------
    def _update(self, model: CausalWanModel, optimizer,
                *losses: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Build and backpropagate each loss in turn (each backward frees its graph before the next
        loss is built: the DMD loss's rollout graph and the data loss's are never alive together),
        average over ranks, clip, step. Returns the summed loss and the gradient norm."""
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for build in losses:
            loss = build()
            loss.backward()
            total += loss.detach()
        if self.config.strategy == "ddp":         # fsdp: reduce-scattered during backward
            average_gradients(model, self.ranks)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        return total, grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm

    def _rollout(self, index: torch.Tensor, length: int, exit_step: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, Conditions, int, torch.Tensor | None]:
        """The student's rollout of `length` latent frames for clips `index`; returns the window the
        scores see (its last clip-length frames), their conditions, the window's first frame
        that the DMD loss covers (`long_horizon.py`) and the window's commanded motions (None
        without an action loss)."""
        clips, truth = self.clips, self.config.window_anchor == "truth"
        clip_frames = clips.num_frames
        control, y = clips.control[index], clips.y[index]
        if length > clip_frames and truth:
            control, y = self.data.control[index, :, :length], self.data.y[index, :, :length]
        elif length > clip_frames:
            control, y = long_controls(clips, index, length, generator), long_image_condition(y, length)
        x = student_rollout(self.student, clips.context[index], y, control, self.schedule, self.cache_cfg, generator,
                            exit_step=exit_step, cache_dtype=self.compute_dtype, grad_from=length - clip_frames)
        start = length - clip_frames
        motion = None if self.action_probe is None else self.data.motion[index, start:length - 1]
        if length == clip_frames:
            return x, Conditions.of_clips(clips, index), 0, motion
        window = x[:, :, start:]
        with torch.autocast(self.device.type, enabled=False):
            image = self.data.start_images(index, start) if truth else decoded_first_frame(self.vae, window)
            cond = window_conditions(self.vae, image, control[:, :, start:], clips, index)
        return window, cond, 1, motion

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
        length = self.lengths[0]
        if len(self.lengths) > 1:            # long-horizon: a rollout length, the same on every rank
            length = self.lengths[int(torch.randint(len(self.lengths), (1,), generator=shared, device=device))]
            record["rollout_frames"] = length
        with autocast, torch.set_grad_enabled(generator_step):
            x, cond, first_frame, motion = self._rollout(index, length, exit_step, local)
        if generator_step:
            sigma = sample_sigma(len(index), shift, low, high, local, device)
            noise = torch.randn(x.shape, generator=local, device=device)
            stats = {}

            def distribution_matching() -> torch.Tensor:
                with autocast:
                    loss, more = dmd_loss(x, self.teacher, self.critic, cond, sigma, noise,
                                          config.student.guidance, first_frame)
                    if self.action_probe is not None:     # on the same samples: one graph, one backward
                        action, action_stats = action_loss(self.action_probe, x, motion, config.action_loss_balance)
                        loss = loss + config.action_loss_weight * action
                        more |= action_stats
                stats.update(more)
                return loss

            def data_term() -> torch.Tensor:
                with autocast:
                    loss = teacher_forcing_loss(self.student, self.clips, index, config.student.block_frames, shift,
                                                local)
                stats["data_loss"] = loss.detach()
                return config.data_loss_weight * loss

            losses = (distribution_matching, data_term) if config.data_loss_weight else (distribution_matching,)
            loss, grad_norm = self._update(self.student, self.generator_optimizer, *losses)
            self.ema.update(self.student, self.step // config.update_ratio)
            record |= {"generator_loss": round(loss.item(), 6), "generator_grad_norm": round(grad_norm.item(), 4),
                       **{k: round(v.item(), 5) for k, v in stats.items()}}
        sigma = sample_sigma(len(index), shift, low, high, local, device)
        noise = torch.randn(x.shape, generator=local, device=device)

        def critic_term() -> torch.Tensor:
            with autocast:
                return critic_loss(self.critic, x, cond, sigma, noise)
        loss, grad_norm = self._update(self.critic, self.critic_optimizer, critic_term)
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
                {**asdict(config), "sources": self.sources, "world_size": self.ranks.world_size}, indent=2) + "\n")
        show = progress and self.ranks.rank == 0
        generator_record: dict = {}       # the latest generator step's numbers, logged with every record
        with tqdm(total=config.steps, initial=self.step, desc="dmd", unit="step", disable=not show) as bar:
            while not self.ranks.agree_done(budget.done(self.step)):
                record = self.train_step()
                if "generator_loss" in record:
                    generator_record = {"generator_step": record["step"],
                                        **{k: v for k, v in record.items() if k not in CRITIC_RECORD}}
                record = {**generator_record, **record}
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
        self.export_student()
        if self.ranks.rank == 0:
            log.info("DMD student at step %d written to %s", self.step, self.out / STUDENT_DIR)
        return self.out
