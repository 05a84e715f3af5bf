"""DMD as a Ray Train job: `lingbot-rt distill dmd --workers N --gpus-per-worker 1`.

Ray Train's `TorchTrainer` starts N workers, sets the torch.distributed group up in each
(NCCL with GPUs, gloo on CPUs) and runs `train_worker`: every worker loads the conditioning
data itself (`DMDJob.load_data(device)`), builds the same `DMDTrainer` and trains its share of
each step's batch (`trainer.py`: gradients averaged over ranks). Rank 0 writes the run
directory; `ray.train.report` carries each logged step's metrics to the driver.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..world.latents import ConditionedClips
from .config import DMDConfig
from .distributed import Ranks
from .trainer import DMDTrainer


@dataclass(frozen=True)
class DMDJob:
    student_dir: str
    teacher_dir: str
    out_dir: str
    load_data: Callable[[torch.device], ConditionedClips]    # runs in each worker, on its device
    config: DMDConfig = DMDConfig()
    critic_dir: str | None = None


def train_worker(config: dict) -> None:
    """The per-worker loop (Ray Train calls it in every worker with {"job": DMDJob})."""
    import ray.train
    import ray.train.torch
    job: DMDJob = config["job"]
    device = ray.train.torch.get_device()
    trainer = DMDTrainer(job.student_dir, job.teacher_dir, job.load_data(device), job.out_dir, job.config,
                         job.critic_dir, Ranks.current())
    trainer.train(report=ray.train.report, progress=False)


def run_ray_job(job: DMDJob, workers: int, gpus_per_worker: float = 0.0, storage_path: str | None = None):
    """Run `job` on `workers` Ray workers (a GPU each when gpus_per_worker > 0); returns Ray
    Train's result (its metrics: the last logged step)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    use_gpu = gpus_per_worker > 0
    resources = {"GPU": gpus_per_worker} if use_gpu else {"CPU": 1}
    storage = storage_path or str((Path(job.out_dir) / "ray").resolve())
    trainer = TorchTrainer(train_worker, train_loop_config={"job": job},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker=resources),
                           run_config=RunConfig(name="dmd", storage_path=storage))
    return trainer.fit()
