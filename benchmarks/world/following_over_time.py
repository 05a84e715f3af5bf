"""Where a student's action following goes in long play: the pose probe's yaw and forward
direction accuracy per `--segment` seconds of a scripted session (`long_rollout`'s players,
batched), on the student's frames, on the world's true frames at the same poses, and on those
true frames passed through the world VAE (encoded, then decoded by the decoder the stream
uses): what the student's decoder allows. A student whose following falls below the
VAE-passed truth lost it in the DiT, not in the decoder. Each segment also gives how far the
frames move the way the keys walk (`forward_along`) and the fraction of moving steps whose
frames stand still (`stalled`): a step can be missed by moving the wrong way or by not moving.
`forward_pooled` gives the forward accuracy over all seeds' moving steps in the time ranges that
`--pool` splits the session into (default 0-4 s, while every frame since the start image is
still in the stream's attention, sink and window: its first 21 latent frames, 5 s; 4-16 s; 16 s
on). With `--strip`, each seed's segment that the student follows worst is drawn as a PNG
(`<strip>_s<seed>.png`): rows student, truth, truth through the VAE; a frame every second.
`--start S` begins every stream S seconds into its scripted walk, from the world's view there:
whether the first seconds are followed well because of the keys there or because the stream's
attention still holds true frames.

    python benchmarks/world/following_over_time.py --student lingbot_rt/world/weights/student \
        --seeds 0-3 --seconds 120 --out runs/following_over_time.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lingbot_rt.world.evaluate import FORWARD_MOVING, FPS, direction_accuracy, motions
from lingbot_rt.world.long_rollout import ScriptedSession, parse_seeds, render_minute, stream_blocks, through_vae
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.pose_probe import load_probe
from lingbot_rt.world.renderer import Renderer
from lingbot_rt.distillation.config import student_schedule
from lingbot_rt.world.stream import world_stream_config, world_streaming

SOURCES = ("student", "truth", "truth_through_vae")
STALL = 0.03    # a moving step reads as standing still below this forward motion (a third of what
                # the probe reads on the true frames through the VAE, walking forward: ~0.09)


@torch.no_grad()
def stream_frames(pipeline, players: list[ScriptedSession]) -> dict[int, np.ndarray]:
    """Every player's whole session, batched as `long_rollouts` does: {seed: uint8 [T, H, W, 3]}."""
    frames = {p.seed: [] for p in players}
    with tqdm(total=sum(p.num_frames for p in players), unit="frame", desc="student") as bar:
        for player, block, _ in stream_blocks(pipeline, players):
            frames[player.seed].append(block)
            bar.update(len(block))
    return {seed: np.concatenate(f) for seed, f in frames.items()}


def forward_along(estimated: torch.Tensor, commanded: torch.Tensor) -> dict:
    """How far the frames move the way the keys walk, from motions [N, 4] (the probe's and the
    commanded): over the steps that move (as `direction_accuracy` counts them), the mean forward
    motion read, signed so that the commanded direction is positive, and the fraction of those
    steps read as standing still (|forward| < STALL). None where no step moves."""
    moving = commanded[:, 1].abs() > FORWARD_MOVING
    if not moving.any():
        return {"forward_along": None, "stalled": None}
    read = estimated[moving, 1]
    return {"forward_along": round((read * commanded[moving, 1].sign()).mean().item(), 4),
            "stalled": round((read.abs() < STALL).double().mean().item(), 4)}


def segment_following(probe, frames: np.ndarray, poses: np.ndarray, segment: int) -> list[dict]:
    device = next(probe.parameters()).device
    rows = []
    for start in range(0, len(frames) - segment + 1, segment):
        estimated, commanded = motions(probe, *(torch.from_numpy(x[start:start + segment])[None].to(device)
                                                for x in (frames, poses)))
        a = direction_accuracy(estimated, commanded)
        rows.append({"second": start // FPS, "yaw": a["yaw_direction_accuracy"],
                     "forward": a["forward_direction_accuracy"], "moving_steps": a["moving_steps"],
                     **forward_along(estimated, commanded)})
    return rows


def weakest_strip(rows: list[dict], sources: dict[str, np.ndarray], segment: int, every: int) -> tuple[int, np.ndarray]:
    """The segment of `rows` (the student's `segment_following`) with the lowest forward
    accuracy, and its frames every `every` frames: one row per source, uint8 [rows x H, n x W, 3]."""
    scored = [(r["forward"], i) for i, r in enumerate(rows) if r["forward"] is not None]
    if not scored:
        raise ValueError("no segment moves: there is no weakest segment to draw")
    _, worst = min(scored)
    picks = range(worst * segment, (worst + 1) * segment, every)
    return rows[worst]["second"], np.concatenate(
        [np.concatenate([frames[i] for i in picks], 1) for frames in sources.values()], 0)


def pooled_forward(per_seed: dict, splits: list[int], seconds: int) -> list[dict]:
    """Forward accuracy over all seeds' moving steps in each time range [0, s1), [s1, s2), ...,
    [sn, seconds) (`splits` in seconds, on segment starts), per source: each segment weighted
    by its moving steps, so that a few steps in one seed's segment count as few; with the
    student's moving steps counted."""
    bounds, ranges = [0, *splits, seconds], []
    for low, high in zip(bounds, bounds[1:]):
        row = {"seconds": [low, high]}
        for name in SOURCES:
            rows = [r for s in per_seed.values() for r in s[name]
                    if low <= r["second"] < high and r["forward"] is not None]
            steps = sum(r["moving_steps"] for r in rows)
            row[name] = round(sum(r["forward"] * r["moving_steps"] for r in rows) / steps, 4) if steps else None
            if name == "student":
                row["moving_steps"] = steps
        ranges.append(row)
    return ranges


def mean_of(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(values)), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--probe", default="benchmarks/results/world/pose_probe.safetensors")
    ap.add_argument("--seeds", default="0-3")
    ap.add_argument("--seconds", type=int, default=120, help="session length (a multiple of --segment)")
    ap.add_argument("--segment", type=int, default=10, help="seconds per scored segment")
    ap.add_argument("--action-guidance", type=float, default=None,
                    help="stream with this action guidance instead of the student's (`generate_block`)")
    ap.add_argument("--map-seed", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pool", default="4,16",
                    help="seconds that split the session into ranges for `pooled_forward` (comma-separated)")
    ap.add_argument("--start", type=int, default=0,
                    help="seconds into the scripted walk at which the stream begins, from the world's view there")
    ap.add_argument("--strip", help="path prefix: draw each seed's worst-followed segment (<strip>_s<seed>.png)")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if args.seconds < args.segment or args.seconds % args.segment:
        ap.error(f"--seconds must be a positive multiple of --segment ({args.segment}), got {args.seconds}")
    if args.start < 0:
        ap.error(f"--start must be >= 0 seconds, got {args.start}")
    splits = [int(v) for v in args.pool.split(",")] if args.pool else []
    if any(v % args.segment or not 0 < v < args.seconds for v in splits) or splits != sorted(set(splits)):
        ap.error(f"--pool must be rising multiples of --segment ({args.segment}) inside the session, got {args.pool}")

    probe = load_probe(args.probe, args.device)
    schedule = student_schedule(args.student)
    if args.action_guidance is not None:
        schedule = dataclasses.replace(schedule, action_guidance=args.action_guidance)
    config = world_stream_config(schedule, max_sessions=len(seeds))
    pipeline = world_streaming(args.student, device=args.device, config=config)
    world = generate_map(args.map_seed)
    renderer, intrinsics = Renderer(world), world.config.intrinsics(pipeline.height, pipeline.width)
    num_frames, start = args.seconds * FPS + 1, args.start * FPS

    def view(seed: int) -> np.ndarray:     # the world's view where the seed's stream begins
        pose = play(world, spawn_pose(world, 0), start + 1, seed)[1][start]
        return renderer.render(pose[None], intrinsics, pipeline.height, pipeline.width)[0].numpy()

    players = [ScriptedSession(pipeline, world, view(seed), seed, num_frames, start=start) for seed in seeds]
    try:
        generated = stream_frames(pipeline, players)
    finally:
        for player in players:
            pipeline.close_session(player.session)

    segment, per_seed = args.segment * FPS, {}
    for player in tqdm(players, desc="scoring"):
        poses = player.world_poses[:num_frames]
        truth = render_minute(renderer, intrinsics, poses, pipeline.height, pipeline.width)
        sources = {"student": generated[player.seed], "truth": truth, "truth_through_vae": through_vae(pipeline, truth)}
        per_seed[player.seed] = {name: segment_following(probe, frames[:num_frames - 1], poses[:num_frames - 1], segment)
                                 for name, frames in sources.items()}
        if args.strip:
            second, strip = weakest_strip(per_seed[player.seed]["student"], sources, segment, FPS)
            Image.fromarray(strip).save(f"{args.strip}_s{player.seed}.png")
            print(f"seed {player.seed}: the student's worst segment starts at {second} s ({args.strip}_s{player.seed}.png)")
    summary = {name: {key: mean_of([r for s in per_seed.values() for r in s[name]], key)
                      for key in ("forward", "yaw", "forward_along", "stalled")} for name in SOURCES}
    by_segment = [{"second": i * args.segment,
                   **{name: mean_of([s[name][i] for s in per_seed.values()], "forward") for name in SOURCES}}
                  for i in range(args.seconds // args.segment)]
    result = {"student": args.student, "action_guidance": schedule.action_guidance, "probe": args.probe, "seeds": seeds,
              "start_second": args.start, "seconds": args.seconds,
              "segment_seconds": args.segment, "map_seed": args.map_seed, "device": args.device,
              "mean": summary, "forward_by_segment": by_segment,
              "forward_pooled": pooled_forward(per_seed, splits, args.seconds), "per_seed": per_seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("second  " + "  ".join(SOURCES))
    for row in by_segment:
        print(f"{row['second']:6d}  " + "  ".join(f"{row[name]:.3f}" if row[name] is not None else "  -  "
                                                  for name in SOURCES))
    for row in result["forward_pooled"]:
        print(f"{row['seconds'][0]}-{row['seconds'][1]} s, {row['moving_steps']} moving steps: forward "
              + ", ".join(f"{n} {row[n]}" for n in SOURCES))
    print("mean forward / yaw / forward along the keys / stalled: "
          + ", ".join(f"{n} {' / '.join(str(v) for v in summary[n].values())}" for n in SOURCES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
