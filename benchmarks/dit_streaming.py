"""Streaming cost of the causal DiT: time and memory of one block (denoising passes + commit).

Builds the model on the meta device and materialises it once on the device (random init, or
a checkpoint), fills the KV cache to its steady state (sink + full window), then times blocks.

    # the 14B cam DiT at 480p on one GPU (bf16):
    python benchmarks/dit_streaming.py --config lingbot-14b --device cuda --dtype bf16 \
        --height 480 --width 832 --blocks 3 --out results/dit_streaming_14b_h100.json
    # a tiny checkpoint on the CPU:
    python benchmarks/dit_streaming.py --checkpoint ckpt/tiny/lingbot_world_fast --height 64 --width 64
"""
from __future__ import annotations

import argparse
import time

import torch

from random_models import random_dit, steady_block
from results_io import finish

from lingbot_rt.model import CacheConfig, CausalWanModel
from lingbot_rt.model.checkpoint import load_model

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
VAE_STRIDE = 8


def build(args) -> CausalWanModel:
    if args.checkpoint:
        return load_model(args.checkpoint, DTYPES[args.dtype], args.device)
    return random_dit(args.config, DTYPES[args.dtype], args.device)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--checkpoint", default=None, help="a model directory instead of random weights")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="denoising passes per block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks (after one warm-up block)")
    ap.add_argument("--sink", type=int, default=3)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args()

    dev = torch.device(args.device)
    t0 = time.perf_counter()
    model = build(args)
    sync(dev)
    build_s = time.perf_counter() - t0
    lat_h, lat_w = args.height // VAE_STRIDE, args.width // VAE_STRIDE
    cache_cfg = CacheConfig(sink_frames=args.sink, window_frames=args.window)
    steady = steady_block(model, cache_cfg, (lat_h, lat_w), args.batch)
    cache, slots, x, y, control = steady.cache, steady.slot_ids, steady.x, steady.y, steady.control
    B, Fb = args.batch, cache_cfg.block_frames
    timesteps = [999.0, 978.0, 947.0, 825.0][: args.steps]

    def one_block():
        times = []
        for t in timesteps:
            s = time.perf_counter()
            model.forward_block(x, torch.full((B,), t, device=dev), cache, slots, y=y, control=control)
            sync(dev)
            times.append(time.perf_counter() - s)
        s = time.perf_counter()
        model.forward_block(x, torch.zeros(B, device=dev), cache, slots, y=y, control=control, commit=True)
        sync(dev)
        times.append(time.perf_counter() - s)
        return times

    with torch.no_grad():
        one_block()   # warm-up
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        block_times = [one_block() for _ in range(args.blocks)]
    per_block = [sum(b) for b in block_times]
    result = {
        "config": args.checkpoint or args.config, "params": model.num_params(), "tensors": len(model.state_dict()),
        "dtype": args.dtype, "resolution": [args.height, args.width], "latent": [lat_h, lat_w],
        "tokens_per_block": Fb * (lat_h // 2) * (lat_w // 2), "batch": B, "sink": args.sink, "window": args.window,
        "denoise_steps": len(timesteps), "build_and_materialise_s": round(build_s, 2),
        "kv_cache_gib": round(cache.nbytes() / 2**30, 3),
        "pass_s_mean": round(sum(sum(b[:-1]) for b in block_times) / (len(timesteps) * len(block_times)), 4),
        "commit_pass_s_mean": round(sum(b[-1] for b in block_times) / len(block_times), 4),
        "block_s": [round(b, 4) for b in per_block],
        "frames_per_s": round(4 * Fb * B / (sum(per_block) / len(per_block)), 2),
    }
    result["weights_gib"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2)
    finish(result, dev, args.out)


if __name__ == "__main__":
    main()
