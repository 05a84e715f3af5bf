"""Which commands a student fails to follow: the pose probe's forward direction accuracy per
minute of one scripted session (`long_rollout`'s player), split by what the command does over
the probe's 4 frames (walking forward or back, turning, strafing), on the student's frames and
on the world's true frames at the same poses and on those passed through the world VAE (what
the student's decoder allows), with the mean forward motion the probe reads in each group
against the mean commanded (how far the frames move, not only which way), and each source's
frame statistics.

    python benchmarks/world/following_by_command.py --student lingbot_rt/world/weights/student \
        --seed 38 --minutes 4 --out runs/following_by_command_s38.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lingbot_rt.distillation.config import student_schedule
from lingbot_rt.world.evaluate import FORWARD_MOVING, FPS, YAW_MOVING, direction_accuracy
from lingbot_rt.world.long_rollout import ScriptedSession, frame_statistics, render_minute, stream_blocks, through_vae
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.pose_probe import GAP, load_probe, relative_motion
from lingbot_rt.world.renderer import Renderer
from lingbot_rt.world.stream import world_stream_config, world_streaming

STRAFING = 0.05          # units of sideways motion in 4 frames (a strafe moves 0.2)


def command_kinds(commanded: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks over the steps that move (|forward| > FORWARD_MOVING) by what else they do."""
    moving = commanded[:, 1].abs() > FORWARD_MOVING
    turning = commanded[:, 2].abs() > YAW_MOVING
    return {"all": moving, "forward": moving & (commanded[:, 1] > 0), "back": moving & (commanded[:, 1] < 0),
            "turning": moving & turning, "straight": moving & ~turning,
            "strafing": moving & (commanded[:, 0].abs() > STRAFING)}


def accuracy_by_kind(estimated: torch.Tensor, commanded: torch.Tensor, minute: torch.Tensor, minutes: int) -> list[dict]:
    rows = []
    for m in range(minutes):
        row = {"minute": m + 1}
        for kind, mask in command_kinds(commanded).items():
            steps = mask & (minute == m)
            mean_forward = lambda motion: round(float(motion[steps, 1].mean()), 4) if steps.any() else None
            row[kind] = {"accuracy": direction_accuracy(estimated[steps], commanded[steps])["forward_direction_accuracy"],
                         "steps": int(steps.sum()), "mean_forward": mean_forward(estimated),
                         "commanded_forward": mean_forward(commanded)}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--probe", default="benchmarks/results/world/pose_probe.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=int, default=4)
    ap.add_argument("--map-seed", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.minutes < 1:
        ap.error(f"--minutes must be >= 1, got {args.minutes}")

    probe = load_probe(args.probe, args.device)
    pipeline = world_streaming(args.student, device=args.device,
                               config=world_stream_config(student_schedule(args.student), max_sessions=1))
    world = generate_map(args.map_seed)
    renderer, intrinsics = Renderer(world), world.config.intrinsics(pipeline.height, pipeline.width)
    image = renderer.render(spawn_pose(world, 0)[None], intrinsics, pipeline.height, pipeline.width)[0].numpy()
    num_frames = args.minutes * 60 * FPS + 1
    player = ScriptedSession(pipeline, world, image, args.seed, num_frames)
    try:
        blocks = [(frames, poses) for _, frames, poses in stream_blocks(pipeline, [player])]
    finally:
        pipeline.close_session(player.session)
    frames = np.concatenate([f for f, _ in blocks])[:num_frames]
    poses = torch.from_numpy(np.concatenate([p for _, p in blocks])[:num_frames]).double()
    world_poses = player.world_poses[:num_frames]
    truth = render_minute(renderer, intrinsics, world_poses, pipeline.height, pipeline.width)
    world_poses = torch.from_numpy(world_poses).double()
    minute = torch.arange(num_frames - GAP) // (60 * FPS)
    result = {"student": args.student, "seed": args.seed, "minutes": args.minutes, "map_seed": args.map_seed,
              "device": args.device, "probe": args.probe}
    sources = (("student", frames, poses), ("truth", truth, world_poses),
               ("truth_through_vae", through_vae(pipeline, truth), world_poses))
    result["frame_statistics"] = {name: frame_statistics(video) for name, video, _ in sources}
    for name, video, path in sources:
        estimated = probe.motion(torch.from_numpy(video).to(args.device)).double().cpu()
        result[name] = accuracy_by_kind(estimated, relative_motion(path[:-GAP], path[GAP:]), minute, args.minutes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    kinds = list(result["student"][0])[1:]
    print("minute  " + "  ".join(f"{k:>21}" for k in kinds) + "   (student / truth / truth through the VAE, steps)")
    for s, t, v in zip(result["student"], result["truth"], result["truth_through_vae"]):
        cells = [f"{s[k]['accuracy'] or 0:.2f}/{t[k]['accuracy'] or 0:.2f}/{v[k]['accuracy'] or 0:.2f} ({s[k]['steps']:3d})"
                 for k in kinds]
        print(f"{s['minute']:6d}  " + "  ".join(f"{c:>21}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
