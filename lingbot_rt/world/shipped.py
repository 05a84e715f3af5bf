"""The built-in world's trained weights shipped inside the package (`lingbot_rt/world/weights/`).

Layout (what `lingbot-rt world export` writes, readable by the world commands as they are):

    weights/vae.safetensors, vae_config.json       the VAE (bf16 weights; a train-vae directory)
    weights/teacher/                               the bidirectional teacher (a model directory, bf16)
    weights/student/                               the distilled 4-step student (FP8 matrices, per-row
                                                   scales: `checkpoint.quantize_rows_fp8`)
    weights/decoder/                               the tiny streaming decoder distilled from the VAE's
                                                   (bf16; `model/tiny_decoder.py`), what the world streams with
    weights/MODEL_CARD.md                          how they were made and what they score

The VAE is stored in bf16 to halve its size (7 MB): its reconstruction PSNR on held-out
clips is the same to 0.01 dB as with the fp32 weights it was trained in; it loads as float32.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.checkpoint import load_model, save_model
from ..model.tiny_decoder import load_tiny_decoder, save_tiny_decoder
from ..model.vae import save_vae
from ..distillation.causal_init import STUDENT_DIR
from ..distillation.config import save_student_schedule, student_schedule
from .train_teacher import TEACHER_DIR
from .train_vae import VAE_CONFIG, VAE_WEIGHTS, load_trained_vae

SHIPPED_DIR = Path(__file__).parent / "weights"
DECODER_DIR = "decoder"


def export_world_weights(out_dir: str | Path = SHIPPED_DIR, *, vae_dir: str | Path | None = None,
                         teacher_dir: str | Path | None = None, student_dir: str | Path | None = None,
                         decoder_dir: str | Path | None = None) -> Path:
    """Write the given parts in the shipped layout: a trained VAE (a train-vae directory), the
    teacher and the tiny decoder (a train-decoder directory) in bf16, the student (a
    distillation run's student/) with FP8 matrices. Returns `out_dir`."""
    if vae_dir is None and teacher_dir is None and student_dir is None and decoder_dir is None:
        raise ValueError("nothing to export: give a VAE, a teacher, a student or a decoder directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vae_dir is not None:
        vae = load_trained_vae(vae_dir)
        save_vae(vae.to(torch.bfloat16), out / VAE_WEIGHTS)
        (out / VAE_CONFIG).write_text((Path(vae_dir) / VAE_CONFIG).read_text())
    if teacher_dir is not None:
        save_model(load_model(teacher_dir, dtype=torch.bfloat16), out / TEACHER_DIR, class_name="WanModel")
    if student_dir is not None:
        save_model(load_model(student_dir, dtype=torch.float32), out / STUDENT_DIR, class_name="WanModelFast",
                   fp8_rows=True)
        save_student_schedule(student_schedule(student_dir), out / STUDENT_DIR)
    if decoder_dir is not None:
        save_tiny_decoder(load_tiny_decoder(decoder_dir, dtype=torch.bfloat16), out / DECODER_DIR)
    return out


def _shipped(root: str | Path, name: str, what: str) -> Path:
    path = Path(root) / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the package ships no trained world {what} "
                                "(`lingbot-rt world export` writes one)")
    return path


def shipped_teacher_dir(root: str | Path = SHIPPED_DIR) -> Path:
    return _shipped(root, TEACHER_DIR, "teacher")


def shipped_student_dir(root: str | Path = SHIPPED_DIR) -> Path:
    return _shipped(root, STUDENT_DIR, "student")


def shipped_decoder_dir(root: str | Path = SHIPPED_DIR) -> Path:
    return _shipped(root, DECODER_DIR, "tiny decoder")
