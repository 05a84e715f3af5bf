"""Tiny models and inputs for the model tests (no downloads, CPU, fp32)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lingbot_rt.model import CausalWanModel, model_config


def make_model(seed: int = 0, control_type: str | None = "cam", **overrides) -> CausalWanModel:
    torch.manual_seed(seed)
    cfg = model_config("tiny").replace(control_type=control_type, **overrides)
    model = CausalWanModel(cfg)
    # Upstream zero-inits the head (every output 0 before training): randomise it so
    # comparisons see every path.
    torch.nn.init.normal_(model.head.head.weight, std=0.2)
    return model.eval()


def make_inputs(model, batch=1, frames=6, height=4, width=4, seed=1, prompt_len=5):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    y = torch.randn(batch, cfg.in_dim - 16, frames, height, width, generator=g)
    control = (torch.randn(batch, cfg.control_channels, frames, height, width, generator=g)
               if cfg.control_type else None)
    context = torch.randn(batch, prompt_len, cfg.text_dim, generator=g)
    return x, y, control, context


def frames(t, start, stop):
    """Latent frames [start, stop) of a [B, C, F, H, W] tensor (None stays None)."""
    return None if t is None else t[:, :, start:stop]


REPO = Path(__file__).resolve().parents[1]


def load_script(path: str):
    """A script that is not in a package (benchmarks/, demo/, deploy/), loaded as a module named
    after its file, from its path relative to the repository root."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
