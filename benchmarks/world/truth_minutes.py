"""How much the world itself moves a long rollout's per-minute statistics: the ground truth
rendered along the scripted sessions of many seeds (`long_rollout.ground_truth_minutes`), each
minute's statistics against the seed's minute one, and their envelope over the seeds. A bound
the truth leaves says nothing about a student's collapse. Resumes (one JSON line per seed in
<out>.jsonl until the result is written); `--workers` renders seeds in parallel processes.

    python benchmarks/world/truth_minutes.py --probe benchmarks/results/world/pose_probe.safetensors \
        --seeds 0-49 --workers 2 --out runs/truth_minutes_map7.json
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lingbot_rt.world.long_rollout import BOUNDS, ground_truth_minutes, parse_seeds, within_bounds
from lingbot_rt.world.pose_probe import load_probe


def against_minute_one(per_minute: list[dict]) -> dict:
    """Each bounded statistic per minute as the bounds read it: a ratio to minute one for frame
    statistics, a difference from minute one for action following."""
    first = per_minute[0]
    return {name: [m[name] / first[name] if isinstance(bound, tuple) else m[name] - first[name]
                   for m in per_minute] for name, bound in BOUNDS.items()}


def seed_minutes(seed: int, *, probe_path: str, minutes: int, map_seed: int) -> dict:
    """One seed's truth per minute (in a worker process: one thread each)."""
    torch.set_num_threads(1)
    per_minute = ground_truth_minutes(load_probe(probe_path), minutes=minutes, map_seed=map_seed, seed=seed)
    return {"seed": seed, "per_minute": per_minute}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", required=True)
    ap.add_argument("--seeds", default="0-49", help="player seeds: 0-49, 3 or 0,4,7-9")
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--map-seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1, help="seeds rendered side by side")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    load_probe(args.probe)                      # a missing or malformed probe fails here, not in a worker
    partial = Path(args.out).with_suffix(".jsonl")
    done = {r["seed"]: r for r in map(json.loads, partial.read_text().splitlines())} if partial.exists() else {}
    todo = [seed for seed in parse_seeds(args.seeds) if seed not in done]
    work = functools.partial(seed_minutes, probe_path=args.probe, minutes=args.minutes, map_seed=args.map_seed)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for result in tqdm(pool.imap_unordered(work, todo), total=len(todo), desc="seeds", unit="seed"):
            done[result["seed"]] = result
            with partial.open("a") as f:
                f.write(json.dumps(result) + "\n")
    seeds = [done[s] for s in parse_seeds(args.seeds)]
    relative = {s["seed"]: against_minute_one(s["per_minute"]) for s in seeds}
    envelope = {name: [round(float(np.min([v[name] for v in relative.values()])), 4),
                       round(float(np.max([v[name] for v in relative.values()])), 4)] for name in BOUNDS}
    outside = {s["seed"]: [f"{name}@{m + 1}" for m, minute in enumerate(s["per_minute"])
                           for name, ok in within_bounds(minute, s["per_minute"][0]).items() if ok is False]
               for s in seeds}
    following = {name: {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4)}
                 for name in ("yaw_direction_accuracy", "forward_direction_accuracy")
                 for values in [[m[name] for s in seeds for m in s["per_minute"]]]}
    result = {"command": " ".join(sys.argv), "probe": args.probe, "map_seed": args.map_seed, "minutes": args.minutes,
              "bounds": BOUNDS, "probe_on_the_truth": following, "envelope_against_minute_one": envelope,
              "seeds_within_every_bound": sum(not v for v in outside.values()), "seeds": len(seeds),
              "outside_bounds": {s: v for s, v in outside.items() if v}, "per_seed": seeds}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    print(json.dumps({k: result[k] for k in ("probe_on_the_truth", "envelope_against_minute_one", "seeds_within_every_bound", "seeds")}))


if __name__ == "__main__":
    main()
