"""Built-in world renderer throughput: frames/s of scripted walks (turns, looks up/down included).

    python benchmarks/world_render.py --threads 1 --height 128 --width 128 --batch 64 \
        --out benchmarks/results/world_render_128_cpu1.json
    python benchmarks/world_render.py --device cuda --height 480 --width 832 --batch 64

Per map: one walk of --frames frames, rendered in batches of --batch after one warm-up batch;
the time counts rendering only (map and walk generation excluded).
"""
from __future__ import annotations

import argparse
import time

import torch

from results_io import finish

from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.renderer import Renderer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="frames per render call")
    ap.add_argument("--frames", type=int, default=1024, help="timed frames per map")
    ap.add_argument("--maps", type=int, default=6, help="maps (seeds 0..maps-1; layouts alternate)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    per_map = []
    for seed in range(args.maps):
        world = generate_map(seed, WorldConfig(layout=("rooms", "maze")[seed % 2]))
        _, poses = play(world, spawn_pose(world, seed), args.frames + args.batch, seed)
        poses = torch.from_numpy(poses).float().to(device)
        renderer = Renderer(world, device)
        intrinsics = world.config.intrinsics(args.height, args.width)
        renderer.render(poses[:args.batch], intrinsics, args.height, args.width)         # warm-up
        sync()
        start = time.perf_counter()
        for first in range(args.batch, len(poses), args.batch):
            renderer.render(poses[first:first + args.batch], intrinsics, args.height, args.width)
        sync()
        seconds = time.perf_counter() - start
        per_map.append({"seed": seed, "layout": world.layout, "corners": len(renderer.corners),
                        "fps": round(args.frames / seconds, 1)})
    total_fps = len(per_map) / sum(1 / m["fps"] for m in per_map)     # frames over total time
    result = {"resolution": [args.height, args.width], "batch": args.batch, "threads": args.threads,
              "frames_per_map": args.frames, "fps": round(total_fps, 1),
              "ms_per_frame": round(1000 / total_fps, 3), "per_map": per_map}
    finish(result, device, args.out)


if __name__ == "__main__":
    main()
