"""The quality cost of decoding in bf16: the shipped world VAE streams held-out clips block by
block (3 latent frames, as served), in fp32 and in bf16, from the same fp32 latents; PSNR of each
against the ground truth and of bf16 against fp32, and the largest pixel difference.

    lingbot-rt world gen-data --out runs/vae_dtype --clips 8 --frames 49 --height 128 --width 128 --seed 3
    python benchmarks/vae_dtype_world.py --data runs/vae_dtype --out benchmarks/results/vae_dtype_world.json
"""
from __future__ import annotations

import argparse
import glob

import numpy as np
import torch

from results_io import finish

from lingbot_rt.pipeline.streaming import decode_block
from lingbot_rt.world.data import load_clip
from lingbot_rt.world.shipped import SHIPPED_DIR
from lingbot_rt.world.train_vae import load_trained_vae

BLOCK = 3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a `lingbot-rt world gen-data` directory")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    clips = sorted(glob.glob(f"{args.data}/shard_*/clip_*"))
    if not clips:
        raise SystemExit(f"no clips under {args.data}: write some with `lingbot-rt world gen-data`")
    vaes = {name: load_trained_vae(SHIPPED_DIR, args.device, dtype).eval()
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rows = []
    for path in clips:
        clip = load_clip(path)
        video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float().to(args.device) / 127.5 - 1
        with torch.inference_mode():
            latents = vaes["fp32"].encode(video)[0]
            frames = {}
            for name, vae in vaes.items():
                decoder = vae.stream_decoder()
                frames[name] = np.concatenate([decode_block(decoder, latents[:, i:i + BLOCK].to(vae.dtype))
                                               for i in range(0, latents.shape[1], BLOCK)])
        truth = clip.frames[: len(frames["fp32"])]
        rows.append({"clip": path, "psnr_fp32_db": psnr(frames["fp32"], truth),
                     "psnr_bf16_db": psnr(frames["bf16"], truth),
                     "psnr_bf16_vs_fp32_db": psnr(frames["bf16"], frames["fp32"]),
                     "max_abs_diff": int(np.abs(frames["bf16"].astype(int) - frames["fp32"]).max())})
    mean = {key: round(float(np.mean([row[key] for row in rows])), 3)
            for key in ("psnr_fp32_db", "psnr_bf16_db", "psnr_bf16_vs_fp32_db")}
    finish({"what": "world VAE streaming decode, bf16 vs fp32", "clips": len(rows), "frames": int(len(truth)),
            "mean": mean, "max_abs_diff": max(row["max_abs_diff"] for row in rows), "per_clip": rows},
           torch.device(args.device), args.out)


if __name__ == "__main__":
    main()
