"""What goes with the minutes where a student follows forward worse than the world: long-rollout
reports' seed-minutes, each with the student's forward accuracy minus the world's at the same
poses (the gap), beside what the world's own path shows in that minute and what the student's
frames show.

Per seed-minute it reads, from the scripted session's poses (`play` from the map's spawn view,
as `world long-rollout` plays them), the fraction of frames whose view has a wall within `--near`
units straight ahead (`WorldMap.free_distance` along the heading, every `--every`-th frame) and
the median of that distance; from the report, the minute's number and the student's sharpness
and contrast against the world's. Per student (name=dir as in `noise_draws.py`, several dirs one
name) it gives each one's correlation with the gap over the seed-minutes, the mean gap in the
minutes with fewer and more close-wall frames than the median, the mean gap per minute, and the
worst minutes.

    R=benchmarks/results/distill
    python benchmarks/world/following_gap.py --out $R/fifteenth_run/following_gap.json \
        lb=$R/fourteenth_run/h100_rollouts_lb lab=$R/tenth_run/h100_rollouts_lab clt=$R/eighth_run/h100_rollouts \
        clt=$R/twelfth_run/h100_clt_draw1 clt=$R/twelfth_run/h100_clt_draw2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))      # benchmarks/world: noise_draws
from noise_draws import load_draws, parse_groups  # noqa: E402

from lingbot_rt.world.evaluate import FPS  # noqa: E402
from lingbot_rt.world.map import WorldMap, generate_map, spawn_pose  # noqa: E402
from lingbot_rt.world.players import play, yaw_of  # noqa: E402

LOOK = 6.0             # units looked ahead; a median at LOOK means open space ahead in most frames
WORST = 10


def distance_ahead(world: WorldMap, poses: np.ndarray) -> np.ndarray:
    """Free distance [F] straight ahead of each pose (up to LOOK), a ray with no width."""
    return np.array([world.free_distance(p[0, 3], p[2, 3], yaw_of(p), LOOK) for p in poses])


def path_minutes(world: WorldMap, seed: int, minutes: int, near: float, every: int) -> list[dict]:
    """Per minute of `seed`'s scripted session: the fraction of its frames (every `every`-th)
    with a wall within `near` ahead, and the median distance ahead."""
    per_minute = 60 * FPS
    _, poses = play(world, spawn_pose(world, 0), minutes * per_minute + 1, seed)
    ahead = distance_ahead(world, poses[:minutes * per_minute:every]).reshape(minutes, -1)
    return [{"near_wall": round(float((a < near).mean()), 4), "median_ahead": round(float(np.median(a)), 3)}
            for a in ahead]


def correlation(x: list[float], y: list[float]) -> float | None:
    return None if np.std(x) == 0 or np.std(y) == 0 else round(float(np.corrcoef(x, y)[0, 1]), 3)


def seed_minutes(reports: list[dict], paths: dict[int, list[dict]]) -> list[dict]:
    """One row per seed-minute: the gap and what may go with it."""
    rows = []
    for report in reports:
        for minute in report["per_minute"]:
            truth = minute["ground_truth"]
            rows.append({"seed": report["seed"], "minute": minute["minute"],
                         "gap": minute["forward_direction_accuracy"] - truth["forward_direction_accuracy"],
                         "sharpness_ratio": minute["sharpness"] / truth["sharpness"],
                         "contrast_ratio": minute["contrast"] / truth["contrast"],
                         **paths[report["seed"]][minute["minute"] - 1]})
    return rows


def summarise(rows: list[dict]) -> dict:
    gap = [r["gap"] for r in rows]
    near = [r["near_wall"] for r in rows]
    median = float(np.median(near))
    above = [g for g, n in zip(gap, near) if n > median]      # empty when most minutes share the median
    minutes = sorted({r["minute"] for r in rows})
    return {
        "seed_minutes": len(rows),
        "mean_gap": round(float(np.mean(gap)), 4),
        "correlation_with_gap": {key: correlation([r[key] for r in rows], gap)
                                 for key in ("near_wall", "median_ahead", "minute", "sharpness_ratio", "contrast_ratio")},
        "mean_gap_by_near_wall": {
            "at_or_below_median": round(float(np.mean([g for g, n in zip(gap, near) if n <= median])), 4),
            "above_median": round(float(np.mean(above)), 4) if above else None,
            "median_near_wall": round(median, 4)},
        "mean_gap_per_minute": [round(float(np.mean([r["gap"] for r in rows if r["minute"] == m])), 4) for m in minutes],
        "worst": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                  for r in sorted(rows, key=lambda r: r["gap"])[:WORST]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("groups", nargs="+", help="name=dir of s<seed>.json reports, a dir per noise draw")
    ap.add_argument("--map-seed", type=int, default=7, help="the map the reports played")
    ap.add_argument("--near", type=float, default=0.8, help="a wall this close ahead (units) fills most of the view")
    ap.add_argument("--every", type=int, default=4, help="read every N-th frame's view")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    groups = parse_groups(args.groups, "following_gap.py")
    world = generate_map(args.map_seed)
    loaded = {name: [r for draw in load_draws(dirs)[1] for r in draw] for name, dirs in groups.items()}
    for reports in loaded.values():
        if any(r["map_seed"] != args.map_seed for r in reports):
            raise SystemExit(f"following_gap.py: a report played another map than --map-seed {args.map_seed}")
    longest: dict[int, int] = {}
    for r in (r for reports in loaded.values() for r in reports):
        longest[r["seed"]] = max(longest.get(r["seed"], 0), r["minutes"])
    paths = {seed: path_minutes(world, seed, minutes, args.near, args.every) for seed, minutes in longest.items()}
    result = {"command": " ".join(sys.argv), "near": args.near, "every": args.every,
              "students": {name: summarise(seed_minutes(reports, paths)) for name, reports in loaded.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["students"].items():
        print(f"{name}: {s['seed_minutes']} seed-minutes, mean gap {s['mean_gap']}; correlation with the gap "
              + ", ".join(f"{k} {v}" for k, v in s["correlation_with_gap"].items())
              + f"; mean gap with few / many close-wall frames {s['mean_gap_by_near_wall']['at_or_below_median']}"
              f" / {s['mean_gap_by_near_wall']['above_median']}; per minute "
              + " ".join(f"{g:.3f}" for g in s["mean_gap_per_minute"]))


if __name__ == "__main__":
    main()
