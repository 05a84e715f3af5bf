"""DMD as a Ray Train job: `lingbot-rt distill dmd --workers N --gpus-per-worker 1`.

Ray Train's `TorchTrainer` starts N workers, sets the torch.distributed group up in each
(NCCL with GPUs, gloo on CPUs) and runs `train_worker`, which runs the job as torchrun's ranks
do (`job.py`: each rank loads the data and trains its share of each step's batch, under the
config's strategy). `ray.train.report` carries each logged step's metrics to the driver. The
workers unpickle the job, so `load_data` must be importable in them (a package function, or
the driver's PYTHONPATH passed in Ray's runtime_env).
"""
from __future__ import annotations

from pathlib import Path

from .distributed import Ranks
from .job import DMDJob, run_job


def train_worker(config: dict) -> None:
    """The per-worker loop (Ray Train calls it in every worker with {"job": DMDJob})."""
    import ray.train
    import ray.train.torch
    job: DMDJob = config["job"]
    run_job(job, Ranks.current(), ray.train.torch.get_device(), report=ray.train.report, progress=False)


def run_ray_job(job: DMDJob, workers: int, gpus_per_worker: float = 0.0, storage_path: str | None = None):
    """Run `job` on `workers` Ray workers (a GPU each when gpus_per_worker > 0); returns Ray
    Train's result (`.error` if a worker failed). The metrics stay in the run's log.jsonl:
    Ray Train v2 keeps a report's metrics only with a Ray checkpoint, and the trainer writes
    its own (`trainer.py`) rather than copying it into Ray's storage."""
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
