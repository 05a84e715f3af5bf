"""One DMD run's inputs (`DMDJob`) and running it on this process's rank, however the ranks
were started:

    lingbot-rt distill dmd ...                                   # one process
    torchrun --nproc_per_node=8 distillation/train_dmd.py ...    # torchrun (`train_from_env`)
    lingbot-rt distill dmd ... --workers 8 --gpus-per-worker 1   # Ray Train workers (`ray_job.py`)

Every rank loads the conditioning data itself (`load_data(device)`; the VAE too for
long-horizon rollouts) and builds the same `DMDTrainer`; rank 0 writes the run directory
(the checkpoint is written by every rank).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.vae import WanVAE
from ..world.latents import ConditionedClips
from .config import DMDConfig
from .distributed import Ranks, init_from_env
from .trainer import DMDTrainer


@dataclass(frozen=True)
class DMDJob:
    student_dir: str
    teacher_dir: str
    out_dir: str
    load_data: Callable[[torch.device], ConditionedClips]    # runs on each rank, on its device
    config: DMDConfig = DMDConfig()
    critic_dir: str | None = None
    load_vae: Callable[[torch.device], WanVAE] | None = None   # the data's VAE (long-horizon rollouts)


def run_job(job: DMDJob, ranks: Ranks, device: torch.device, report: Callable[[dict], None] | None = None,
            progress: bool = True) -> Path:
    """Train `job` as rank `ranks.rank` of the initialised process group (or alone)."""
    vae = job.load_vae(device) if job.load_vae is not None and job.config.rollout_frames else None
    trainer = DMDTrainer(job.student_dir, job.teacher_dir, job.load_data(device), job.out_dir, job.config,
                         job.critic_dir, ranks, vae)
    return trainer.train(report=report, progress=progress)


def train_from_env(job: DMDJob, device: str | None = None) -> Path:
    """torchrun (or a plain process): join the group its environment describes, train, leave it.
    `device` overrides this rank's device (e.g. "cpu" on a GPU machine)."""
    import torch.distributed as dist
    ranks, rank_device = init_from_env()
    try:
        return run_job(job, ranks, torch.device(device) if device else rank_device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
