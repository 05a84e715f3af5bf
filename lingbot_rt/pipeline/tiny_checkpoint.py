"""Write a small random release in exactly the released LingBot-World layout.

    <out>/high_noise_model/   config.json + sharded safetensors + index
    <out>/low_noise_model/    same
    <out>/lingbot_world_fast/ same, config marked WanModelFast
    <out>/Wan2.1_VAE.pth, <out>/models_t5_umt5-xxl-enc-bf16.pth, <out>/google/umt5-xxl/tokenizer.json
    <out>/lingbot_rt.json     the named configs of the VAE and text encoder, the frame size

Tests and the CLI (`lingbot-rt make-tiny-checkpoint`) use it: nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.checkpoint import FAST_DIR, HIGH_NOISE_DIR, LOW_NOISE_DIR, save_model
from ..model.config import model_config
from ..model.dit import CausalWanModel
from ..model.text_encoder import UMT5Encoder, make_tiny_tokenizer, save_encoder
from ..model.vae import WanVAE, save_vae
from .release import T5_FILE, TOKENIZER_DIR, VAE_FILE, ReleaseManifest

TINY_MANIFEST = ReleaseManifest(vae="tiny", text_encoder="tiny", height=64, width=64)


def make_tiny_checkpoint(out: str | Path, *, config: str = "tiny", control_type: str = "cam",
                         num_shards: int = 2, fmt: str = "safetensors", dtype: torch.dtype = torch.float32,
                         seed: int = 0, manifest: ReleaseManifest = TINY_MANIFEST) -> Path:
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
    torch.manual_seed(generator_seed)
    save_vae(WanVAE(manifest.vae_config()), out / VAE_FILE)
    text_cfg = manifest.text_encoder_config()
    if text_cfg.dim != cfg.text_dim:
        raise ValueError(f"text encoder {manifest.text_encoder!r} (dim {text_cfg.dim}) does not fit "
                         f"DiT config {config!r} (text_dim {cfg.text_dim})")
    save_encoder(UMT5Encoder(text_cfg).to(torch.bfloat16), out / T5_FILE)
    make_tiny_tokenizer(out / TOKENIZER_DIR)
    manifest.write(out)
    return out
