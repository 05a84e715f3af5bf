"""What every training job of the built-in world shares: exact resume, EMA, a wall-clock
budget, a JSONL log and a progress bar.

A run directory holds `checkpoint.pt` (model, EMA, optimiser, step, RNG states; written to a
temporary name and renamed, so a killed run never leaves a torn file) and `log.jsonl` (one
line per logged step). Starting a run in a directory that has a checkpoint continues it: the
same data order and noise as an uninterrupted run, because the RNG states are restored.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    The decay warms up as min(decay, (1 + step) / (10 + step)): a plain 0.999 average still
    holds e^(-step/1000) of the random init, 38% after 1000 steps, which ruined a short run."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach().to(average.dtype), 1 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)


def optimizer_step(model: nn.Module, optimizer, ema: EMA, loss: torch.Tensor, step: int,
                   max_grad_norm: float = 1.0) -> torch.Tensor:
    """Backward, clip, update, EMA; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    ema.update(model, step)
    return grad_norm


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, ema: EMA | None, optimizer, generator: torch.Generator,
                    extra: dict | None = None) -> Path:
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    device = next(model.parameters()).device
    torch.save({"step": step, "model": model.state_dict(), "ema": ema.model.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "rng": _rng_state(device), "extra": extra or {}}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path, model: nn.Module, ema: EMA | None, optimizer, generator: torch.Generator) -> dict:
    """Restore a run in place; returns {"step": ..., "extra": ...}, step 0 when there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return {"step": 0, "extra": {}}
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if ema is not None and state["ema"] is not None:
        ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"]["cpu"])
    device = next(model.parameters()).device
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return {"step": state["step"], "extra": state["extra"]}


class Budget:
    """Stop after `steps` or after `minutes` of wall clock, whichever comes first."""

    def __init__(self, steps: int, minutes: float | None):
        self.steps, self.deadline = steps, None if minutes is None else time.monotonic() + 60 * minutes

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.deadline is not None and time.monotonic() >= self.deadline)


class JsonlLog:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOG

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
