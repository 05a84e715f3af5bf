"""Data parallelism over torch.distributed for the distillation jobs.

The process group comes from outside: Ray Train's `TorchTrainer` sets it up in every worker,
`torchrun` exports RANK / WORLD_SIZE / MASTER_ADDR for `init_from_env`. Without one, `Ranks()`
is a single process and every collective below is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        """The initialised process group's ranks, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def agree_done(self, done: bool) -> bool:
        """True when any rank is done (wall-clock budgets end on different steps per rank)."""
        if self.world_size == 1:
            return done
        flag = torch.tensor([float(done)], device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(model: torch.nn.Module, ranks: Ranks) -> None:
    """Mean of every parameter's gradient over the ranks (in place); a parameter without a
    gradient on this rank contributes zeros, so every rank calls the same collectives."""
    if ranks.world_size == 1:
        return
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(ranks.world_size)


def init_from_env() -> tuple[Ranks, torch.device]:
    """torchrun: join the group its environment describes (NCCL with GPUs, else gloo); a plain
    `python` run is one process. Returns the ranks and this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    ranks = Ranks.current()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return ranks, device
