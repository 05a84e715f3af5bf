"""What storing the tiny decoder in bf16 costs: PSNR of a train-decoder run's fp32 weights and of
the shipped bf16 copy (loaded as fp32), on the same clips, against the VAE's decode and the frames.

    python benchmarks/world/tiny_decoder_storage.py --run <train-decoder dir> --data <gen-data dir> \
        --first-clip 380 --clips 4 --out benchmarks/results/world/tiny_decoder/storage_bf16_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lingbot_rt.model.tiny_decoder import load_tiny_decoder
from lingbot_rt.world.clips import load_clip_tensors
from lingbot_rt.world.shipped import SHIPPED_DIR, shipped_decoder_dir
from lingbot_rt.world.train_decoder import evaluate_decoder
from lingbot_rt.world.train_vae import load_trained_vae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="the train-decoder run directory the shipped copy was exported from")
    ap.add_argument("--data", required=True, help="clips it was not trained on")
    ap.add_argument("--first-clip", type=int, default=0)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    vae = load_trained_vae(SHIPPED_DIR)
    clips = load_clip_tensors(args.data, first_clip=args.first_clip, max_clips=args.clips)
    result = {"command": " ".join(sys.argv), "data": args.data, "first_clip": args.first_clip}
    for name, path in (("fp32_run", args.run), ("bf16_shipped", shipped_decoder_dir())):
        result[name] = evaluate_decoder(load_tiny_decoder(path), vae, clips, 3, batch_size=args.clips)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
