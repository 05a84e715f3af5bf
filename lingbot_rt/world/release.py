"""The built-in world as a release root: what `lingbot-rt serve` plays when given no release.

`make_world_release` writes the package's shipped weights (`weights/`, `shipped.py`) in the
layout every release has (`pipeline/release.py`), so the server, the Ray stages and Ray Serve
load the built-in world exactly as they load LingBot-World:

    lingbot_world_fast/             the distilled 4-step block-causal student
    Wan2.1_VAE.pth                  the world's VAE
    models_t5_umt5-xxl-enc-bf16.pth the world's text encoder (umT5 at the `world` size)
    google/umt5-xxl/tokenizer.json  its closed-vocabulary tokenizer
    tiny_decoder/                   the tiny streaming decoder the world streams with
    lingbot_rt.json                 the VAE config, 128x128, the student's stream settings
    SOURCE                          sha256 of the shipped student and decoder it was made from

`ensure_default_release` makes `ckpt/world` on first use, and again whenever the shipped student
or decoder changes (a stale copy would silently serve an older model).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from ..distillation.config import student_schedule
from ..model.checkpoint import FAST_DIR, WEIGHTS_NAME
from ..model.text_encoder import save_encoder
from ..model.vae import save_vae
from ..model.tiny_decoder import DECODER_WEIGHTS
from ..pipeline.release import T5_FILE, TINY_DECODER_DIR, TOKENIZER_DIR, VAE_FILE, ReleaseManifest
from .shipped import SHIPPED_DIR, shipped_decoder_dir, shipped_student_dir
from .stream import WORLD_SIZE, world_stream_config
from .text import TEXT_CONFIG, make_world_text_encoder, make_world_tokenizer
from .train_vae import VAE_CONFIG, load_trained_vae

DEFAULT_RELEASE = "ckpt/world"      # what `lingbot-rt serve` and the demo play when given no release
SOURCE_FILE = "SOURCE"
STREAM_FIELDS = ("schedule_indices", "shift", "block_frames", "sink_frames", "window_frames", "full_frames",
                 "memory_pool", "action_guidance", "intrinsics", "decoder")


def _weights_digest(weights: Path) -> str:
    digest = hashlib.sha256((shipped_student_dir(weights) / WEIGHTS_NAME).read_bytes())
    digest.update((shipped_decoder_dir(weights) / DECODER_WEIGHTS).read_bytes())
    return digest.hexdigest()


def make_world_release(out: str | Path, weights: str | Path = SHIPPED_DIR) -> Path:
    """Write the shipped world (student, VAE, text encoder) as a release root at `out`,
    replacing an earlier one there (and nothing else: another non-empty directory is refused)."""
    out, weights = Path(out), Path(weights)
    student = shipped_student_dir(weights)
    if out.exists():
        if not (out / SOURCE_FILE).is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a world release made here: not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(student, out / FAST_DIR)
    shutil.copytree(shipped_decoder_dir(weights), out / TINY_DECODER_DIR)
    save_vae(load_trained_vae(weights), out / VAE_FILE)
    save_encoder(make_world_text_encoder(), out / T5_FILE)
    make_world_tokenizer(out / TOKENIZER_DIR)
    stream = asdict(world_stream_config(student_schedule(student)))
    ReleaseManifest(vae=json.loads((weights / VAE_CONFIG).read_text()), text_encoder=TEXT_CONFIG,
                    height=WORLD_SIZE, width=WORLD_SIZE, stream={k: stream[k] for k in STREAM_FIELDS}).write(out)
    (out / SOURCE_FILE).write_text(_weights_digest(weights) + "\n")
    return out


def ensure_default_release(root: str | Path, weights: str | Path = SHIPPED_DIR) -> Path:
    """`root` itself; when it is `DEFAULT_RELEASE`, (re)made from the shipped world if it is
    missing or was made from another student or decoder."""
    root = Path(root)
    if str(root) != DEFAULT_RELEASE:
        return root
    source = root / SOURCE_FILE
    if not source.is_file() or source.read_text().strip() != _weights_digest(Path(weights)):
        print(f"making the built-in world's release in {root} from {weights}")
        make_world_release(root, weights)
    return root
