"""Write a small random checkpoint in exactly the released LingBot-World layout.

    <out>/high_noise_model/   config.json + sharded safetensors + index
    <out>/low_noise_model/    same
    <out>/lingbot_world_fast/ same, config marked WanModelFast

Tests and the CLI (`lingbot-rt make-tiny-checkpoint`) use it: nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import FAST_DIR, HIGH_NOISE_DIR, LOW_NOISE_DIR, save_model
from .config import model_config
from .dit import CausalWanModel


def make_tiny_checkpoint(out: str | Path, *, config: str = "tiny", control_type: str = "cam",
                         num_shards: int = 2, fmt: str = "safetensors", dtype: torch.dtype = torch.float32,
                         seed: int = 0) -> Path:
    out = Path(out)
    cfg = model_config(config).replace(control_type=control_type)
    generator_seed = seed
    for name, class_name, extra in ((HIGH_NOISE_DIR, "WanModel", {}), (LOW_NOISE_DIR, "WanModel", {}),
                                    (FAST_DIR, "WanModelFast", {"local_attn_size": -1, "sink_size": 0})):
        torch.manual_seed(generator_seed)
        generator_seed += 1
        model = CausalWanModel(cfg)
        # Upstream zero-inits the head; a tiny test model wants a non-trivial output.
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
        save_model(model.to(dtype), out / name, num_shards=num_shards, fmt=fmt, class_name=class_name,
                   extra_config=extra)
    return out
