"""End-to-end streaming cost: `StreamingInference.stream_generate`, one session, sequential
stages (I2V condition + 4 denoising passes + commit, then the VAE decode of the block).

Random weights for the DiT and VAE at any named size; the text encoder is a one-layer umT5 of
the DiT's text width (the prompt is encoded once per session, outside the block loop).

    python benchmarks/pipeline_streaming.py --config wan-1.3b --vae wan2.1 --device cuda \
        --height 480 --width 832 --blocks 12 --out benchmarks/results/pipeline_streaming_wan-1.3b_480p_h100.json
    python benchmarks/pipeline_streaming.py --config tiny --vae tiny --height 64 --width 64   # CPU smoke run
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from random_models import one_layer_text_encoder, random_dit
from results_io import finish

from lingbot_rt.model.vae import WanVAE, vae_config
from lingbot_rt.pipeline import StreamConfig, StreamingInference

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny", help="named DiT config")
    ap.add_argument("--vae", default="tiny", help="named VAE config")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="DiT and VAE dtype")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--blocks", type=int, default=12, help="blocks streamed; the first 2 are warm-up")
    ap.add_argument("--commit", default="clean", choices=["clean", "last_step"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    dit = random_dit(args.config, dtype, dev)
    vae = WanVAE(vae_config(args.vae)).to(dev, dtype).eval()
    text = one_layer_text_encoder(dit.cfg.text_dim, dit.cfg.text_len, dev)
    config = StreamConfig(height=args.height, width=args.width, commit=args.commit)
    pipeline = StreamingInference(dit, vae, text, config)
    image = np.random.RandomState(0).randint(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    blocks, start = [], time.perf_counter()
    for block in pipeline.stream_generate(image, "a fantasy world", lambda: "w", num_frames=None):
        blocks.append((len(block.frames), block.timings["denoise"], block.timings["decode"]))
        if len(blocks) == 2 and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if len(blocks) == args.blocks:
            break
    wall = time.perf_counter() - start
    steady = blocks[2:]
    frames = sum(b[0] for b in steady)
    denoise, decode = sum(b[1] for b in steady), sum(b[2] for b in steady)
    result = {"config": args.config, "vae": args.vae, "dtype": args.dtype, "resolution": [args.height, args.width],
              "commit_mode": args.commit, "blocks": len(blocks), "timed_blocks": len(steady),
              "frames_per_block": steady[0][0] if steady else None,
              "denoise_s_per_block": round(denoise / max(len(steady), 1), 4),
              "decode_s_per_block": round(decode / max(len(steady), 1), 4),
              "sequential_fps": round(frames / (denoise + decode), 2) if steady else None,
              "pipelined_fps_bound": round(frames / max(denoise, decode), 2) if steady else None,
              "first_block_s": round(blocks[0][1] + blocks[0][2], 3), "wall_s": round(wall, 2)}
    finish(result, dev, args.out)


if __name__ == "__main__":
    main()
