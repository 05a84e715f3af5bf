"""The built-in world's trained weights shipped inside the package (`lingbot_rt/world/weights/`).

Layout (what `lingbot-rt world export` writes, readable by the world commands as they are):

    weights/vae.safetensors, vae_config.json       the VAE (bf16 weights; a train-vae directory)
    weights/teacher/                               the bidirectional teacher (a model directory, bf16)
    weights/MODEL_CARD.md                          how they were made and what they score

The VAE is stored in bf16 to halve its size (7 MB): its reconstruction PSNR on held-out
clips is the same to 0.01 dB as with the fp32 weights it was trained in; it loads as float32.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.checkpoint import load_model, save_model
from ..model.vae import save_vae
from .train_teacher import TEACHER_DIR
from .train_vae import VAE_CONFIG, VAE_WEIGHTS, load_trained_vae

SHIPPED_DIR = Path(__file__).parent / "weights"


def export_world_weights(vae_dir: str | Path, teacher_dir: str | Path, out_dir: str | Path = SHIPPED_DIR) -> Path:
    """Write a trained VAE (a train-vae directory) and teacher (a model directory) in the
    shipped layout, both in bf16. Returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_trained_vae(vae_dir)
    save_vae(vae.to(torch.bfloat16), out / VAE_WEIGHTS)
    (out / VAE_CONFIG).write_text((Path(vae_dir) / VAE_CONFIG).read_text())
    teacher = load_model(teacher_dir, dtype=torch.bfloat16)
    save_model(teacher, out / TEACHER_DIR, class_name="WanModel")
    return out


def shipped_teacher_dir(root: str | Path = SHIPPED_DIR) -> Path:
    path = Path(root) / TEACHER_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the package ships no trained world teacher "
                                "(`lingbot-rt world export` writes one)")
    return path
