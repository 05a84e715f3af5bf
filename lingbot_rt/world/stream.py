"""The built-in world's student streaming: the same `StreamingInference` the server runs, set
up for the world (its camera, its 128x128 frames, the distilled student's schedule).

    pipeline = world_streaming("lingbot_rt/world/weights/student", device="cpu")
    for block in pipeline.stream_generate(image, prompt, keys):   # keys: multi-hot [F, 8]
        ...
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..distillation.config import StudentSchedule, student_schedule
from ..model.checkpoint import load_model
from ..model.config import LAYOUT_FIELDS
from ..model.controls import INTRINSICS_SOURCE_HW
from ..model.tiny_decoder import load_tiny_decoder
from ..pipeline.streaming import StreamConfig, StreamingInference
from .config import WorldConfig
from .shipped import SHIPPED_DIR, shipped_decoder_dir
from .text import world_text_encoder
from .train_vae import load_trained_vae

WORLD_SIZE = 128


def world_intrinsics(height: int = WORLD_SIZE, width: int = WORLD_SIZE) -> tuple[float, ...]:
    """The world camera as `StreamConfig.intrinsics` wants it: in 480x832 pixels (the stream
    scales them to its frame size, x by width and y by height)."""
    fx, fy, cx, cy = WorldConfig().intrinsics(height, width)
    source_h, source_w = INTRINSICS_SOURCE_HW
    return (fx * source_w / width, fy * source_h / height, cx * source_w / width, cy * source_h / height)


def world_stream_config(student: StudentSchedule = StudentSchedule(), max_sessions: int = 1,
                        size: int = WORLD_SIZE, decoder: str = "tiny") -> StreamConfig:
    """The world streams with its tiny decoder: the same frames as the VAE's decoder within the
    evaluation's resolution (`weights/MODEL_CARD.md`), 43 instead of 327 ms per 12-frame block
    on the 2-core CPU (`benchmarks/results/world/fps_world_128_cpu_*.json`)."""
    layout = {name: getattr(student, name) for name in LAYOUT_FIELDS}
    return StreamConfig(height=size, width=size, schedule_indices=student.indices, shift=student.shift, **layout,
                        action_guidance=student.action_guidance,
                        max_sessions=max_sessions, intrinsics=world_intrinsics(size, size), decoder=decoder)


def world_streaming(student_dir: str | Path, *, device: torch.device | str = "cpu", vae_dir: str | Path = SHIPPED_DIR,
                    config: StreamConfig | None = None, dtype: torch.dtype = torch.float32) -> StreamingInference:
    """A student model directory, the world's VAE, tiny decoder (`config.decoder`) and text
    encoder, streaming (by default with the schedule and cache layout the student records)."""
    config = config or world_stream_config(student_schedule(student_dir))
    student = load_model(student_dir, dtype=dtype, device=device)
    vae = load_trained_vae(vae_dir, device=device)
    decoder = load_tiny_decoder(shipped_decoder_dir(vae_dir), device=device) if config.decoder == "tiny" else None
    return StreamingInference(student, vae, world_text_encoder(device), config, decoder=decoder)
