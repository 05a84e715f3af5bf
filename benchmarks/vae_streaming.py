"""Streaming VAE decode cost: time per 3-latent block with the causal-conv cache carried.

    python benchmarks/vae_streaming.py --config wan2.1 --device cuda --dtype bf16 --height 480 --width 832 \
        --out benchmarks/results/vae_streaming_wan2.1_480p_h100.json
"""
from __future__ import annotations

import argparse
import time

import torch

from results_io import finish

from lingbot_rt.model.vae import WanVAE, vae_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--block", type=int, default=3, help="latent frames per decode call")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks after one warm-up block")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    vae = WanVAE(vae_config(args.config)).to(dev, DTYPES[args.dtype]).eval()
    z = torch.randn(1, 16, args.block, args.height // 8, args.width // 8, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, frames = [], 0
    with torch.no_grad():
        stream = vae.stream_decoder()
        stream.decode(z)   # warm-up (first block gives 1 + 4*(block-1) frames)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.blocks):
            sync()
            start = time.perf_counter()
            out = stream.decode(z)
            sync()
            times.append(time.perf_counter() - start)
            frames = out.shape[2]
    mean = sum(times) / len(times)
    result = {"config": args.config, "params": sum(p.numel() for p in vae.parameters()), "dtype": args.dtype,
              "resolution": [args.height, args.width], "latent_frames_per_block": args.block,
              "frames_per_block": frames, "block_s": [round(t, 4) for t in times],
              "ms_per_latent_frame": round(1000 * mean / args.block, 1), "decode_only_fps": round(frames / mean, 1)}
    finish(result, dev, args.out)


if __name__ == "__main__":
    main()
